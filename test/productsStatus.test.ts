import type { FastifyInstance } from "fastify";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildApp } from "../src/http/server.ts";
import type { TallyConfig } from "../src/platform/configFile.ts";
import { createLogger } from "../src/platform/log.ts";
import { TOKENS, auth } from "./apiSupport.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { demoSources, type DemoSources } from "./support/cdc.ts";
import { eventually, harness, readStream, startInProcess, type Harness } from "./support/tally.ts";

/**
 * Availability and the catalog agree, on the real pipeline: the demo ERP's item master changes an
 * item's status by CDC, and every place availability is served follows without any stock moving.
 * The demo config, except that store S01's POS keeps selling a discontinued item's remaining stock.
 */
let ctx: TestContext;
let h: Harness;
let demo: DemoSources;
let tally: Awaited<ReturnType<typeof startInProcess>>;
let app: FastifyInstance;

interface View {
  channel: string;
  sku: string;
  available: number;
  onHand: number;
  status: string;
  seq: number;
  version: number;
  reason?: string;
  stock?: { available: number; status: string };
  components?: Array<{ sku: string; qty: number; available?: number }>;
}

beforeAll(async () => {
  ctx = await testContext();
  h = await harness(ctx);
  demo = await demoSources(ctx);
  const config: TallyConfig = {
    ...demo.config,
    channels: { ...demo.config.channels, store_s01: { ...demo.config.channels.store_s01!, sellsDiscontinued: true } },
  };
  tally = await startInProcess(ctx, ["worker", "relay", "cdc"], {}, config);
  app = await buildApp({
    settings: h.settings,
    config,
    topology: h.topology,
    sql: h.sql,
    nats: h.nats,
    log: createLogger("test-api", process.env.TALLY_LOG_LEVEL ?? "warn"),
    tokens: TOKENS,
    worker: null,
  });
});
afterAll(async () => {
  await app?.close();
  await tally?.close();
  await demo?.close();
  await h?.close();
});

const kv = async (channel: string, sku: string): Promise<View | null> => {
  const e = await h.nats.availability.get(h.topology.availabilityKey(channel, sku));
  return e && e.operation === "PUT" && e.length > 0 ? e.json<View>() : null;
};
const api = async (sku: string, channel: string): Promise<View> => {
  const r = await app.inject({ method: "GET", url: `/v1/availability/${sku}?channel=${channel}`, headers: auth("reader") });
  expect(r.statusCode, r.body).toBe(200);
  return r.json<View>();
};
/** The last message on the channel's availability subject of the SKU (what SSE and webhooks forward). */
const lastMessage = async (channel: string, sku: string): Promise<View> => {
  const all = await readStream(h, h.topology.availabilityStream, h.topology.availabilitySubject(channel, sku));
  return all[all.length - 1]!.data as View;
};
const product = async (sku: string, channel: string) => {
  const r = await app.inject({ method: "GET", url: `/v1/products/${sku}?channel=${channel}`, headers: auth("reader") });
  expect(r.statusCode, r.body).toBe(200);
  return r.json<Record<string, unknown> & { availability: View; catalogVersion: number }>();
};
const setStatus = (itemNo: string, status: string) => demo.erp`update items set status = ${status} where item_no = ${itemNo}`;

