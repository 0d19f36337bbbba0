import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { LeaseLost, claimPartition, commitBatch, verifyLedger } from "../ledger/index.ts";
import { publishCommands } from "../src/wire/publisher.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { decodedCommands, eventually, harness, outcomeCounts, startInProcess, type Harness } from "./support/tally.ts";
import { generateCommands } from "./support/workload.ts";

let ctx: TestContext;
let h: Harness;

beforeAll(async () => {
  ctx = await testContext();
  h = await harness(ctx, { partitions: 1 });
});
afterAll(async () => {
  await h?.close();
});

const outcomeCount = async (ids: ReadonlyArray<string>) => (await outcomeCounts(h.sql, ids)).n;

describe("fencing", () => {
  it("refuses a batch committed under an epoch that is no longer current, writing nothing", async () => {
    const first = await claimPartition(h.sql, 0);
    const second = await claimPartition(h.sql, 0);
    expect(second.epoch).toBe(first.epoch + 1);
    const [before] = await h.sql<[{ n: number }]>`select count(*)::int as n from command_outcomes`;
    const write = {
      partition: 0,
      epoch: first.epoch,
      lastSeq: 999_999,
      recordedAt: new Date(),
      entries: [],
      balances: [{ sku: "FENCED", location: "DC1", bucket: "on_hand", qty: 5 }],
      heads: [],
      skuLocations: [],
      transfers: [],
      settledTransfers: [],
      holds: [],
      outcomes: [
        { commandId: "fenced-1", streamSeq: 999_999, sku: "FENCED", type: "receive", status: "applied" as const, reason: null, detail: null },
      ],
      outbox: [],
    };
    await expect(commitBatch(h.sql, write)).rejects.toBeInstanceOf(LeaseLost);
    const [after] = await h.sql<[{ n: number }]>`select count(*)::int as n from command_outcomes`;
    expect(after!.n).toBe(before!.n);
    expect(await h.sql`select 1 from balances where sku = 'FENCED'`).toHaveLength(0);
    const [cp] = await h.sql<[{ last_seq: number }]>`select last_seq from partition_checkpoints where partition = 0`;
    expect(cp!.last_seq).toBeLessThan(999_999);
    // The current epoch commits fine.
    await commitBatch(h.sql, { ...write, epoch: second.epoch, lastSeq: 0, outcomes: [], balances: [] });
  });

  it("a worker whose lease was taken over cannot commit and stops applying; the new holder applies everything once", async () => {
    // A long TTL: worker A renews only every 20 s, so it still believes it holds the lease when it tries to commit.
    const a = await startInProcess(ctx, ["worker"], { partitions: 1, leaseTtlMs: 60_000 });
    try {
      const firstBatch = decodedCommands(generateCommands(200, 20, 3, "a"));
      await publishCommands(h.nats.js, h.topology, firstBatch);
      await eventually("worker A to apply the first batch", async () => (await outcomeCount(firstBatch.map((c) => c.id))) === 200);
      expect(a.worker!.held()).toEqual([0]);

      // Worker B takes partition 0 over, exactly as Worker does: the KV lease, then the epoch in Postgres.
      await h.nats.leases.purge("partition.0");
      await h.nats.leases.create("partition.0", JSON.stringify({ owner: "worker-b", epoch: 0 }));
      await claimPartition(h.sql, 0);

      const secondBatch = decodedCommands(generateCommands(200, 20, 4, "b"));
      await publishCommands(h.nats.js, h.topology, secondBatch);
      await eventually("worker A to be fenced", async () => a.worker!.metrics.leaseLost === 1);
      expect(a.worker!.held()).toEqual([]);
      await new Promise((r) => setTimeout(r, 500));
      expect(await outcomeCount(secondBatch.map((c) => c.id))).toBe(0);
    } finally {
      await a.close();
    }

    // B (a real worker now) takes the lease and applies the second batch, once.
    await h.nats.leases.purge("partition.0");
    const b = await startInProcess(ctx, ["worker"], { partitions: 1, leaseTtlMs: 2_000 });
    try {
      const secondIds = generateCommands(200, 20, 4, "b").map((c) => c.id);
      await eventually("worker B to apply the second batch", async () => (await outcomeCount(secondIds)) === 200);
      const [{ dup }] = await h.sql<[{ dup: number }]>`
        select count(*)::int as dup from (select command_id, leg from ledger_entries group by 1, 2 having count(*) > 1) d`;
      expect(dup).toBe(0);
      expect((await verifyLedger(h.sql)).ok).toBe(true);
    } finally {
      await b.close();
    }
  });
});
