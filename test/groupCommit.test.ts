import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { LeaseLost, claimPartition, commitGroup, verifyLedger, type BatchWrite } from "../ledger/index.ts";
import { GroupCommitter } from "../actors/groupCommit.ts";
import { publishCommands } from "../src/wire/publisher.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { decodedCommands, eventually, harness, outcomeCounts, startInProcess, type Harness } from "./support/tally.ts";
import { generateCommands } from "./support/workload.ts";

let ctx: TestContext;
let h: Harness;

beforeAll(async () => {
  ctx = await testContext();
  // Long leases: a lease written behind a worker's back stays until the test purges it.
  h = await harness(ctx, { partitions: 2, leaseTtlMs: 60_000 });
});
afterAll(async () => {
  await h?.close();
});

/** A batch of one partition: a balance, an outcome and an outbox row, all named after `tag`. */
function write(partition: number, epoch: number, tag: string, lastSeq: number): BatchWrite {
  const sku = `GC-${tag}`;
  return {
    partition,
    epoch,
    lastSeq,
    recordedAt: new Date(),
    entries: [],
    balances: [{ sku, location: "DC1", bucket: "on_hand", qty: 5 }],
    heads: [{ sku, seq: 0, lastHash: "0".repeat(64), version: 1 }],
    skuLocations: [],
    transfers: [],
    settledTransfers: [],
    holds: [],
    outcomes: [{ commandId: `gc-${tag}`, streamSeq: lastSeq, sku, type: "receive", status: "applied", reason: null, detail: null }],
    outbox: [{ kind: "event", subject: `gc.${tag}`, kvKey: null, payload: { tag } }],
  };
}

/** How many rows of `tag`'s batch exist, per table. */
async function rowsOf(tag: string): Promise<{ balances: number; heads: number; outcomes: number; outbox: number }> {
  const [r] = await h.sql<[{ balances: number; heads: number; outcomes: number; outbox: number }]>`
    select (select count(*)::int from balances where sku = ${`GC-${tag}`}) as balances,
           (select count(*)::int from sku_heads where sku = ${`GC-${tag}`}) as heads,
           (select count(*)::int from command_outcomes where command_id = ${`gc-${tag}`}) as outcomes,
           (select count(*)::int from outbox where subject = ${`gc.${tag}`}) as outbox`;
  return r!;
}

const checkpoint = async (partition: number) =>
  (await h.sql<[{ last_seq: number }]>`select last_seq from partition_checkpoints where partition = ${partition}`)[0]!.last_seq;