describe("a discontinued or blocked item", () => {
  it("shows availability 0 on the channels configured so, in KV, subjects and the API, for its bundles too, and comes back when active", async () => {
    // SKU-0003 (item 100003) is in the picnic kit; the web sells from DC1 and S01, store_s01 from S01.
    await eventually("SKU-0003 and the picnic kit published", async () => {
      const [web, store, kit] = await Promise.all([kv("web", "SKU-0003"), kv("store_s01", "SKU-0003"), kv("web", "SKU-PICNIC")]);
      return (web?.available ?? 0) > 0 && (store?.available ?? 0) > 0 && (kit?.available ?? 0) > 0;
    });
    const webBefore = (await kv("web", "SKU-0003"))!;
    const storeBefore = (await kv("store_s01", "SKU-0003"))!;
    expect(webBefore.reason).toBeUndefined();

    // Discontinued in the ERP: no stock moves, yet the web (which does not sell remaining stock) shows 0 and says why.
    await setStatus("100003", "discontinued");
    await eventually("the web's SKU-0003 withheld", async () => (await kv("web", "SKU-0003"))?.reason === "discontinued");
    const web = (await kv("web", "SKU-0003"))!;
    expect(web).toMatchObject({
      available: 0,
      status: "out",
      reason: "discontinued",
      stock: { available: webBefore.available, status: webBefore.status },
      // Republished, not a stock change: the same ledger sequence and version.
      seq: webBefore.seq,
      version: webBefore.version,
      onHand: webBefore.onHand,
    });
    expect(await lastMessage("web", "SKU-0003")).toMatchObject({ available: 0, reason: "discontinued" });
    expect(await api("SKU-0003", "web")).toMatchObject({ available: 0, status: "out", reason: "discontinued" });
    // One call answers both, and they agree.
    expect(await product("SKU-0003", "web")).toMatchObject({
      sku: "SKU-0003",
      status: "discontinued",
      availability: { available: 0, reason: "discontinued", stock: { available: webBefore.available } },
    });
    expect(await product("SKU-0003", "store_s01")).toMatchObject({ status: "discontinued", availability: { available: storeBefore.available } });
    // The bundle with it goes to 0 on the web.
    await eventually("the web's picnic kit at 0", async () => (await kv("web", "SKU-PICNIC"))?.available === 0);
    expect(await api("SKU-PICNIC", "web")).toMatchObject({ available: 0, components: [{ sku: "SKU-0001" }, { sku: "SKU-0003", available: 0 }] });
    // Store S01 keeps selling its remaining stock.
    expect(await kv("store_s01", "SKU-0003")).toMatchObject({ available: storeBefore.available, seq: storeBefore.seq });
    expect((await kv("store_s01", "SKU-0003"))!.reason).toBeUndefined();

    // Stock that moves while discontinued is withheld too (the worker's new figure passes the same rule).
    await demo.erp`insert into goods_receipts (item_no, location, qty, uom) values ('100003', 'S01', 5, 'EA')`;
    await eventually("the receipt applied", async () => (await kv("store_s01", "SKU-0003"))?.available === storeBefore.available + 5);
    await eventually("the web's stock figure moved", async () => (await kv("web", "SKU-0003"))?.stock?.available === webBefore.available + 5);
    expect(await kv("web", "SKU-0003")).toMatchObject({ available: 0, reason: "discontinued" });

    // Blocked: 0 everywhere, the store too.
    await setStatus("100003", "blocked");
    await eventually("the store's SKU-0003 blocked", async () => (await kv("store_s01", "SKU-0003"))?.reason === "blocked");
    expect(await kv("store_s01", "SKU-0003")).toMatchObject({ available: 0, status: "out", stock: { available: storeBefore.available + 5 } });
    expect(await lastMessage("store_s01", "SKU-0003")).toMatchObject({ available: 0, reason: "blocked" });
    expect(await api("SKU-0003", "web")).toMatchObject({ available: 0, reason: "blocked" });
    expect(await api("SKU-0003", "store_s01")).toMatchObject({ available: 0, reason: "blocked" });

    // Active again: every channel shows what the stock allows, and the kit comes back.
    await setStatus("100003", "active");
    await eventually("SKU-0003 sold again", async () => {
      const [w, s] = await Promise.all([kv("web", "SKU-0003"), kv("store_s01", "SKU-0003")]);
      return w?.reason === undefined && s?.reason === undefined;
    });
    expect(await kv("web", "SKU-0003")).toMatchObject({ available: webBefore.available + 5 });
    expect((await kv("web", "SKU-0003"))!.stock).toBeUndefined();
    expect(await kv("store_s01", "SKU-0003")).toMatchObject({ available: storeBefore.available + 5 });
    expect(await lastMessage("web", "SKU-0003")).toMatchObject({ available: webBefore.available + 5 });
    await eventually("the web's picnic kit back", async () => ((await kv("web", "SKU-PICNIC"))?.available ?? 0) > 0);
    expect((await api("SKU-0003", "web")).reason).toBeUndefined();
  });
});

describe("GET /v1/products/:sku", () => {
  it("answers an item's catalog and availability in one call, a bundle with its components; 404 for an unknown SKU", async () => {
    await eventually("SKU-0001 in the web's catalog with a price", async () => {
      const [row] = await h.sql<[{ payload: { price: unknown } }?]>`
        select payload from catalog_projections where channel = 'web' and sku = 'SKU-0001'`;
      return row?.payload.price != null && (await kv("web", "SKU-0001")) !== null;
    });
    const [catalog] = await h.sql<
      [{ payload: Record<string, unknown> }]
    >`select payload from catalog_projections where channel = 'web' and sku = 'SKU-0001'`;
    const p = await product("SKU-0001", "web");
    expect(p).toMatchObject({
      channel: "web",
      sku: "SKU-0001",
      name: catalog.payload.name,
      status: "active",
      unit: catalog.payload.unit,
      price: catalog.payload.price,
      catalogVersion: catalog.payload.catalogVersion,
    });
    expect(p.catalogVersion).toBeGreaterThan(0);
    expect(p.availability).toEqual(await api("SKU-0001", "web"));

    await eventually("the picnic kit derived", async () => (await kv("web", "SKU-PICNIC")) !== null);
    const kit = await product("SKU-PICNIC", "web");
    expect(kit.availability).toMatchObject({
      sku: "SKU-PICNIC",
      components: [
        { sku: "SKU-0001", qty: 2 },
        { sku: "SKU-0003", qty: 1 },
      ],
    });

    const missing = await app.inject({ method: "GET", url: "/v1/products/NO-SUCH-SKU?channel=web", headers: auth("reader") });
    expect(missing.statusCode).toBe(404);
    expect(missing.json()).toMatchObject({ detail: expect.stringContaining("params.sku") });
  });
});
