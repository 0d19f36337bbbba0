import { describe, expect, it } from "vitest";
import { availabilityKey, RELAY_LEASE_KEY, topology } from "./topology.ts";

// The names below were built at their call sites before Topology owned them: existing streams,
// consumers and lease keys carry them, so they must not change.
describe("Topology owns every NATS name (pinned)", () => {
  const t = topology("dev", 8);
  it("lease keys and the bucket's stream", () => {
    expect(t.leasesBucketStream).toBe("KV_tally_dev_leases");
    expect(t.partitionLeaseKey(3)).toBe("partition.3");
    expect(t.workerMemberKey("w-1")).toBe("worker.w-1");
    expect(t.workerMembers).toBe("worker");
    expect(t.relayLeaseKey).toBe("relay");
    expect(RELAY_LEASE_KEY).toBe("relay");
    expect(t.webhookLeaseKey("web")).toBe("webhook.web");
  });
  it("durable consumer prefixes and the POS queue group", () => {
    expect(t.partitionConsumerPrefix(3)).toBe("p3_");
    expect(t.webhookConsumerPrefix("web.eu")).toBe("webhook_web_eu_");
    expect(t.posQueue).toBe("tally_dev_pos");
  });
  it("availability keys, with or without a topology", () => {
    expect(availabilityKey("web", "SKU-1")).toBe("web.SKU-1");
    expect(t.availabilityKey("web", "A.B")).toBe("web.A=2EB");
  });
});
