import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import type { FastifyInstance } from "fastify";
import { Kvm, type KV } from "@nats-io/kv";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FEED_HEADER, SIGNATURE_HEADER, verifyWebhook, type CatalogWebhookBody } from "../src/channels/webhooks.ts";
import { buildApp } from "../src/http/server.ts";
import { connectPostgres, type Sql } from "../src/platform/db.ts";
import { createLogger } from "../src/platform/log.ts";
import type { TallyConfig } from "../src/platform/configFile.ts";
import { TOKENS, auth } from "./apiSupport.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { demoSources, type DemoSources } from "./support/cdc.ts";
import { readEvents } from "./support/sse.ts";
import { eventually, harness, startInProcess, type Harness } from "./support/tally.ts";

const SECRET = "catalog-webhook-secret-0001";

interface CatalogItem {
  channel: string;
  sku: string;
  price: { amount: number; currency: string; priceList: string } | null;
  catalogVersion: number;
  identifiers?: Array<{ system: string; id: string; uom?: string }>;
  components?: Array<{ sku: string; qty: number }>;
}

interface Versions {
  headVersion: number;
  channels: Array<{
    channel: string;
    ackedVersion: number;
    behindBy: number;
    behindSince: string | null;
    lagSeconds: number;
    toleranceSeconds: number;
  }>;
}

/** A webhook receiver keeping every catalog delivery with its raw body and signature. */
const deliveries: Array<{ body: CatalogWebhookBody; raw: string; signature: string; feed: string }> = [];
let receiver: Server;

let ctx: TestContext;
let h: Harness;
let demo: DemoSources;
let tally: Awaited<ReturnType<typeof startInProcess>>;
let app: FastifyInstance;
let apiSql: Sql;
let base: string;

