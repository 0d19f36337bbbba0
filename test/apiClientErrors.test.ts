import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { testContext, type TestContext } from "./support/context.ts";
import { defineItems, startApi, type ApiFixture } from "./apiSupport.ts";

let ctx: TestContext;
let api: ApiFixture;

beforeAll(async () => {
  ctx = await testContext();
  api = await startApi(ctx, { background: false }, []);
  await defineItems(api.sql, [{ sku: "CE-A", kind: "stock", baseUnit: "EA", identifiers: [{ system: "barcode", id: "6000000000010" }] }]);
});
afterAll(async () => {
  await api?.close();
});

const deep = (n: number) => "[".repeat(n) + "]".repeat(n);
const deepObject = (n: number) => `${'{"a":'.repeat(n)}1${"}".repeat(n)}`;

/** Every client error is a 4xx that names the field, never a 503 with Retry-After (which invites endless retries). */
function expectClientError(r: { statusCode: number; headers: Record<string, unknown>; body: string }, status: number, field: RegExp): void {
  expect(r.statusCode, r.body.slice(0, 300)).toBe(status);
  expect(r.headers["retry-after"]).toBeUndefined();
  expect(r.headers["content-type"]).toMatch(/^application\/problem\+json/);
  const body = JSON.parse(r.body) as { detail: string; status: number };
  expect(body.status).toBe(status);
  expect(body.detail).toMatch(field);
}

describe("client errors are 4xx naming the field", () => {
  it("JSON nested 5,000 deep: POS, reservations", async () => {
    for (const payload of [deep(5000), `{"transactions":${deep(5000)}}`, deepObject(5000)]) {
      const pos = await api.call({
        method: "POST",
        url: "/v1/pos/transactions",
        as: "pos",
        headers: { "content-type": "application/json" },
        payload,
      });
      expectClientError(pos, 400, /nest/);
      const res = await api.call({
        method: "POST",
        url: "/v1/reservations",
        as: "reserver",
        headers: { "content-type": "application/json", "idempotency-key": "deep" },
        payload,
      });
      expectClientError(res, 400, /nest/);
    }
  });

  it("a ledger date Postgres cannot store (to=0000-01-01) on entries and the export", async () => {
    for (const url of [
      "/v1/ledger/entries?to=0000-01-01",
      "/v1/ledger/export?to=0000-01-01",
      "/v1/ledger/entries?from=0000-12-31T23:00:00Z",
      "/v1/ledger/export?from=99999-01-01",
    ]) {
      const r = await api.call({ method: "GET", url, as: "ledger" });
      expectClientError(r, 400, /querystring\.(to|from)/);
    }
  });

  it("SSE lastEventId beyond what a sequence can be (1e20), as query and header", async () => {
    const q = await api.call({ method: "GET", url: "/v1/availability/stream?channel=web&lastEventId=1e20", as: "reader" });
    expectClientError(q, 400, /lastEventId/);
    const h = await api.call({
      method: "GET",
      url: "/v1/availability/stream?channel=web",
      as: "reader",
      headers: { "last-event-id": "100000000000000000000" },
    });
    expectClientError(h, 400, /last-event-id/);
  });

  it("a body that is not JSON, of another media type, or over the limit names body or content-type", async () => {
    const bad = await api.call({
      method: "POST",
      url: "/v1/reservations",
      as: "reserver",
      headers: { "content-type": "application/json", "idempotency-key": "nj" },
      payload: "{nope",
    });
    expectClientError(bad, 400, /^body: /);
    const xml = await api.call({
      method: "POST",
      url: "/v1/reservations",
      as: "reserver",
      headers: { "content-type": "application/xml", "idempotency-key": "x" },
      payload: "<r/>",
    });
    expectClientError(xml, 415, /^headers\.content-type: /);
    const big = await api.call({
      method: "POST",
      url: "/v1/reservations",
      as: "reserver",
      headers: { "content-type": "application/json", "idempotency-key": "b" },
      payload: JSON.stringify({ sku: "x".repeat(300 * 1024) }),
    });
    expectClientError(big, 413, /^body: /);
    const bigPos = await api.call({
      method: "POST",
      url: "/v1/pos/transactions",
      as: "pos",
      headers: { "content-type": "application/json" },
      payload: JSON.stringify({ transactions: ["x".repeat(1024 * 1024)] }),
    });
    expectClientError(bigPos, 413, /^body: /);
  });
});