describe("group commit across partitions", () => {
  it("a worker holding both partitions: one taken over is fenced, the other applies; the new holder applies the rest once", async () => {
    // First in the file: the hand-made batches below move checkpoints past any stream and have no ledger legs.
    const a = await startInProcess(ctx, ["worker"], { partitions: 2, leaseTtlMs: 60_000 });
    const commands = decodedCommands(generateCommands(400, 40, 7, "g"));
    const inPartition = (p: number) => commands.filter((c) => h.topology.partitionOf(c.sku) === p);
    try {
      await eventually("worker A to hold both partitions", async () => a.worker!.held().length === 2);
      // Partition 1 is taken over behind A's back, as Worker does: the KV lease, then the epoch in Postgres.
      const key = h.topology.partitionLeaseKey(1);
      await h.nats.leases.purge(key);
      await h.nats.leases.create(key, JSON.stringify({ owner: "worker-b", epoch: 0 }));
      await claimPartition(h.sql, 1);
      await publishCommands(h.nats.js, h.topology, commands);
      await eventually(
        "partition 0 applied",
        async () =>
          (
            await outcomeCounts(
              h.sql,
              inPartition(0).map((c) => c.id),
            )
          ).n === inPartition(0).length,
      );
      await eventually("worker A fenced on partition 1", async () => a.worker!.metrics.leaseLost === 1);
      expect(
        (
          await outcomeCounts(
            h.sql,
            inPartition(1).map((c) => c.id),
          )
        ).n,
      ).toBe(0);
    } finally {
      await a.close();
    }
    await h.nats.leases.purge(h.topology.partitionLeaseKey(1));
    const b = await startInProcess(ctx, ["worker"], { partitions: 2, leaseTtlMs: 2_000 });
    try {
      await eventually(
        "worker B to apply everything",
        async () =>
          (
            await outcomeCounts(
              h.sql,
              commands.map((c) => c.id),
            )
          ).n === commands.length,
      );
      const [{ dup }] = await h.sql<[{ dup: number }]>`
        select count(*)::int as dup from (select command_id, leg from ledger_entries group by 1, 2 having count(*) > 1) d`;
      expect(dup).toBe(0);
      expect((await verifyLedger(h.sql)).ok).toBe(true);
    } finally {
      await b.close();
    }
  });
  it("one transaction: the batch whose lease was lost writes nothing, the others commit", async () => {
    const p0 = await claimPartition(h.sql, 0);
    const p1 = await claimPartition(h.sql, 1);
    // Partition 1 is taken over between its batch being planned and the group committing.
    await claimPartition(h.sql, 1);
    const before1 = await checkpoint(1);
    const fenced = await commitGroup(h.sql, [write(1, p1.epoch, "lost", 500_000), write(0, p0.epoch, "kept", 400_000)]);
    expect(fenced).toEqual([false, true]);
    expect(await rowsOf("kept")).toEqual({ balances: 1, heads: 1, outcomes: 1, outbox: 1 });
    expect(await rowsOf("lost")).toEqual({ balances: 0, heads: 0, outcomes: 0, outbox: 0 });
    expect(await checkpoint(0)).toBe(400_000);
    expect(await checkpoint(1)).toBe(before1);
  });

  it("the worker's committer groups batches planned meanwhile; a lease lost mid-batch rejects only its partition", async () => {
    const p0 = await claimPartition(h.sql, 0);
    const p1 = await claimPartition(h.sql, 1);
    // Partition 1 is lost after its batch was planned under epoch p1, before the batch reaches Postgres.
    await claimPartition(h.sql, 1);
    const committer = new GroupCommitter(h.sql);
    // The first commit goes out alone at once; the two handed in while it is in flight go together.
    const first = committer.commit(write(0, p0.epoch, "first", 410_000));
    const lost = committer.commit(write(1, p1.epoch, "lost2", 510_000));
    const kept = committer.commit(write(0, p0.epoch, "kept2", 420_000));
    const results = await Promise.allSettled([first, lost, kept]);
    expect(results[0]!.status).toBe("fulfilled");
    expect(results[2]!.status).toBe("fulfilled");
    expect(results[1]!.status).toBe("rejected");
    expect((results[1] as PromiseRejectedResult).reason).toBeInstanceOf(LeaseLost);
    expect((results[1] as PromiseRejectedResult).reason.partition).toBe(1);
    expect(committer.stats).toEqual({ commits: 2, batches: 3, splits: 0 });
    expect(await rowsOf("kept2")).toEqual({ balances: 1, heads: 1, outcomes: 1, outbox: 1 });
    expect(await rowsOf("lost2")).toEqual({ balances: 0, heads: 0, outcomes: 0, outbox: 0 });
  });

  it("two lanes (as a worker runs them): groups in flight at once are each fenced; a lease lost in one rejects only its partition", async () => {
    const p0 = await claimPartition(h.sql, 0);
    const p1 = await claimPartition(h.sql, 1);
    await claimPartition(h.sql, 1);
    const committer = new GroupCommitter(h.sql, 2);
    // The first two go out at once, one per lane; the third waits for a lane.
    const first = committer.commit(write(0, p0.epoch, "lane0", 450_000));
    const lost = committer.commit(write(1, p1.epoch, "lane1lost", 530_000));
    const kept = committer.commit(write(0, p0.epoch, "lane0next", 460_000));
    const results = await Promise.allSettled([first, lost, kept]);
    expect(results.map((r) => r.status)).toEqual(["fulfilled", "rejected", "fulfilled"]);
    expect((results[1] as PromiseRejectedResult).reason).toBeInstanceOf(LeaseLost);
    expect(committer.stats).toEqual({ commits: 3, batches: 3, splits: 0 });
    expect(await rowsOf("lane0")).toEqual({ balances: 1, heads: 1, outcomes: 1, outbox: 1 });
    expect(await rowsOf("lane0next")).toEqual({ balances: 1, heads: 1, outcomes: 1, outbox: 1 });
    expect(await rowsOf("lane1lost")).toEqual({ balances: 0, heads: 0, outcomes: 0, outbox: 0 });
    expect(await checkpoint(0)).toBe(460_000);
  });

  it("a group one batch of which fails is committed batch by batch: the failure reaches only its partition", async () => {
    const p0 = await claimPartition(h.sql, 0);
    const p1 = await claimPartition(h.sql, 1);
    const committer = new GroupCommitter(h.sql);
    const first = committer.commit(write(0, p0.epoch, "warmup", 430_000));
    // Partition 1 repeats a command id that already has an outcome (the outcome key refuses it).
    const dup = { ...write(1, p1.epoch, "dup", 520_000), outcomes: write(0, p0.epoch, "warmup", 0).outcomes };
    const failing = committer.commit(dup);
    const fine = committer.commit(write(0, p0.epoch, "fine", 440_000));
    const results = await Promise.allSettled([first, failing, fine]);
    expect(results.map((r) => r.status)).toEqual(["fulfilled", "rejected", "fulfilled"]);
    expect((results[1] as PromiseRejectedResult).reason).toMatchObject({ code: "23505" });
    expect(committer.stats.splits).toBe(1);
    expect(await rowsOf("fine")).toEqual({ balances: 1, heads: 1, outcomes: 1, outbox: 1 });
    expect(await rowsOf("dup")).toMatchObject({ balances: 0, heads: 0, outbox: 0 });
  });
  it("a group one statement of which fails writes nothing, throws that statement's error and leaves its connection clean", async () => {
    const p0 = await claimPartition(h.sql, 0);
    const p1 = await claimPartition(h.sql, 1);
    await commitGroup(h.sql, [write(0, p0.epoch, "before-failed-group", 470_000)]);
    // In partition order: partition 0's statement succeeds, partition 1's first repeats an outcome's command id, and the
    // one after it (a second batch of partition 1, which the committer never sends but Postgres takes) finds the transaction aborted.
    const dup = { ...write(1, p1.epoch, "failed-dup", 540_000), outcomes: write(0, p0.epoch, "before-failed-group", 0).outcomes };
    const failed = commitGroup(h.sql, [dup, write(1, p1.epoch, "aborted-after", 550_000), write(0, p0.epoch, "rolled-back", 480_000)]);
    // The cause, not the "transaction is aborted" (25P02) that any statement after it would get.
    await expect(failed).rejects.toMatchObject({ code: "23505" });
    expect(await rowsOf("rolled-back")).toEqual({ balances: 0, heads: 0, outcomes: 0, outbox: 0 });
    expect(await rowsOf("failed-dup")).toMatchObject({ balances: 0, heads: 0, outbox: 0 });
    expect(await rowsOf("aborted-after")).toEqual({ balances: 0, heads: 0, outcomes: 0, outbox: 0 });
    expect(await checkpoint(0)).toBe(470_000);
    // The connection went back to the pool out of the aborted transaction: the next groups (on every connection) commit.
    const [{ n }] = await h.sql<[{ n: number }]>`select count(*)::int as n from pg_stat_activity where state like 'idle in transaction%'`;
    expect(n).toBe(0);
    const again = await Promise.all([0, 1, 2].map((k) => commitGroup(h.sql, [write(0, p0.epoch, `after-failed-${k}`, 490_000 + k)])));
    expect(again).toEqual([[true], [true], [true]]);
    expect(await rowsOf("after-failed-2")).toEqual({ balances: 1, heads: 1, outcomes: 1, outbox: 1 });
  });
  it("a takeover committed while the group waits on a checkpoint row fences only that partition", async () => {
    const p0 = await claimPartition(h.sql, 0);
    const p1 = await claimPartition(h.sql, 1);
    const before1 = await checkpoint(1);
    // The takeover's transaction holds partition 1's checkpoint row while the group is committed.
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    let takenOver!: () => void;
    const locked = new Promise<void>((r) => (takenOver = r));
    const takeover = h.sql.begin(async (tx) => {
      await claimPartition(tx as never, 1);
      takenOver();
      await held;
    });
    await locked;
    const group = commitGroup(h.sql, [write(0, p0.epoch, "waited0", 600_000), write(1, p1.epoch, "waited1", 700_000)]);
    // The group's transaction waits for the row lock (it wrote partition 0 first, in partition order).
    await eventually("the group to wait on the checkpoint row", async () => {
      const [{ n }] = await h.sql<[{ n: number }]>`
        select count(*)::int as n from pg_stat_activity where wait_event_type = 'Lock' and query like '%partition_checkpoints%'`;
      return n > 0;
    });
    release();
    await takeover;
    expect(await group).toEqual([true, false]);
    expect(await rowsOf("waited0")).toEqual({ balances: 1, heads: 1, outcomes: 1, outbox: 1 });
    expect(await rowsOf("waited1")).toEqual({ balances: 0, heads: 0, outcomes: 0, outbox: 0 });
    expect(await checkpoint(0)).toBe(600_000);
    expect(await checkpoint(1)).toBe(before1);
  });
});
