import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Command } from "../src/contract/command.ts";
import { activeLayout, verifyLedger } from "../ledger/index.ts";
import { resizePartitions } from "../src/operations/index.ts";
import { publishCommands } from "../src/wire/publisher.ts";
import { LeaseStore, topology } from "../src/wire/index.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { commandMaker, eventually, harness, outcomeCounts, runTally, spawnTally, tallyEnv, type Harness } from "./support/tally.ts";

let ctx: TestContext;
let h: Harness;
const OPTS = { partitions: 4, leaseTtlMs: 1500 };
const SKUS = Array.from({ length: 12 }, (_, i) => `RC-${i}`);

beforeAll(async () => {
  ctx = await testContext();
  h = await harness(ctx, OPTS);
});
afterAll(async () => {
  await h?.close();
});

type Child = ReturnType<typeof spawnTally>;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function killed(child: Child): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once("exit", r));
  child.kill("SIGKILL");
  await exited;
}

/** Receive 5, hold 5, ship the hold: applied in order, each SKU ends at zero and nothing is rejected (as in partitionResize.test.ts). */
function round(make: ReturnType<typeof commandMaker>, skus: ReadonlyArray<string>, r: number): Array<Command> {
  return skus.flatMap((sku) => [
    make("receive", sku, { qty: 5 }),
    make("reserve", sku, { qty: 5, reservationId: `${sku}-h${r}` }),
    make("fulfill", sku, { qty: 5, reservationId: `${sku}-h${r}` }),
  ]);
}

