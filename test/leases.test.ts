import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodeCommand, type Command } from "../src/contract/command.ts";
import { verifyLedger } from "../ledger/index.ts";
import { publishCommands } from "../src/wire/publisher.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { eventually, harness, outcomeCounts, startInProcess, type Harness } from "./support/tally.ts";
import { expectationOf, generateCommands } from "./support/workload.ts";

let ctx: TestContext;
let h: Harness;
const OPTS = { partitions: 6, leaseTtlMs: 1500 };

beforeAll(async () => {
  ctx = await testContext();
  h = await harness(ctx, OPTS);
});
afterAll(async () => {
  await h?.close();
});

describe("partition leases", () => {
  it("share partitions fairly between workers and hand them over on a graceful stop (crashes: crash.test.ts)", async () => {
    const a = await startInProcess(ctx, ["worker"], OPTS);
    let b: typeof a | null = null;
    try {
      await eventually("A to hold every partition", async () => a.worker!.held().length === 6);
      b = await startInProcess(ctx, ["worker"], OPTS);
      await eventually("a fair share each", async () => a.worker!.held().length === 3 && b!.worker!.held().length === 3, 30_000);
      expect(new Set([...a.worker!.held(), ...b.worker!.held()]).size).toBe(6);
      const epochs = await h.sql<Array<{ partition: number; lease_epoch: number }>>`select partition, lease_epoch from partition_checkpoints`;
      expect(epochs).toHaveLength(6);

      // Graceful stop: B releases its leases, A takes them at once (well before a TTL would expire).
      await b.close();
      b = null;
      await eventually("A to hold every partition again", async () => a.worker!.held().length === 6, 10_000);
      const after = await h.sql<Array<{ partition: number; lease_epoch: number }>>`select partition, lease_epoch from partition_checkpoints`;
      const before = new Map(epochs.map((e) => [e.partition, e.lease_epoch]));
      // Every takeover raised the epoch.
      for (const e of after) expect(e.lease_epoch).toBeGreaterThanOrEqual(before.get(e.partition)!);
      expect(after.some((e) => e.lease_epoch > before.get(e.partition)!)).toBe(true);
    } finally {
      await b?.close();
      await a.close();
    }
  });

  it("passivates actors beyond the configured bound and still applies exactly; one partition applies at a time with TALLY_APPLY_CONCURRENCY=1", async () => {
    const tally = await startInProcess(ctx, ["worker"], { ...OPTS, maxActors: 20, applyConcurrency: 1 });
    try {
      const raw = generateCommands(3000, 300, 77, "lru");
      const commands: Array<Command> = raw.map((c) => {
        const d = decodeCommand(c);
        if (d._tag === "Left") throw d.left;
        return d.right;
      });
      // In three rounds, each applied before the next is published: a round touches most of the 300 SKUs,
      // and with 20 live actors at most, a SKU of an earlier round must be re-activated from the ledger
      // tables (published at once, the worker may take a partition's whole share in one batch under
      // load, activating each SKU once and no more).
      const ids = commands.map((c) => c.id);
      for (let round = 0; round < 3; round++) {
        const part = commands.slice(round * 1000, (round + 1) * 1000);
        await publishCommands(h.nats.js, h.topology, part, { envelopeSize: 25 });
        const partIds = part.map((c) => c.id);
        await eventually(`round ${round + 1} applied`, async () => (await outcomeCounts(h.sql, partIds)).n === partIds.length);
      }
      await eventually("all applied", async () => (await outcomeCounts(h.sql, ids)).n === ids.length);
      // Every partition had work, yet never two applying at once.
      expect(tally.worker!.held().length).toBeGreaterThan(1);
      expect(tally.worker!.gate.permits).toBe(1);
      expect(tally.worker!.gate.maxInUse).toBe(1);
      const registry = tally.worker!.skus;
      expect(registry.size).toBeLessThanOrEqual(20);
      expect(registry.passivations).toBeGreaterThan(100);
      expect(registry.activations).toBeGreaterThan(300); // re-activated from the ledger tables after passivation
      const expected = expectationOf(raw);
      const balances = await h.sql<Array<{ sku: string; location: string; bucket: string; qty: number }>>`
        select sku, location, bucket, qty from balances where sku like 'SKU-%'`;
      const actual = new Map(balances.map((b) => [`${b.sku}|${b.location}|${b.bucket}`, b.qty]));
      for (const [key, l] of expected.locations)
        for (const bucket of ["on_hand", "reserved", "in_transit", "damaged"] as const)
          expect(actual.get(`${key}|${bucket}`) ?? 0, `${key} ${bucket}`).toBe(l[bucket]);
      expect((await verifyLedger(h.sql)).problem).toBeNull();
    } finally {
      await tally.close();
    }
  });
});
