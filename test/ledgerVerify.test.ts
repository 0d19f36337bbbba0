import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { verifyLedger } from "../ledger/index.ts";
import { publishCommands } from "../src/wire/publisher.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { decodedCommands, eventually, harness, runTally, startInProcess, tallyEnv, type Harness } from "./support/tally.ts";

let ctx: TestContext;
let h: Harness;
let tally: Awaited<ReturnType<typeof startInProcess>>;

beforeAll(async () => {
  ctx = await testContext();
  h = await harness(ctx);
  tally = await startInProcess(ctx, ["worker"]);
});
afterAll(async () => {
  await tally?.close();
  await h?.close();
});

/**
 * Publishes receipts and sales over many SKUs, an envelope of 200 every ~20 ms, until `stop` is
 * called: the workers of four partitions commit batches all the while. Resolves with the number published.
 */
function writeLoad(prefix: string): { stop: () => Promise<number> } {
  let running = true;
  let n = 0;
  const loop = (async () => {
    while (running) {
      const raw = Array.from({ length: 200 }, (_, i) => ({
        id: `${prefix}:${n + i}`,
        type: (n + i) % 5 === 4 ? "sell" : "receive",
        sku: `V-${(n + i) % 97}`,
        location: (n + i) % 2 ? "S01" : "DC1",
        qty: 1 + ((n + i) % 7),
        source: { system: "erp", ref: `r${n + i}` },
        occurredAt: "2026-11-26T10:00:00Z",
      }));
      await publishCommands(h.nats.js, h.topology, decodedCommands(raw));
      n += raw.length;
      // Paced a little, so the ledger verify reads does not grow without bound on a loaded machine.
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
      return n;
    },
  };
}

const entryCount = async () => (await h.sql<[{ n: number }]>`select count(*)::int as n from ledger_entries`)[0].n;

describe("tally ledger verify under continuous writes", () => {
  it("passes 10 times in a row while the workers commit, and the CLI exits 0", async () => {
    const load = writeLoad("load");
    try {
      await eventually("the first entries", async () => (await entryCount()) > 500);
      const grewDuring: Array<boolean> = [];
      for (let run = 0; run < 10; run++) {
        const before = await entryCount();
        const report = await verifyLedger(h.sql);
        expect(report.problem, `run ${run + 1}`).toBeNull();
        expect(report.ok).toBe(true);
        grewDuring.push((await entryCount()) > before);
      }
      // The runs really overlapped with commits (else this test proves nothing).
      expect(grewDuring.filter(Boolean).length).toBeGreaterThan(5);
      const cli = await runTally(["ledger", "verify"], tallyEnv(ctx));
      expect(cli.output).toMatch(/ledger verify: ok/);
      expect(cli.code).toBe(0);
    } finally {
      await load.stop();
    }
  }, 600_000); // ten full verifies plus a CLI run, on a machine other suites load too

  it("still catches a tampered entry under load: FAILED and exit 3", async () => {
    const load = writeLoad("tamper");
    try {
      await eventually("more entries", async () => (await entryCount()) > 2000);
      await h.sql.begin(async (tx) => {
        await tx`alter table ledger_entries disable trigger ledger_entries_append_only`;
        await tx`update ledger_entries set delta = delta + 1 where entry_id = (select min(entry_id) from ledger_entries where bucket = 'on_hand')`;
        await tx`alter table ledger_entries enable trigger ledger_entries_append_only`;
      });
      const report = await verifyLedger(h.sql);
      expect(report.ok).toBe(false);
      expect(report.problem?.message).toMatch(/sum|hash/);
      const cli = await runTally(["ledger", "verify"], tallyEnv(ctx));
      expect(cli.output).toMatch(/ledger verify: FAILED/);
      expect(cli.code).toBe(3);
    } finally {
      await load.stop();
    }
  }, 300_000);

  it("exits 1 when it cannot look (no database, a bad setting) and 2 for a bad argument", async () => {
    const unreachable = await runTally(["ledger", "verify"], { ...tallyEnv(ctx), TALLY_DATABASE_URL: "postgres://nobody@127.0.0.1:1/none" });
    expect(unreachable.output).toMatch(/could not check the ledger/);
    expect(unreachable.code).toBe(1);
    const settings = await runTally(["ledger", "verify"], { ...tallyEnv(ctx), TALLY_DATABASE_URL: "" });
    expect(settings.output.trim()).toMatch(/^tally: TALLY_DATABASE_URL: is not set/);
    expect(settings.code).toBe(1);
    const usage = await runTally(["ledger", "verify", "--everything"], tallyEnv(ctx));
    expect(usage.output).toContain("unknown option '--everything'");
    expect(usage.code).toBe(2);
  });
});