describe("partitions resize with crashes", () => {
  it("workers killed -9 at the cut, while draining and while switching layouts, and the resize command killed -9 and never run again (the workers finish it): the ledger stays exact", async () => {
    const env = { ...tallyEnv(ctx, OPTS), TALLY_LOG_LEVEL: "error" };
    const workers: Array<Child> = [spawnTally(["start", "--roles", "worker"], env), spawnTally(["start", "--roles", "worker"], env)];
    const restart = async (i: number, afterMs: number) => {
      await killed(workers[i]!);
      await sleep(afterMs);
      workers[i] = spawnTally(["start", "--roles", "worker"], env);
    };
    const leases = new LeaseStore(h.nats.leases, "test");
    try {
      await eventually("the 4 partitions held", async () => (await leases.countLive("partition")) === 4, 30_000);
      // Two publishers on disjoint SKUs, each with its own view of the layout; the stream's refusals tell them of each cut.
      const publishers = [SKUS.slice(0, 6), SKUS.slice(6)].map((skus, i) => ({
        skus,
        t: topology(h.settings.env, OPTS.partitions),
        make: commandMaker(`crash-load-${i}`),
      }));
      const ids: Array<string> = [];
      let rounds = 0;
      let stopAt = Infinity;
      const load = Promise.all(
        publishers.map(async (p) => {
          for (let r = 1; rounds < stopAt; r++) {
            const commands = round(p.make, p.skus, r);
            ids.push(...commands.map((c) => c.id));
            await publishCommands(h.nats.js, p.t, commands, { envelopeSize: 7 });
            rounds++;
            await sleep(100);
          }
        }),
      );
      await eventually("a few rounds published", async () => rounds >= 4);

      // Grow 4 → 6. Worker 0 dies right after the new layout is recorded (before the cut), worker 1
      // right after the cut (the old partitions still draining, their subjects gone from the stream);
      // both come back while the old layout drains. Just after the switch worker 0 dies again, while
      // the workers hand the old layout's partitions over.
      const restarts: Array<Promise<void>> = [];
      const resizer = { sql: h.sql, jsm: h.nats.jsm, topology: topology(h.settings.env, OPTS.partitions) };
      const grown = await resizePartitions(resizer, 6, {
        timeoutMs: 90_000,
        onStep: (step) => {
          if (step.startsWith("recorded generation")) restarts.push(restart(0, 300));
          if (step.startsWith("the commands stream now takes")) restarts.push(restart(1, 300));
        },
      });
      expect(grown).toMatchObject({ generation: 1, partitions: 6, previousPartitions: 4 });
      await Promise.all(restarts);
      await restart(0, 300);
      await eventually("the 6 partitions of the new layout held", async () => (await leases.countLive("partition")) === 6, 30_000);
      // `tally dlq skip` takes the partitions workers apply now: 5 exists only in the grown layout (TALLY_PARTITIONS is 4).
      // (Sequence 1 is below every checkpoint: the request is recorded, no message is skipped.)
      const skip = await runTally(["dlq", "skip", "5", "--seq", "1"], env);
      expect(skip.code, skip.output).toBe(0);
      expect(skip.output).toContain("partition 5: message 1 will be dead-lettered");
      const afterGrow = rounds;
      await eventually("more rounds published", async () => rounds >= afterGrow + 4);

      // Shrink 6 → 3 with the CLI, killed -9 as soon as it has recorded the new layout (the cut made or
      // not), with no worker running (so the old layout cannot have drained). Nobody runs it again: the
      // workers, back, make the cut if it was not made and switch once the old layout has drained.
      await Promise.all(workers.map(killed));
      const cli = spawnTally(["partitions", "resize", "3", "--timeout", "90"], env);
      cli.stdout!.on("data", (d: Buffer) => d.toString().includes("recorded generation 2") && cli.kill("SIGKILL"));
      await new Promise((r) => cli.once("exit", r));
      expect(cli.output()).toContain("recorded generation 2");
      expect(cli.output()).not.toContain("is active");
      const status = await runTally(["partitions", "status"], env);
      expect(status.output).toContain("resize under way: generation 2, 6 → 3 partitions");
      // Run again while no worker drains the old layout: it resumes (the cut made if it was not), then
      // gives up after its timeout, saying that nothing is lost and the workers will finish it.
      const resumed = await runTally(["partitions", "resize", "3", "--timeout", "2"], env);
      expect(resumed.code, resumed.output).not.toBe(0);
      expect(resumed.output).toMatch(/resuming generation 2[\s\S]*did not drain within 2000 ms[\s\S]*the workers finish the resize/);
      await Promise.all([restart(0, 0), restart(1, 0)]);
      await eventually("the workers to finish the resize", async () => (await activeLayout(h.sql))?.generation === 2, 90_000);
      expect(await activeLayout(h.sql)).toMatchObject({ generation: 2, partitions: 3, previousPartitions: 6, state: "active" });
      // Run again afterwards, the command finds it done: nothing to do, and no error (a retry loop can just run it again).
      const [thrice, outside] = await Promise.all([runTally(["partitions", "resize", "3"], env), runTally(["dlq", "skip", "3", "--seq", "1"], env)]);
      expect(outside.code, outside.output).toBe(2);
      expect(outside.output).toContain("dlq skip: expected a partition from 0 to 2 (the layout workers apply)");
      expect(thrice.code, thrice.output).toBe(0);
      expect(thrice.output).toContain("already has 3 partitions (generation 2); nothing to do");

      stopAt = rounds + 4;
      await load;
      expect(publishers.every((p) => p.t.layout.generation === 2)).toBe(true);
      await eventually("every command applied", async () => (await outcomeCounts(h.sql, ids)).n === ids.length, 90_000);
      expect((await outcomeCounts(h.sql, ids)).distinct).toBe(ids.length);
      const rejected = await h.sql<Array<{ command_id: string; reason: string }>>`
        select command_id, reason from command_outcomes where status = 'rejected' and command_id like 'crash-load-%'`;
      expect(rejected, "a command applied out of order per SKU is rejected").toEqual([]);
      const balances = await h.sql<Array<{ sku: string; bucket: string; qty: number }>>`
        select sku, bucket, qty::int as qty from balances where sku like 'RC-%' and qty <> 0`;
      expect(balances).toEqual([]);
      const legs = await h.sql<Array<{ n: number }>>`
        select count(*)::int as n from ledger_entries where command_id like 'crash-load-%' and bucket = 'on_hand'`;
      expect(legs[0]!.n).toBe((ids.length / 3) * 2); // a receipt and a shipment per round, once each
      const duplicates = await h.sql<Array<{ n: number }>>`
        select count(*)::int as n from (
          select command_id, leg from ledger_entries where command_id like 'crash-load-%' group by command_id, leg having count(*) > 1) d`;
      expect(duplicates[0]!.n).toBe(0);
      expect((await verifyLedger(h.sql)).problem).toBeNull();
      await eventually("the 3 partitions of the last layout held", async () => (await leases.countLive("partition")) === 3, 30_000);
    } finally {
      await Promise.all(workers.map(killed));
    }
  }, 240_000);
});
