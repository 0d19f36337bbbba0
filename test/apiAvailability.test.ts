import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodeCommand, type Command } from "../src/contract/command.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { auth, startApi, type ApiFixture } from "./apiSupport.ts";
import { publishAndSettle, stealDeliveries } from "./support/tally.ts";
import { readEvents } from "./support/sse.ts";

let ctx: TestContext;
let api: ApiFixture;
let base: string;

beforeAll(async () => {
  ctx = await testContext();
  api = await startApi(ctx);
  await api.app.listen({ port: 0, host: "127.0.0.1" });
  base = `http://127.0.0.1:${(api.app.server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  await api?.close();
});

let n = 0;
const cmd = (type: string, sku: string, location: string, fields: Record<string, unknown>): Command => {
  const d = decodeCommand({
    id: `av:${++n}`,
    type,
    sku,
    location,
    source: { system: "erp", ref: `r${n}` },
    occurredAt: "2026-11-26T10:00:00Z",
    ...fields,
  });
  if (d._tag === "Left") throw d.left;
  return d.right;
};
const apply = (commands: ReadonlyArray<Command>) => publishAndSettle(api.h, commands);

describe("GET /v1/availability", () => {
  beforeAll(async () => {
    await apply([
      cmd("receive", "AV-1", "DC1", { qty: 10 }),
      cmd("receive", "AV-1", "S01", { qty: 5 }),
      cmd("reserve", "AV-1", "S01", { qty: 1, reservationId: "AV-1:1" }),
      cmd("set_policy", "AV-1", "S01", { safetyStock: 1, reorderPoint: 2 }),
      cmd("receive", "AV-2", "DC1", { qty: 3 }),
      cmd("receive", "AV-DC", "DC9", { qty: 3 }),
    ]);
  });

  it("answers one SKU for a channel: available, on hand, reserved, status, ledger sequence, updated at", async () => {
    const r = await api.call({ method: "GET", url: "/v1/availability/AV-1?channel=web", as: "reader" });
    expect(r.statusCode).toBe(200);
    // web = DC1 + S01 less a buffer of 2: 10 + (5 − 1 − 1) − 2
    expect(r.json()).toMatchObject({ channel: "web", sku: "AV-1", available: 11, onHand: 15, reserved: 1, status: "in_stock", seq: 3 });
    expect(new Date(r.json().updatedAt).getTime()).not.toBeNaN();
    const store = await api.call({ method: "GET", url: "/v1/availability/AV-1", as: "storeReader" });
    expect(store.json()).toMatchObject({ channel: "store_s01", available: 3 });
  });

  it("answers zero for a SKU the ledger knows but the channel has never stocked; 404 for one it has never seen", async () => {
    const none = await api.call({ method: "GET", url: "/v1/availability/AV-DC?channel=web", as: "reader" });
    expect(none.statusCode).toBe(200);
    expect(none.json()).toMatchObject({ available: 0, status: "out", updatedAt: null });
    const unknown = await api.call({ method: "GET", url: "/v1/availability/NOPE?channel=web", as: "reader" });
    expect(unknown.statusCode).toBe(404);
    expect(unknown.json()).toMatchObject({ code: "unknown_sku" });
  });

  it("answers 400 without a channel, 404 for an unknown channel, 403 for another channel's token, 400 for a bad SKU", async () => {
    expect((await api.call({ method: "GET", url: "/v1/availability/AV-1", as: "reader" })).statusCode).toBe(400);
    const unknown = await api.call({ method: "GET", url: "/v1/availability/AV-1?channel=moon", as: "reader" });
    expect(unknown.statusCode).toBe(404);
    expect(unknown.json()).toMatchObject({ code: "unknown_channel" });
    expect((await api.call({ method: "GET", url: "/v1/availability/AV-1?channel=web", as: "storeReader" })).statusCode).toBe(403);
    const bad = await api.call({ method: "GET", url: "/v1/availability/a%20b?channel=web", as: "reader" });
    expect(bad.statusCode).toBe(400);
    expect(bad.json().errors[0].path).toBe("params.sku");
  });

  it("answers many SKUs at once (up to 1000), listing the unknown ones", async () => {
    const r = await api.call({ method: "GET", url: "/v1/availability?channel=web&skus=AV-1,AV-2,NOPE", as: "webReader" });
    expect(r.statusCode).toBe(200);
    const body = r.json();
    expect(body.items.map((i: { sku: string; available: number }) => [i.sku, i.available])).toEqual([
      ["AV-1", 11],
      ["AV-2", 1],
    ]);
    expect(body.unknown).toEqual(["NOPE"]);
    const many = Array.from({ length: 1001 }, (_, i) => `S${i}`).join(",");
    const tooMany = await api.call({ method: "GET", url: `/v1/availability?channel=web&skus=${many}`, as: "reader" });
    expect(tooMany.statusCode).toBe(400);
    expect((await api.call({ method: "GET", url: "/v1/availability?channel=web", as: "reader" })).statusCode).toBe(400);
  });
});

describe("GET /v1/stock/:sku", () => {
  it("answers every location and bucket; a channel token sees its channel's locations only", async () => {
    const r = await api.call({ method: "GET", url: "/v1/stock/AV-1", as: "reader" });
    expect(r.statusCode).toBe(200);
    expect(r.json()).toMatchObject({
      sku: "AV-1",
      seq: 3,
      locations: [
        { location: "DC1", onHand: 10, reserved: 0, inTransit: 0, damaged: 0, available: 10 },
        { location: "S01", onHand: 5, reserved: 1, available: 3, safetyStock: 1, reorderPoint: 2 },
      ],
    });
    const store = await api.call({ method: "GET", url: "/v1/stock/AV-1", as: "storeReader" });
    expect(store.json().locations.map((l: { location: string }) => l.location)).toEqual(["S01"]);
    expect((await api.call({ method: "GET", url: "/v1/stock/NOPE", as: "reader" })).statusCode).toBe(404);
  });
});

describe("GET /v1/availability/stream (SSE)", () => {
  it("delivers every change of the channel in order and resumes after a reconnect without gaps", async () => {
    const controller = new AbortController();
    const res = await fetch(`${base}/v1/availability/stream?channel=web&skus=SSE-1,SSE-2`, { headers: auth("webReader"), signal: controller.signal });
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toMatch(/text\/event-stream/);
    const firstRead = readEvents(res, 5);
    await new Promise((r) => setTimeout(r, 200)); // the consumer starts at "now"
    for (let i = 1; i <= 5; i++)
      await apply([cmd("receive", i % 2 ? "SSE-1" : "SSE-2", "DC1", { qty: i }), cmd("receive", "OTHER-SKU", "DC1", { qty: 1 })]);
    const first = await firstRead;
    controller.abort();
    expect(first.map((e) => e.event)).toEqual(Array(5).fill("availability"));
    const views = first.map((e) => JSON.parse(e.data) as { sku: string; onHand: number });
    expect(views.map((v) => [v.sku, v.onHand])).toEqual([
      ["SSE-1", 1],
      ["SSE-2", 2],
      ["SSE-1", 4],
      ["SSE-2", 6],
      ["SSE-1", 9],
    ]);
    const ids = first.map((e) => Number(e.id));
    expect([...ids].sort((a, b) => a - b)).toEqual(ids);

    // Changes while disconnected are delivered on resume, after the last id seen, in order.
    for (let i = 6; i <= 8; i++) await apply([cmd("receive", "SSE-2", "DC1", { qty: 1 })]);
    const resumed = await fetch(`${base}/v1/availability/stream?channel=web&skus=SSE-1,SSE-2`, {
      headers: { ...auth("webReader"), "last-event-id": String(ids.at(-1)) },
    });
    const after = await readEvents(resumed, 3);
    expect(after.map((e) => (JSON.parse(e.data) as { onHand: number }).onHand)).toEqual([7, 8, 9]);
    expect(Number(after[0]!.id)).toBeGreaterThan(ids.at(-1)!);
  });

  it("ends a stream whose consumer skipped deliveries (lost in transit), so the client resumes after its last event without a gap", async () => {
    const res = await fetch(`${base}/v1/availability/stream?channel=web&skus=SSE-GAP`, { headers: auth("webReader") });
    const reading = readEvents(res, 40, 30_000); // returns early when the server ends the stream
    await new Promise((r) => setTimeout(r, 200));
    const { jsm } = api.h.nats;
    const stream = api.h.topology.availabilityStream;
    let name = "";
    for await (const info of jsm.consumers.list(stream))
      if (info.config.filter_subject === api.h.topology.availabilitySubjects("web")) name = info.name;
    // Another client pulls from the stream's consumer: to the server those are delivered, exactly
    // like messages lost with a dropped connection.
    const until = Date.now() + 20_000;
    const thief = stealDeliveries(api.h.nats, stream, name, { max: 3, batch: 1, more: () => Date.now() < until });
    for (let i = 1; i <= 40; i++) await apply([cmd("receive", "SSE-GAP", "DC1", { qty: 1 })]);
    const stolen = await thief;
    const first = await reading;
    expect(stolen).toBeGreaterThan(0);
    const onHand = (e: { data: string }) => (JSON.parse(e.data) as { onHand: number }).onHand;
    expect(first.length, "the stream ended at the gap").toBeLessThan(40);
    expect(first.map(onHand)).toEqual(first.map((_, i) => i + 1));
    const resumed = await fetch(`${base}/v1/availability/stream?channel=web&skus=SSE-GAP`, {
      headers: { ...auth("webReader"), "last-event-id": String(first.at(-1)?.id ?? 0) },
    });
    const rest = await readEvents(resumed, 40 - first.length);
    expect(rest.map(onHand)).toEqual(rest.map((_, i) => first.length + i + 1));
  });

  it("answers 401/403/404 before streaming", async () => {
    expect((await fetch(`${base}/v1/availability/stream?channel=web`)).status).toBe(401);
    expect((await fetch(`${base}/v1/availability/stream?channel=web`, { headers: auth("storeReader") })).status).toBe(403);
    expect((await fetch(`${base}/v1/availability/stream?channel=moon`, { headers: auth("reader") })).status).toBe(404);
    expect((await fetch(`${base}/v1/availability/stream?channel=web`, { headers: { ...auth("reader"), "last-event-id": "x" } })).status).toBe(400);
  });
});
