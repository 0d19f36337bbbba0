import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { publishCommands } from "../src/wire/publisher.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { decodedCommands, eventually, harness, outcomeCounts, stealDeliveries, startInProcess, type Harness } from "./support/tally.ts";
import { generateCommands } from "./support/workload.ts";

// Deliveries a consumer counts as made but the worker never got (a connection or a nats-server lost
// with messages on the wire) are simulated exactly: another client pulls from the partition's own
// consumer and never acknowledges. Under AckPolicy.All the worker's acknowledgement of any later
// message would acknowledge those too; without the gap check they were never applied.

let ctx: TestContext;
let h: Harness;

beforeAll(async () => {
  ctx = await testContext();
  h = await harness(ctx, { partitions: 1 });
});
afterAll(async () => {
  await h?.close();
});

const outcomes = (ids: ReadonlyArray<string>) => outcomeCounts(h.sql, ids);

describe("deliveries lost in transit", () => {
  it("a partition whose consumer skipped deliveries re-reads from its checkpoint and applies every command once", async () => {
    const tally = await startInProcess(ctx, ["worker"], { partitions: 1 });
    try {
      const warmup = decodedCommands(generateCommands(50, 10, 11, "gap-warm"));
      await publishCommands(h.nats.js, h.topology, warmup);
      await eventually("the worker to apply the warm-up", async () => (await outcomes(warmup.map((c) => c.id))).n === warmup.length);

      let consumerName = "";
      for await (const info of h.nats.jsm.consumers.list(h.topology.commandsStream)) if (info.name.startsWith("p0_")) consumerName = info.name;
      expect(consumerName).not.toBe("");

      // The thief keeps a pull open on the worker's consumer while one-command envelopes arrive.
      let publishing = true;
      const thief = stealDeliveries(h.nats, h.topology.commandsStream, consumerName, { max: 20, batch: 2, more: () => publishing });
      const commands = decodedCommands(generateCommands(600, 30, 12, "gap"));
      for (let i = 0; i < commands.length; i += 50) await publishCommands(h.nats.js, h.topology, commands.slice(i, i + 50), { envelopeSize: 1 });
      publishing = false;
      const stolen = await thief;

      expect(stolen, "messages the other client took from the worker's consumer").toBeGreaterThan(0);
      await eventually(
        "every command to be applied or rejected",
        async () => (await outcomes(commands.map((c) => c.id))).n === commands.length,
        30_000,
      );
      const { n, distinct } = await outcomes(commands.map((c) => c.id));
      expect(distinct).toBe(n);
      expect(tally.worker!.metrics.deliveryGaps).toBeGreaterThanOrEqual(1);
    } finally {
      await tally.close();
    }
  }, 90_000);
});