beforeAll(async () => {
  receiver = createServer(async (req: IncomingMessage, res) => {
    let raw = "";
    for await (const chunk of req) raw += chunk;
    const feed = String(req.headers[FEED_HEADER]);
    if (feed === "catalog")
      deliveries.push({ body: JSON.parse(raw) as CatalogWebhookBody, raw, signature: String(req.headers[SIGNATURE_HEADER]), feed });
    res.end();
  });
  await new Promise<void>((resolve) => receiver.listen(0, "127.0.0.1", resolve));
  const url = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/hook`;
  process.env.TALLY_WEBHOOK_WEB_SECRET = SECRET;
  ctx = await testContext();
  h = await harness(ctx);
  demo = await demoSources(ctx);
  const channels = demo.config.channels;
  const config: TallyConfig = {
    ...demo.config,
    channels: {
      ...channels,
      web: {
        ...channels.web!,
        webhook: { url, batchSize: 100, lingerMs: 50, timeoutMs: 5000, maxAttempts: 10, backoffMs: 50, maxBackoffMs: 500, catalog: true },
      },
      // The lagging store: a tolerance of one second, so its lag soon exceeds it.
      store_s02: { ...channels.store_s02!, catalogLagToleranceSeconds: 1 },
    },
  };
  tally = await startInProcess(ctx, ["cdc", "relay"], {}, config);
  await eventually("the ERP streaming", async () => tally.readers.find((r) => r.name === "erp")?.streaming === true);
  apiSql = connectPostgres(ctx.databaseUrl, { max: 4, application: "test-catalog-out-api" });
  app = await buildApp({
    settings: h.settings,
    config,
    topology: h.topology,
    sql: apiSql,
    nats: h.nats,
    log: createLogger("test-api", process.env.TALLY_LOG_LEVEL ?? "warn"),
    tokens: TOKENS,
    // Background on: the API answers catalog acknowledgements on NATS.
    options: { background: true },
  });
  await app.listen({ port: 0, host: "127.0.0.1" });
  base = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
  await eventually("the snapshot's catalog", async () => (await get("SKU-0001", "web")).status === 200, 60_000);
}, 180_000);

afterAll(async () => {
  await app?.close();
  await tally?.close();
  await apiSql?.end({ timeout: 5 });
  await demo?.close();
  await h?.close();
  await new Promise((r) => receiver?.close(r));
  delete process.env.TALLY_WEBHOOK_WEB_SECRET;
});

const get = async (sku: string, channel: string) => {
  const res = await app.inject({ method: "GET", url: `/v1/catalog/${sku}?channel=${channel}`, headers: auth("reader") });
  return { status: res.statusCode, body: res.json() as CatalogItem };
};
const item = async (sku: string, channel: string): Promise<CatalogItem> => {
  const res = await get(sku, channel);
  expect(res.status, JSON.stringify(res.body)).toBe(200);
  return res.body;
};
const versions = async (as: "reader" | "webReader" = "reader"): Promise<Versions> => {
  const res = await app.inject({ method: "GET", url: "/v1/catalog/versions", headers: auth(as) });
  expect(res.statusCode, res.body).toBe(200);
  return res.json();
};
const ack = (channel: string, body: unknown, as: "reader" | "catalogAcker" | "webReader" | "storeReader" = "catalogAcker") =>
  app.inject({ method: "POST", url: `/v1/channels/${channel}/catalog-ack`, headers: auth(as), payload: body as object });
let kv: KV | null = null;
const kvValue = async (channel: string, sku: string): Promise<CatalogItem | null> => {
  kv ??= await new Kvm(h.nats.js).open(h.topology.catalogBucket);
  const e = await kv.get(h.topology.catalogKey(channel, sku)).catch(() => null);
  return e && e.operation === "PUT" && e.length > 0 ? e.json<CatalogItem>() : null;
};

describe("catalog delivery to the channels", () => {
  it("carries the item master's identifiers (the GTIN/EAN barcode) and a bundle's components in every projection", async () => {
    const water = await item("SKU-0001", "web");
    expect(water.identifiers).toContainEqual({ system: "barcode", id: "4000000000013" });
    expect(water.identifiers).toContainEqual({ system: "erp_item", id: "100001" });
    expect(water.components).toEqual([]);
    await eventually("the picnic kit in the catalog", async () => (await get("SKU-PICNIC", "store_s01")).status === 200);
    expect((await item("SKU-PICNIC", "store_s01")).components).toEqual([
      { sku: "SKU-0001", qty: 2 },
      { sku: "SKU-0003", qty: 1 },
    ]);
  });

  it("a price change in the demo ERP reaches the API, the KV bucket, the SSE stream and the signed webhook with a new catalogVersion", async () => {
    const before = await item("SKU-0002", "web");
    const res = await fetch(`${base}/v1/catalog/stream?channel=web`, { headers: auth("webReader") });
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toMatch(/text\/event-stream/);
    const reading = readEvents(res, 1, 60_000);
    await demo.erp`update item_prices set amount = 2.79 where item_no = '100002' and price_list = 'WEB'`;
    const [event] = await reading;
    expect(event!.event).toBe("catalog");
    expect(Number(event!.id)).toBeGreaterThan(0);
    const streamed = JSON.parse(event!.data) as CatalogItem;
    expect(streamed).toMatchObject({ channel: "web", sku: "SKU-0002", price: { amount: 279, currency: "EUR" } });
    expect(streamed.catalogVersion).toBeGreaterThan(before.catalogVersion);
    expect(await item("SKU-0002", "web")).toMatchObject({ catalogVersion: streamed.catalogVersion, price: { amount: 279 } });
    await eventually("the KV value", async () => (await kvValue("web", "SKU-0002"))?.catalogVersion === streamed.catalogVersion);
    // The webhook: the change arrives signed like availability batches, with its version.
    await eventually("the catalog webhook delivery", async () =>
      deliveries.some((d) => d.body.items.some((i) => i.sku === "SKU-0002" && i.catalogVersion === streamed.catalogVersion)),
    );
    const d = deliveries.find((x) => x.body.items.some((i) => i.sku === "SKU-0002" && i.catalogVersion === streamed.catalogVersion))!;
    expect(verifyWebhook(SECRET, d.signature, d.raw)).toBe(true);
    expect(d.body).toMatchObject({ type: "catalog", channel: "web" });
    expect(d.body.catalogVersion).toBeGreaterThanOrEqual(streamed.catalogVersion);
    expect(d.body.items.every((i) => i.channel === "web")).toBe(true);
    // Resuming with Last-Event-ID replays what came after that event (here: nothing before the next change).
    const resumed = await fetch(`${base}/v1/catalog/stream?channel=web`, {
      headers: { ...auth("webReader"), "last-event-id": String(Number(event!.id) - 1) },
    });
    const [again] = await readEvents(resumed, 1);
    expect(again).toMatchObject({ id: event!.id, event: "catalog" });
  });

  it("channels acknowledge the version they applied over HTTP and NATS and end on the same version; acks never go back", async () => {
    const { headVersion } = await versions();
    expect(headVersion).toBeGreaterThan(1);
    const web = await ack("web", { version: headVersion }, "webReader");
    expect(web.statusCode, web.body).toBe(200);
    expect(web.json()).toMatchObject({ channel: "web", ackedVersion: headVersion, headVersion });
    const reply = await h.nats.nc.request(h.topology.catalogAckSubject("store_s01"), JSON.stringify({ version: headVersion }), { timeout: 10_000 });
    expect(reply.json()).toMatchObject({ channel: "store_s01", ackedVersion: headVersion });
    // A late, lower acknowledgement changes nothing.
    expect((await ack("web", { version: 1 })).json()).toMatchObject({ ackedVersion: headVersion });
    const v = await versions();
    const byChannel = new Map(v.channels.map((c) => [c.channel, c]));
    for (const channel of ["web", "store_s01"])
      expect(byChannel.get(channel)).toMatchObject({ ackedVersion: headVersion, behindBy: 0, behindSince: null, lagSeconds: 0 });
    // A channel token sees its own channel only.
    expect((await versions("webReader")).channels.map((c) => c.channel)).toEqual(["web"]);
  });

  it("refuses a bad acknowledgement with a 400 naming the field, a channel token acking for another channel, and a reader without catalog:ack", async () => {
    const { headVersion } = await versions();
    const above = await ack("web", { version: headVersion + 1 });
    expect(above.statusCode).toBe(400);
    expect(above.json()).toMatchObject({ code: "invalid_request", detail: expect.stringContaining("body.version") });
    for (const body of [{ version: 1.5 }, { version: -1 }, { version: "3" }, {}]) {
      const r = await ack("web", body);
      expect(r.statusCode, JSON.stringify(body)).toBe(400);
      expect(r.json().detail, JSON.stringify(body)).toContain("body.version");
    }
    expect((await ack("store_s01", { version: 1 }, "webReader")).statusCode).toBe(403);
    // A reader without a channel reads every channel's catalog, but acknowledging for any channel needs catalog:ack.
    const reader = await ack("store_s02", { version: headVersion }, "reader");
    expect(reader.statusCode).toBe(403);
    expect(reader.json()).toMatchObject({ code: "forbidden", detail: expect.stringContaining("catalog:ack") });
    expect((await versions()).channels.find((c) => c.channel === "store_s02")?.ackedVersion).toBe(0);
    expect((await ack("moon", { version: 1 })).statusCode).toBe(404);
    const bad = await h.nats.nc.request(h.topology.catalogAckSubject("web"), JSON.stringify({ version: headVersion + 1 }), { timeout: 10_000 });
    expect(bad.json()).toMatchObject({ error: "invalid_request", field: "version" });
    const unknown = await h.nats.nc.request(h.topology.catalogAckSubject("moon"), JSON.stringify({ version: 1 }), { timeout: 10_000 });
    expect(unknown.json()).toMatchObject({ error: "invalid_request", field: "channel" });
    expect((await versions()).channels.find((c) => c.channel === "web")?.ackedVersion).toBe(headVersion);
  });

  it("a channel that does not acknowledge shows behind in /v1/catalog/versions and raises tally_catalog_version_lag past its tolerance", async () => {
    // A change for every channel; web and store_s01 acknowledge it, store_s02 does not.
    const start = (await versions()).headVersion;
    await demo.erp`update item_prices set amount = amount + 0.01 where item_no = '100003'`;
    await eventually("the new version", async () => (await item("SKU-0003", "store_s02")).catalogVersion > start);
    const { headVersion } = await versions();
    expect((await ack("web", { version: headVersion })).statusCode).toBe(200);
    expect((await ack("store_s01", { version: headVersion })).statusCode).toBe(200);
    const v = await versions();
    const byChannel = new Map(v.channels.map((c) => [c.channel, c]));
    expect(byChannel.get("web")).toMatchObject({ ackedVersion: headVersion, behindBy: 0, lagSeconds: 0 });
    const lagging = byChannel.get("store_s02")!;
    expect(lagging.ackedVersion).toBe(0);
    expect(lagging.behindBy).toBeGreaterThanOrEqual(2);
    expect(lagging.behindSince).not.toBeNull();
    expect(lagging.toleranceSeconds).toBe(1);
    // The metric the alert rule compares with the channel's tolerance (its promtool test covers the rule).
    const sample = (text: string, name: string, channel: string) =>
      Number(new RegExp(`^${name}\\{channel="${channel}"\\} ([0-9.e+-]+)$`, "m").exec(text)?.[1] ?? Number.NaN);
    await eventually("store_s02's lag past its tolerance", async () => {
      const text = await tally.metrics.registry.metrics();
      return sample(text, "tally_catalog_version_lag", "store_s02") > sample(text, "tally_catalog_version_lag_tolerance_seconds", "store_s02");
    });
    const text = await tally.metrics.registry.metrics();
    expect(sample(text, "tally_catalog_version_lag", "web")).toBe(0);
    expect(sample(text, "tally_catalog_versions_behind", "web")).toBe(0);
    expect(sample(text, "tally_catalog_versions_behind", "store_s02")).toBeGreaterThanOrEqual(2);
    expect(text).toMatch(new RegExp(`^tally_catalog_head_version ${headVersion}$`, "m"));
    // Once it acknowledges, it is current again.
    expect((await ack("store_s02", { version: headVersion })).statusCode).toBe(200);
    expect((await versions()).channels.find((c) => c.channel === "store_s02")).toMatchObject({ behindBy: 0, lagSeconds: 0 });
  });
});
