// The write-back writer stops when asked, whatever state its ERP is in: killed (-9) and not back, or
// frozen (SIGSTOP: connections open, nothing answers). Before, a query on the writer's reserved ERP
// connection after the server was killed was never answered (postgres.js), so the writer neither
// wrote back again nor stopped, and closing the process waited out the 15 s bound with a warning.
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEMO_STOCK } from "../cdc/demo/seed.ts";
import { WriteBack, findSource, type ResolvedSource } from "../cdc/index.ts";
import { openSink } from "../cdc/writeBackSinks.ts";
import type { Command } from "../src/contract/index.ts";
import { createLogger } from "../src/platform/index.ts";
import { publishCommands } from "../src/wire/index.ts";
import { demoSources, type DemoSources } from "./support/cdc.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { startPostgres, type PostgresServer } from "./support/postgres.ts";
import { decodedCommands, eventually, harness, startInProcess, tallyEnv, type Harness } from "./support/tally.ts";

let ctx: TestContext;
let h: Harness;
let erpPg: PostgresServer;
let demo: DemoSources;
let source: ResolvedSource;
const log = createLogger("test-writeback-stop", process.env.TALLY_LOG_LEVEL ?? "warn");

beforeAll(async () => {
  ctx = await testContext();
  h = await harness(ctx);
  erpPg = await startPostgres();
  demo = await demoSources(ctx, { adminUrl: erpPg.url() });
  const erp = findSource(demo.config, "erp", ctx.env, { ...process.env, ...tallyEnv(ctx), ...demo.env });
  source = { ...erp, writeBack: { ...erp.writeBack!, intervalMs: 100, backoffMs: 100, maxBackoffMs: 400, maxAttempts: 1000 } };
}, 120_000);
afterAll(async () => {
  await demo?.close();
  await h?.close();
  await erpPg?.destroy();
});

let n = 0;
const sale = (sku: string, location: string): Command =>
  decodedCommands([
    {
      id: `wb-stop-${++n}`,
      type: "adjust",
      sku,
      location,
      qty: -1,
      reason: "pos sale",
      source: { system: "pos", ref: `till-${n}` },
      occurredAt: new Date().toISOString(),
    },
  ])[0]!;
const inErp = async (c: Command) =>
  (await demo.erp<[{ n: number }]>`select count(*)::int as n from inbound_movements where command_id = ${c.id}`)[0].n === 1;
const applied = async (c: Command) => (await h.sql`select 1 from ledger_entries where command_id = ${c.id}`).length > 0;

/** The warnings the process emits while `fn` runs. */
async function warningsDuring(fn: () => Promise<void>): Promise<Array<string>> {
  const seen: Array<string> = [];
  const onWarning = (w: Error) => seen.push(w.message);
  process.on("warning", onWarning);
  try {
    await fn();
  } finally {
    process.off("warning", onWarning);
  }
  return seen;
}

/** SIGSTOPs the server's postmaster and backends (connections stay open, nothing answers); returns the SIGCONT. */
function freeze(pg: PostgresServer): () => void {
  const postmaster = Number(readFileSync(path.join(pg.dataDir, "postmaster.pid"), "utf8").split("\n")[0]);
  const children = readdirSync("/proc")
    .filter((d) => /^\d+$/.test(d))
    .filter((d) => {
      try {
        const stat = readFileSync(`/proc/${d}/stat`, "utf8");
        return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]) === postmaster;
      } catch {
        return false; // exited meanwhile
      }
    })
    .map(Number);
  const pids = [postmaster, ...children];
  for (const pid of pids) process.kill(pid, "SIGSTOP");
  return () => {
    for (const pid of pids) process.kill(pid, "SIGCONT");
  };
}

describe("stopping the write-back", () => {
  it("after the ERP Postgres was killed (-9): the writer keeps trying, and the process closes without waiting out the stop bound", async () => {
    const sku = DEMO_STOCK.find((s) => s.uom === "EA")!;
    const tally = await startInProcess(ctx, ["worker", "relay", "cdc"], {}, demo.config);
    let closed = false;
    try {
      const first = sale(sku.sku, sku.location);
      await publishCommands(h.nats.js, h.topology, [first]);
      await eventually("the first sale written back (the writer's ERP session is open)", () => inErp(first), 90_000);
      await eventually("both snapshots done", async () => {
        const [{ done }] = await h.sql<[{ done: number }]>`select count(*)::int as done from cdc_sources where snapshot_done_at is not null`;
        return done === 2;
      });
      const [writer] = tally.writeBacks;
      await erpPg.kill();
      const failedBefore = writer!.metrics.failedAttempts;
      const second = sale(sku.sku, sku.location);
      await publishCommands(h.nats.js, h.topology, [second]);
      await eventually("the second sale applied", () => applied(second));
      // Sending it fails (the server is gone) rather than waiting for ever on the dead connection.
      await eventually("a failed attempt to send the second sale", async () => writer!.metrics.failedAttempts > failedBefore);
      const warnings = await warningsDuring(() => tally.close());
      closed = true;
      expect(warnings.filter((w) => w.includes("did not stop"))).toEqual([]);
    } finally {
      if (!closed) await tally.close();
      await erpPg.start();
    }
  }, 180_000);

  it("while the ERP Postgres is frozen (SIGSTOP) mid-send: stop() resolves", async () => {
    const sku = DEMO_STOCK.find((s) => s.uom === "EA")!;
    const tally = await startInProcess(ctx, ["worker"], {}, demo.config);
    // The real sink into the ERP, counting the batches handed to it.
    let sends = 0;
    const counted = () => {
      const real = openSink(source, log);
      return {
        send: (batch: Parameters<typeof real.send>[0]) => {
          sends++;
          return real.send(batch);
        },
        close: () => real.close(),
      };
    };
    const writer = new WriteBack({
      source,
      sql: h.sql,
      currency: "EUR",
      js: h.nats.js,
      jsm: h.nats.jsm,
      topology: h.topology,
      log,
      openSink: counted,
    });
    writer.start();
    let thaw: (() => void) | null = null;
    try {
      const first = sale(sku.sku, sku.location);
      await publishCommands(h.nats.js, h.topology, [first]);
      await eventually("the first sale written back", () => inErp(first), 90_000);
      thaw = freeze(erpPg);
      const sendsBefore = sends;
      const second = sale(sku.sku, sku.location);
      await publishCommands(h.nats.js, h.topology, [second]);
      await eventually("the second sale applied", () => applied(second));
      // The writer sends it into the frozen server, where the send waits for an answer that does not come.
      await eventually("the writer sending the second sale", async () => sends > sendsBefore);
      // Awaited without a bound: before, this never resolved (the test's timeout failed it).
      await writer.stop();
      expect(writer.stopping).toBe(true);
    } finally {
      thaw?.();
      await writer.stop();
      await tally.close();
    }
  }, 180_000);
});
