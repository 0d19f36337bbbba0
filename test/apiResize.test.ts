import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { resizePartitions } from "../src/operations/index.ts";
import { topology } from "../src/wire/index.ts";
import { startApi, type ApiFixture } from "./apiSupport.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { eventually } from "./support/tally.ts";

let ctx: TestContext;
let api: ApiFixture;
const OPTS = { partitions: 2, leaseTtlMs: 1500 };

beforeAll(async () => {
  ctx = await testContext();
  api = await startApi(ctx, {}, ["worker"], OPTS);
});
afterAll(async () => {
  await api?.close();
});

describe("the API after a partition resize (the processes started before it)", () => {
  it("skips on, reports readiness for and counts the partitions of the layout workers apply, not TALLY_PARTITIONS'", async () => {
    await eventually("the process to be ready", async () => (await api.call({ method: "GET", url: "/readyz" })).statusCode === 200, 30_000);
    const resizer = { sql: api.sql, jsm: api.h.nats.jsm, topology: topology(api.h.settings.env, OPTS.partitions) };
    await resizePartitions(resizer, 4, { timeoutMs: 30_000 });
    await eventually("the worker to apply 4 partitions", async () => api.tally!.worker!.held().length === 4, 30_000);
    const ready = await api.call({ method: "GET", url: "/readyz" });
    expect(ready.statusCode).toBe(200);
    expect(ready.json().checks.leases.detail).toContain("4 of 4 partitions held by this worker");
    const metrics = (await api.call({ method: "GET", url: "/metrics", as: "admin" })).body;
    expect(metrics).toMatch(/^tally_worker_partitions 4$/m);
    // Partition 3 exists only in the new layout (sequence 1 is below every checkpoint: recorded, nothing skipped).
    const skip = await api.call({ method: "POST", url: "/v1/partitions/3/skip", as: "admin", payload: { seq: 1 } });
    expect(skip.statusCode, skip.body).toBe(202);
    const outside = await api.call({ method: "POST", url: "/v1/partitions/4/skip", as: "admin", payload: { seq: 1 } });
    expect(outside.statusCode).toBe(400);
    expect(outside.json().detail).toContain("partition: expected a partition from 0 to 3");
  });
});
