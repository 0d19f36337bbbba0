import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { testContext, type TestContext } from "./support/context.ts";
import { decodedCommands, eventually, harness, publishAndDecide, startInProcess, type Harness } from "./support/tally.ts";
import { generateCommands } from "./support/workload.ts";

// A lease renewal is a compare-and-set on the key's revision. When its request times out (a busy
// nats-server, a busy process) after the server applied it, the worker keeps the old revision, and
// its next renewal fails although the lease is still its own. The worker used to take that for a
// takeover: it stopped the partition, which then sat idle until the key's TTL freed it for the same
// worker to take again.

let ctx: TestContext;
let h: Harness;
const OPTS = { partitions: 1, leaseTtlMs: 20_000 };

beforeAll(async () => {
  ctx = await testContext();
  h = await harness(ctx, OPTS);
});
afterAll(async () => {
  await h?.close();
});

describe("a lease renewal whose answer was lost", () => {
  it("leaves the partition held and applying: the worker renews from the revision it did not hear of", async () => {
    const tally = await startInProcess(ctx, ["worker"], OPTS);
    try {
      await eventually("the worker to hold the partition", async () => tally.worker!.held().length === 1);
      const key = h.topology.partitionLeaseKey(0);
      await publishAndDecide(h, decodedCommands(generateCommands(20, 5, 31, "renew-warm")), "the warm-up applied");

      // The renewal that took effect unheard: the same value written again, as the worker would have.
      const entry = (await h.nats.leases.get(key))!;
      const bumped = await h.nats.leases.update(key, entry.value, entry.revision);

      // The next renewal round (every TTL / 4 = 5 s) fails on the revision; the partition must stay held.
      let dropped = false;
      const watching = setInterval(() => {
        if (tally.worker!.held().length !== 1) dropped = true;
      }, 50);
      try {
        await eventually("the lease renewed past the unheard revision", async () => ((await h.nats.leases.get(key))?.revision ?? 0) > bumped, 15_000);
      } finally {
        clearInterval(watching);
      }
      expect(dropped, "the partition was given up").toBe(false);
      expect(tally.worker!.metrics.leaseLost).toBe(0);
      expect((await h.nats.leases.get(key))!.json<{ owner: string }>().owner).toBe(tally.worker!.id);

      // Still applying at once, not after the TTL.
      await publishAndDecide(h, decodedCommands(generateCommands(20, 5, 32, "renew-after")), "the commands after it applied", 5_000);
    } finally {
      await tally.close();
    }
  }, 60_000);

  it("leaves the outbox relay leading (the same compare-and-set; it used to stop publishing until the TTL)", async () => {
    const tally = await startInProcess(ctx, ["relay"], OPTS);
    try {
      await eventually("the relay to lead", async () => tally.relay!.leader);
      const key = h.topology.relayLeaseKey;
      const entry = (await h.nats.leases.get(key))!;
      const bumped = await h.nats.leases.update(key, entry.value, entry.revision);
      // The relay renews before a round once TTL / 3 has passed: a round is due at least every few seconds.
      let dropped = false;
      const watching = setInterval(() => {
        if (!tally.relay!.leader) dropped = true;
      }, 50);
      try {
        await eventually(
          "the relay lease renewed past the unheard revision",
          async () => ((await h.nats.leases.get(key))?.revision ?? 0) > bumped,
          20_000,
        );
      } finally {
        clearInterval(watching);
      }
      expect(dropped, "the relay gave up leading").toBe(false);
    } finally {
      await tally.close();
    }
  }, 60_000);
});
