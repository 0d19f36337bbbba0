import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { PULL_HEARTBEAT_MS } from "../actors/partitionRunner.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { startNats, type NatsServer } from "./support/nats.ts";
import { decodedCommands, eventually, harness, publishAndDecide, startInProcess, type Harness } from "./support/tally.ts";
import { generateCommands } from "./support/workload.ts";

// A partition's pull that goes quiet — nats-server not answering, or a pull request or its answer
// lost — is noticed by nats.js only after two missed idle heartbeats, and only then pulled again.
// With the client's defaults that was ~30 s of a partition idle with its messages in the stream.
// This file owns its nats-server: it freezes it (SIGSTOP: connections open, nothing answers).

let nats: NatsServer;
let ctx: TestContext;
let h: Harness;
// A long TTL: renewals every 15 s, so the freeze does not stand between a renewal and its answer.
const OPTS = { partitions: 1, leaseTtlMs: 60_000 };

beforeAll(async () => {
  nats = await startNats();
  ctx = { ...(await testContext()), natsUrl: nats.url };
  h = await harness(ctx, OPTS);
}, 60_000);
afterAll(async () => {
  await h?.close();
  await nats?.destroy();
});

describe("a partition's pull that goes quiet", () => {
  it("is counted and pulled again within a few heartbeats; what arrived meanwhile is applied", async () => {
    const tally = await startInProcess(ctx, ["worker"], OPTS);
    try {
      await eventually("the worker to hold the partition", async () => tally.worker!.held().length === 1);
      await publishAndDecide(h, decodedCommands(generateCommands(20, 5, 41, "pull-warm")), "the warm-up applied");
      expect(tally.worker!.metrics.pullsStalled).toBe(0);

      // Frozen for three heartbeats and a half: the pull's heartbeats stop coming.
      const pid = nats.pid!;
      process.kill(pid, "SIGSTOP");
      try {
        await new Promise((r) => setTimeout(r, PULL_HEARTBEAT_MS * 3.5));
      } finally {
        process.kill(pid, "SIGCONT");
      }
      await eventually("the quiet pull counted", async () => tally.worker!.metrics.pullsStalled >= 1, 5_000);
      expect(tally.worker!.held()).toEqual([0]);

      await publishAndDecide(h, decodedCommands(generateCommands(20, 5, 42, "pull-after")), "the commands after it applied", 10_000);
    } finally {
      await tally.close();
    }
  }, 90_000);
});
