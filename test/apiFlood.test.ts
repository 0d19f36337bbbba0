import { monitorEventLoopDelay } from "node:perf_hooks";
import type { AddressInfo } from "node:net";
import { Writable } from "node:stream";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTally } from "../src/app/roles.ts";
import { MAX_BATCH_LINES } from "../src/ingest/posTransaction.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { TEST_CHANNELS, eventually, testSettings } from "./support/tally.ts";
import { auth, defineItems, startApi, type ApiFixture } from "./apiSupport.ts";

/** The production lease TTL (TALLY_LEASE_TTL_MS default): a worker whose event loop stalls that long loses its leases. */
const ENV = { partitions: 4, leaseTtlMs: 10_000 };
/** The default POS body limit. */
const POS_BODY_LIMIT = 1024 * 1024;

let ctx: TestContext;
let api: ApiFixture;
let worker: Awaited<ReturnType<typeof startTally>>;
let base: string;
const workerLog: Array<{ level: number; msg: string }> = [];

beforeAll(async () => {
  ctx = await testContext();
  // The API and a worker in one process, one event loop: the layout the test proves safe.
  // Default body limits; a generous request budget, so that replies measure the work, not the 503 guard.
  api = await startApi(ctx, { rateLimitPerMinute: 1_000_000, background: false, requestTimeoutMs: 60_000 }, [], ENV);
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString().split("\n").filter(Boolean)) workerLog.push(JSON.parse(line) as { level: number; msg: string });
      done();
    },
  });
  worker = await startTally(testSettings(ctx, ENV), TEST_CHANNELS, ["worker"], pino({ level: "warn" }, sink));
  await defineItems(api.sql, [{ sku: "FLOOD-A", kind: "stock", baseUnit: "EA", identifiers: [{ system: "barcode", id: "8000000000012" }] }]);
  await api.app.listen({ port: 0, host: "127.0.0.1" });
  base = `http://127.0.0.1:${(api.app.server.address() as AddressInfo).port}`;
  await eventually("the worker to hold every partition", async () => worker.worker!.held().length === ENV.partitions, 30_000);
}, 60_000);
afterAll(async () => {
  await worker?.close();
  await api?.close();
});

/**
 * Bodies at the POS limits (1 MiB, 10,000 lines a batch, 32 levels of nesting): the largest valid batch, the
 * same with every line invalid, one with more lines than a batch may hold, one nested as deep as 1 MiB allows,
 * and one huge string.
 */
function maximalBodies(round: number): Array<{ kind: string; body: string }> {
  const line = { type: "sale", barcode: "8000000000012", qty: 1 };
  const batch = (prefix: string, txns: number, lines: number) =>
    JSON.stringify({
      transactions: Array.from({ length: txns }, (_, i) => ({
        store: "S01",
        terminal: "F",
        id: `${prefix}-${round}-${i}`,
        occurredAt: "2026-11-26T10:00:00Z",
        lines: Array.from({ length: lines }, () => line),
      })),
    });
  const valid = batch("flood", 100, MAX_BATCH_LINES / 100);
  const invalid = valid.replaceAll('"qty":1', '"qty":-1').replaceAll(`flood-${round}-`, `bad-${round}-`);
  const perTxn = batch("many", 1, 100).length;
  const tooMany = batch("many", Math.floor((POS_BODY_LIMIT - 64) / perTxn), 100);
  const half = Math.floor((POS_BODY_LIMIT - 64) / 2);
  const deep = "[".repeat(half) + "]".repeat(half);
  const text = JSON.stringify({
    transactions: [{ store: "S01", terminal: "F", id: "x".repeat(POS_BODY_LIMIT - 200), occurredAt: "2026-11-26T10:00:00Z", lines: [line] }],
  });
  // What the POS route took before it had these limits: 4 MiB nested all the way (about 3 s of a blocked loop each).
  const overLimit = "[".repeat(2 * 1024 * 1024) + "]".repeat(2 * 1024 * 1024);
  return [
    { kind: "over the limit", body: overLimit },
    { kind: "valid", body: valid },
    { kind: "invalid", body: invalid },
    { kind: "too many lines", body: tooMany },
    { kind: "deep", body: deep },
    { kind: "huge string", body: text },
  ];
}

describe("a flood of maximal bodies", () => {
  it("does not stall the process: the worker in the same process keeps its leases, /healthz keeps answering", async () => {
    const held = worker.worker!.held();
    const delay = monitorEventLoopDelay({ resolution: 10 });
    delay.enable();
    let flooding = true;
    let healthy = 0;
    const health = (async () => {
      while (flooding) {
        const r = await fetch(`${base}/healthz`);
        expect(r.status).toBe(200);
        healthy++;
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
    const statuses: Array<{ kind: string; status: number }> = [];
    for (let round = 0; round < 6; round++) {
      // Two copies of each at once (the second a resend of the first).
      const bodies = [...maximalBodies(round), ...maximalBodies(round)];
      for (const b of bodies) if (b.kind !== "over the limit") expect(b.body.length, b.kind).toBeLessThanOrEqual(POS_BODY_LIMIT);
      const replies = await Promise.all(
        bodies.map(async ({ kind, body }) => {
          const r = await fetch(`${base}/v1/pos/transactions`, {
            method: "POST",
            headers: { ...auth("pos"), "content-type": "application/json" },
            body,
          });
          await r.arrayBuffer();
          return { kind, status: r.status };
        }),
      );
      statuses.push(...replies);
    }
    flooding = false;
    await health;
    delay.disable();
    console.log(
      `flood: ${statuses.length} maximal bodies (${[...new Set(statuses.map((s) => `${s.kind} ${s.status}`))].join(", ")}), /healthz answered ${healthy} times, ` +
        `event loop delay max ${Math.round(delay.max / 1e6)} ms p99 ${Math.round(delay.percentile(99) / 1e6)} ms`,
    );
    expect(statuses.filter((s) => s.kind === "valid").map((s) => s.status)).toEqual(Array(12).fill(200));
    // Refused bodies are 400 even near 1 MiB: a dead letter too large for NATS keeps its payload in Postgres.
    for (const kind of ["invalid", "too many lines", "deep", "huge string"])
      expect(
        statuses.filter((s) => s.kind === kind).every((s) => s.status === 400),
        kind,
      ).toBe(true);
    expect(statuses.filter((s) => s.kind === "over the limit").every((s) => s.status === 413)).toBe(true);
    expect(healthy).toBeGreaterThan(0);
    // No lease expired or was taken over while the bodies were handled.
    expect(
      workerLog.filter((l) => /lease/.test(l.msg)),
      JSON.stringify(workerLog.slice(0, 5)),
    ).toEqual([]);
    expect(worker.worker!.held()).toEqual(held);
  }, 180_000);
});
