import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { verifyLedger } from "../ledger/index.ts";
import { publishCommands } from "../src/wire/publisher.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { commandMaker, eventually, harness, outcomeCounts, spawnTally, tallyEnv, type Harness } from "./support/tally.ts";

let ctx: TestContext;
let h: Harness;
const OPTS = { partitions: 6, leaseTtlMs: 5000 };
type Child = ReturnType<typeof spawnTally>;

beforeAll(async () => {
  ctx = await testContext();
  h = await harness(ctx, OPTS);
});
afterAll(async () => {
  await h?.close();
});

/** Who holds each partition's lease now (owner → partitions). */
async function owners(): Promise<Map<string, Array<number>>> {
  const out = new Map<string, Array<number>>();
  for (let p = 0; p < OPTS.partitions; p++) {
    const e = await h.nats.leases.get(h.topology.partitionLeaseKey(p));
    if (e?.operation !== "PUT" || e.length === 0) continue;
    const { owner } = e.json<{ owner: string }>();
    out.set(owner, [...(out.get(owner) ?? []), p]);
  }
  return out;
}

let lastSeen = "";

/** Every partition held, by exactly `workers` owners, each holding its fair share (ceil(P/W) at most). */
async function evenlySpread(workers: number): Promise<boolean> {
  const o = await owners();
  const held = [...o.values()].reduce((n, ps) => n + ps.length, 0);
  lastSeen = JSON.stringify([...o]);
  return held === OPTS.partitions && o.size === workers && [...o.values()].every((ps) => ps.length <= Math.ceil(OPTS.partitions / workers));
}

describe("three worker processes", () => {
  it("spread the partitions evenly, a new one takes its share, a stopped one hands its share over, and the ledger stays exact", async () => {
    const env = { ...tallyEnv(ctx, OPTS), TALLY_LOG_LEVEL: "error" };
    const workers: Array<Child> = [];
    const make = commandMaker("spread");
    const ids: Array<string> = [];
    let publishing = true;
    // Order-dependent rounds per SKU (a receipt, a hold on it, its shipment) throughout every handover.
    const load = (async () => {
      for (let r = 1; publishing; r++) {
        const commands = Array.from({ length: 12 }, (_, i) => `SP-${i}`).flatMap((sku) => [
          make("receive", sku, { qty: 3 }),
          make("reserve", sku, { qty: 3, reservationId: `${sku}-h${r}` }),
          make("fulfill", sku, { qty: 3, reservationId: `${sku}-h${r}` }),
        ]);
        ids.push(...commands.map((c) => c.id));
        await publishCommands(h.nats.js, h.topology, commands, { envelopeSize: 5 });
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    })();
    try {
      workers.push(spawnTally(["start", "--roles", "worker"], env), spawnTally(["start", "--roles", "worker"], env));
      await eventually("two workers with 3 partitions each", () => evenlySpread(2), 120_000).catch((e: Error) => {
        throw new Error(`${e.message}; leases: ${lastSeen}; outputs: ${workers.map((w) => w.output().slice(-2000)).join(" | ")}`);
      });
      // A third joins: the others hand over what is beyond their fair share, and it takes 2.
      workers.push(spawnTally(["start", "--roles", "worker"], env));
      await eventually("three workers with 2 partitions each", () => evenlySpread(3), 60_000);
      // One stops (SIGTERM: it finishes its batch in flight, then releases): the other two take its share.
      const stopped = workers.shift()!;
      stopped.kill("SIGTERM");
      await new Promise((resolve) => stopped.once("exit", resolve));
      await eventually("two workers with 3 partitions each again", () => evenlySpread(2), 60_000);
      publishing = false;
      await load;
      await eventually("every command applied", async () => (await outcomeCounts(h.sql, ids)).n === ids.length, 60_000);
      expect((await outcomeCounts(h.sql, ids)).distinct).toBe(ids.length);
      const rejected = await h.sql`select command_id from command_outcomes where status = 'rejected' and command_id like 'spread:%'`;
      expect(rejected).toHaveLength(0);
      const balances = await h.sql`select sku, bucket, qty from balances where sku like 'SP-%' and qty <> 0`;
      expect(balances).toHaveLength(0);
      expect((await verifyLedger(h.sql)).problem).toBeNull();
    } finally {
      publishing = false;
      await load.catch(() => {});
      for (const w of workers) {
        if (w.exitCode === null) {
          w.kill("SIGTERM");
          await new Promise((resolve) => w.once("exit", resolve));
        }
      }
    }
  }, 240_000);
});
