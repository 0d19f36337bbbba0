import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Command } from "../src/contract/command.ts";
import { verifyLedger } from "../ledger/index.ts";
import { resizePartitions } from "../src/operations/index.ts";
import { publishCommands } from "../src/wire/publisher.ts";
import { ensureStream, ensureTopology, topology } from "../src/wire/index.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { commandMaker, eventually, harness, outcomeCounts, startInProcess, type Harness } from "./support/tally.ts";

let ctx: TestContext;
let h: Harness;
const OPTS = { partitions: 4, leaseTtlMs: 1500 };
const SKUS = Array.from({ length: 40 }, (_, i) => `RS-${i}`);

beforeAll(async () => {
  ctx = await testContext();
  h = await harness(ctx, OPTS);
});
afterAll(async () => {
  await h?.close();
});

/**
 * One round per SKU whose outcome depends on order: receive 5, hold 5 (refused unless the receipt
 * came first), ship the hold (leaves a reservation behind if it came before the hold). In order,
 * every command applies and each SKU ends at on_hand 0, reserved 0.
 */
function round(make: ReturnType<typeof commandMaker>, skus: ReadonlyArray<string>, r: number): Array<Command> {
  return skus.flatMap((sku) => [
    make("receive", sku, { qty: 5 }),
    make("reserve", sku, { qty: 5, reservationId: `${sku}-h${r}` }),
    make("fulfill", sku, { qty: 5, reservationId: `${sku}-h${r}` }),
  ]);
}

describe("partitions resize", () => {
  it("grows and shrinks the layout under load: per-SKU order and exactly-once hold, the workers follow the new layout", async () => {
    const a = await startInProcess(ctx, ["worker"], OPTS);
    const b = await startInProcess(ctx, ["worker"], OPTS);
    try {
      await eventually("the 4 partitions held", async () => a.worker!.held().length + b.worker!.held().length === 4, 30_000);
      // Two publishers on disjoint SKUs, each with its own view of the layout (as separate processes
      // have): neither is told of the resize; the stream refuses their old-layout publishes.
      const publishers = [SKUS.slice(0, 20), SKUS.slice(20)].map((skus, i) => ({
        skus,
        t: topology(h.settings.env, OPTS.partitions),
        make: commandMaker(`resize-load-${i}`),
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
            await new Promise((resolve) => setTimeout(resolve, 40));
          }
        }),
      );
      const resizer = { sql: h.sql, jsm: h.nats.jsm, topology: topology(h.settings.env, OPTS.partitions) };
      await eventually("a few rounds published", async () => rounds >= 4);
      const grown = await resizePartitions(resizer, 7, { timeoutMs: 60_000 });
      expect(grown).toMatchObject({ generation: 1, partitions: 7, previousPartitions: 4 });
      await eventually(
        "the workers to apply 7 partitions",
        async () => [a, b].every((x) => x.worker!.layout()?.partitions === 7) && new Set([...a.worker!.held(), ...b.worker!.held()]).size === 7,
        30_000,
      );
      const afterGrow = rounds;
      await eventually("more rounds published", async () => rounds >= afterGrow + 6);
      const shrunk = await resizePartitions(resizer, 3, { timeoutMs: 60_000 });
      expect(shrunk).toMatchObject({ generation: 2, partitions: 3, previousPartitions: 7 });
      stopAt = rounds + 6;
      await load;
      // The publishers learnt each layout from the stream's refusals.
      expect(publishers.every((p) => p.t.layout.generation === 2)).toBe(true);
      await eventually("every command applied", async () => (await outcomeCounts(h.sql, ids)).n === ids.length, 60_000);
      expect((await outcomeCounts(h.sql, ids)).distinct).toBe(ids.length);
      const rejected = await h.sql<Array<{ command_id: string; reason: string }>>`
        select command_id, reason from command_outcomes where status = 'rejected' and command_id like 'resize-load-%'`;
      expect(rejected).toEqual([]);
      const balances = await h.sql<Array<{ sku: string; bucket: string; qty: number }>>`
        select sku, bucket, qty::int as qty from balances where sku like 'RS-%' and qty <> 0`;
      expect(balances).toEqual([]);
      const legs = await h.sql<Array<{ n: number }>>`
        select count(*)::int as n from ledger_entries where command_id like 'resize-load-%' and bucket = 'on_hand'`;
      expect(legs[0]!.n).toBe((ids.length / 3) * 2); // a receipt and a shipment per round, once each
      expect((await verifyLedger(h.sql)).problem).toBeNull();
      // Commands went out under all three layouts.
      for (const layout of [
        { generation: 0, partitions: 4 },
        { generation: 1, partitions: 7 },
        { generation: 2, partitions: 3 },
      ]) {
        const t = h.topology.withLayout(layout);
        const last = await Promise.all(
          Array.from({ length: layout.partitions }, (_, p) =>
            h.nats.jsm.streams.getMessage(t.commandsStream, { last_by_subj: t.commandSubject(p) }).then(
              () => 1,
              () => 0,
            ),
          ),
        );
        expect(
          last.reduce((x: number, y: number) => x + y, 0),
          `messages under generation ${layout.generation}`,
        ).toBeGreaterThan(0);
      }
      await eventually("the workers to apply 3 partitions", async () => new Set([...a.worker!.held(), ...b.worker!.held()]).size === 3, 30_000);
    } finally {
      await b.close();
      await a.close();
    }
  });

  it("a process starting never writes the commands stream's subjects back: a resize's cut may land between its read and its update", async () => {
    const before = (await h.nats.jsm.streams.info(h.topology.commandsStream)).config;
    expect(h.topology.layoutOfStreamSubjects(before.subjects)).toEqual({ generation: 2, partitions: 3 });
    // What a process that read the stream just before a cut holds (generation 0's subjects), with a
    // setting of its own that differs, so the stream is updated.
    const stale = { ...before, subjects: topology(h.settings.env, OPTS.partitions).commandStreamSubjects({ generation: 0, partitions: 4 }) };
    await ensureStream(h.nats.jsm, { ...stale, max_age: before.max_age + 1_000_000_000 }, { replicas: 1, warn: () => {} }, ["subjects"]);
    const after = (await h.nats.jsm.streams.info(h.topology.commandsStream)).config;
    expect(after.max_age).toBe(before.max_age + 1_000_000_000);
    expect(after.subjects).toEqual(before.subjects);
    // And a whole start: the layout is read from the stream, not written to it.
    const t = topology(h.settings.env, OPTS.partitions);
    await ensureTopology(h.nats.nc, t, { duplicateWindowMs: h.settings.duplicateWindowMs, leaseTtlMs: h.settings.leaseTtlMs });
    expect(t.layout).toEqual({ generation: 2, partitions: 3 });
    expect((await h.nats.jsm.streams.info(h.topology.commandsStream)).config.subjects).toEqual(before.subjects);
  });

  it("does nothing on a resize to the count it has (run again after it finished), refuses a bad count naming the field", async () => {
    const resizer = { sql: h.sql, jsm: h.nats.jsm, topology: topology(h.settings.env, OPTS.partitions) };
    const steps: Array<string> = [];
    await expect(resizePartitions(resizer, 3, { timeoutMs: 1000, onStep: (s) => steps.push(s) })).resolves.toMatchObject({
      generation: 2,
      partitions: 3,
      state: "active",
    });
    expect(steps).toEqual(["the layout already has 3 partitions (generation 2); nothing to do"]);
    await expect(resizePartitions(resizer, 0, { timeoutMs: 1000 })).rejects.toThrow(/partitions: expected an integer/);
  });
});
