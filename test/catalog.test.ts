import type { FastifyInstance } from "fastify";
import { Kvm, type KV } from "@nats-io/kv";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Crosswalk, findSource } from "../cdc/index.ts";
import { listDeadLetters, replayDeadLetter } from "../src/operations/index.ts";
import { deadLetter, publishDeadLetter, topology } from "../src/wire/index.ts";
import { recordCatalogVersion, resolveCatalogFacts } from "../cdc/catalog.ts";
import { parseLsn } from "../cdc/lsn.ts";
import { erpCatalogItem, erpItemPrices } from "../cdc/demo/mappings.ts";
import { RowView, UnknownItem, type Change, type MappingResult } from "../src/contract/mapping.ts";
import { Schema } from "effect";
import { CatalogValue } from "../src/contract/natsPayloads.ts";
import { buildApp } from "../src/http/server.ts";
import { connectPostgres, type Sql } from "../src/platform/db.ts";
import { createLogger } from "../src/platform/log.ts";
import { TOKENS, auth } from "./apiSupport.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { demoSources, type DemoSources } from "./support/cdc.ts";
import { eventually, harness, readStream, startInProcess, type Harness } from "./support/tally.ts";

let ctx: TestContext;
let h: Harness;
let demo: DemoSources;
let tally: Awaited<ReturnType<typeof startInProcess>> | null = null;
let app: FastifyInstance;
let apiSql: Sql;

interface CatalogItem {
  channel: string;
  sku: string;
  name: string;
  status: string;
  unit: string;
  price: { amount: number; currency: string; priceList: string } | null;
  validUntil: string | null;
  catalogVersion: number;
}

const startCdc = async () => {
  tally = await startInProcess(ctx, ["cdc"], {}, demo.config);
  await eventually("the ERP streaming", async () => tally!.readers.find((r) => r.name === "erp")?.streaming === true);
};

beforeAll(async () => {
  ctx = await testContext();
  h = await harness(ctx);
  demo = await demoSources(ctx);
  await startCdc();
  apiSql = connectPostgres(ctx.databaseUrl, { max: 4, application: "test-catalog-api" });
  app = await buildApp({
    settings: h.settings,
    config: demo.config,
    topology: h.topology,
    sql: apiSql,
    nats: h.nats,
    log: createLogger("test-api", process.env.TALLY_LOG_LEVEL ?? "warn"),
    tokens: TOKENS,
    options: { background: false },
  });
});
afterAll(async () => {
  await app?.close();
  await tally?.close();
  await apiSql?.end({ timeout: 5 });
  await demo?.close();
  await h?.close();
});

const get = async (sku: string, channel: string): Promise<{ status: number; body: CatalogItem & Record<string, unknown> }> => {
  const res = await app.inject({ method: "GET", url: `/v1/catalog/${sku}?channel=${channel}`, headers: auth("reader") });
  return { status: res.statusCode, body: res.json() };
};
const item = async (sku: string, channel: string): Promise<CatalogItem> => {
  const res = await get(sku, channel);
  expect(res.status, JSON.stringify(res.body)).toBe(200);
  return res.body;
};
const head = async () => Number((await h.sql<[{ v: string }]>`select version::text as v from catalog_head`)[0].v);
let kv: KV | null = null;
const kvValue = async (channel: string, sku: string): Promise<CatalogItem | null> => {
  kv ??= await new Kvm(h.nats.js).open(h.topology.catalogBucket);
  const e = await kv.get(h.topology.catalogKey(channel, sku)).catch(() => null);
  return e && e.operation === "PUT" && e.length > 0 ? e.json<CatalogItem>() : null;
};

describe("the catalog from the ERP, by CDC, out to every channel", () => {
  it("opens with the item master and the seeded prices (the snapshot), in integer minor units", async () => {
    await eventually("the snapshot's catalog", async () => (await get("SKU-BANANAS", "web")).status === 200);
    const water = await item("SKU-0001", "web");
    expect(water).toMatchObject({
      sku: "SKU-0001",
      name: "Sparkling water 0.5 l",
      status: "active",
      unit: "EA",
      price: { amount: 99, currency: "EUR", priceList: "WEB" },
      validUntil: null,
    });
    expect(water.catalogVersion).toBeGreaterThanOrEqual(1);
    // Loose bananas are counted in grams but priced per kg.
    expect(await item("SKU-BANANAS", "store_s01")).toMatchObject({ unit: "kg", price: { amount: 199, currency: "EUR", priceList: "S01" } });
    // A channel without a price list has no catalog; an unknown SKU is a 404 naming the field.
    const missing = await get("SKU-NOPE", "web");
    expect(missing.status).toBe(404);
    expect(missing.body).toMatchObject({ code: "not_in_catalog", detail: expect.stringContaining("params.sku") });
  });

  it("a price change in the ERP reaches the API, the KV bucket and the subject with a new catalog version", async () => {
    const before = await item("SKU-0001", "web");
    await demo.erp`update item_prices set amount = 1.49 where item_no = '100001' and price_list = 'WEB'`;
    await eventually("the new price in the API", async () => (await item("SKU-0001", "web")).price?.amount === 149);
    const after = await item("SKU-0001", "web");
    expect(after.catalogVersion).toBeGreaterThan(before.catalogVersion);
    // The store keeps its own list's price, unchanged.
    expect((await item("SKU-0001", "store_s01")).price?.amount).toBe(99);
    await eventually("the KV value", async () => (await kvValue("web", "SKU-0001"))?.catalogVersion === after.catalogVersion);
    expect((await kvValue("web", "SKU-0001"))?.price).toEqual({ amount: 149, currency: "EUR", priceList: "WEB" });
    const messages = await readStream(h, h.topology.catalogStream, h.topology.catalogSubject("web", "SKU-0001"));
    expect(messages.map((m) => (m.data as CatalogItem).catalogVersion)).toContain(after.catalogVersion);
    // What travels on NATS is what schemas/nats/catalog.json (CatalogValue) says, no field more.
    const decode = Schema.decodeUnknownSync(CatalogValue, { onExcessProperty: "error" });
    for (const m of messages) expect(() => decode(m.data)).not.toThrow();
    expect(() => decode(JSON.parse(JSON.stringify(after)))).not.toThrow();
  });

  it("one ERP transaction changing several prices is one catalog version, and every channel ends on it", async () => {
    const start = await head();
    await demo.erp.begin(async (tx) => {
      await tx`update item_prices set amount = amount + 0.10 where item_no in ('100002', '100003')`;
    });
    const skus = ["SKU-0002", "SKU-0003"];
    const channels = ["web", "store_s01", "store_s02"];
    await eventually("every channel's new prices", async () => {
      for (const sku of skus) for (const channel of channels) if ((await item(sku, channel)).catalogVersion <= start) return false;
      return true;
    });
    const versions = new Set<number>();
    for (const sku of skus) for (const channel of channels) versions.add((await item(sku, channel)).catalogVersion);
    expect([...versions]).toEqual([start + 1]);
    expect(await head()).toBe(start + 1);
    expect((await item("SKU-0002", "store_s02")).price?.amount).toBe(159);
    await eventually("the KV of every channel on the same version", async () => {
      for (const channel of channels) if ((await kvValue(channel, "SKU-0003"))?.catalogVersion !== start + 1) return false;
      return true;
    });
  });

  it("a price change whose catalog version cannot be recorded yet holds back neither the ERP transactions after it nor is confirmed past", async () => {
    const erp = () => tally!.readers.find((r) => r.name === "erp")!;
    const start = await head();
    // The catalog head locked in the ledger: the price change's version waits for it.
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    let locked!: () => void;
    const isLocked = new Promise<void>((r) => (locked = r));
    const locker = connectPostgres(ctx.databaseUrl, { max: 1, application: "test-catalog-lock" });
    const holding = locker.begin(async (tx) => {
      await tx`select version from catalog_head for update`;
      locked();
      await released;
    });
    try {
      await isLocked;
      await demo.erp`update item_prices set amount = amount + 0.01 where item_no = '100012' and price_list = 'WEB'`;
      const [{ afterPrice }] = await demo.erp<[{ afterPrice: string }]>`select pg_current_wal_lsn()::text as "afterPrice"`;
      const published = erp().metrics.commands;
      await demo.erp`insert into goods_receipts (item_no, location, qty, uom) values ('100012', 'DC1', 1, 'EA')`;
      const [{ afterReceipt }] = await demo.erp<[{ afterReceipt: string }]>`select pg_current_wal_lsn()::text as "afterReceipt"`;
      // The receipt after it is captured and published while the version waits …
      await eventually("the receipt published behind the waiting price change", async () => erp().metrics.commands > published);
      // … but the slot is not confirmed past the price change: a crash now re-sends it.
      expect(parseLsn(erp().metrics.confirmedLsn)).toBeLessThan(parseLsn(afterPrice));
      expect(await head()).toBe(start);
      release();
      await holding;
      await eventually("the version recorded and the slot confirmed past the receipt", async () => {
        return (await head()) === start + 1 && parseLsn(erp().metrics.confirmedLsn) >= parseLsn(afterReceipt);
      });
    } finally {
      release();
      await holding.catch(() => {});
      await locker.end({ timeout: 5 });
    }
  });

  it("a discontinued item shows as discontinued in every channel", async () => {
    await demo.erp`update items set status = 'discontinued' where item_no = '100004'`;
    await eventually("the status", async () => (await item("SKU-0004", "web")).status === "discontinued");
    expect((await item("SKU-0004", "store_s01")).status).toBe("discontinued");
    await eventually("the KV status", async () => (await kvValue("store_s01", "SKU-0004"))?.status === "discontinued");
  });

  it("a renamed SKU keeps its prices; the old SKU leaves the catalog (a tombstone in the feed, its KV key deleted)", async () => {
    const before = await item("SKU-0007", "web");
    await eventually("the old KV value", async () => (await kvValue("web", "SKU-0007")) !== null);
    await demo.erp`update items set sku = 'SKU-0007B' where item_no = '100007'`;
    await eventually("the new SKU", async () => (await get("SKU-0007B", "web")).status === 200);
    expect(await item("SKU-0007B", "web")).toMatchObject({ name: before.name, price: before.price });
    expect((await get("SKU-0007", "web")).status).toBe(404);
    const feed = await app.inject({ method: "GET", url: `/v1/catalog?channel=web&sinceVersion=${before.catalogVersion}`, headers: auth("reader") });
    expect(feed.json<{ items: Array<CatalogItem & { removed?: boolean }> }>().items).toContainEqual(
      expect.objectContaining({ sku: "SKU-0007", removed: true }),
    );
    await eventually("the old KV key deleted", async () => (await kvValue("web", "SKU-0007")) === null);
  });

  it("a price scheduled for later appears at its time and not before, across a restart, in every channel at one version", async () => {
    const [{ from }] = await demo.erp<[{ from: Date }]>`select now() + interval '6 seconds' as from`;
    await demo.erp`
      insert into item_prices (item_no, price_list, amount, valid_from, valid_to)
      values ('100005', 'WEB', 0.50, ${from}, ${from}::timestamptz + interval '1 hour'),
             ('100005', 'S01', 0.50, ${from}, ${from}::timestamptz + interval '1 hour')`;
    await eventually(
      "the promotion scheduled",
      // Its start and its end, in each of the two lists.
      async () => (await h.sql`select 1 from catalog_due where sku = 'SKU-0005' and done_version is null`).length === 4,
    );
    const regular = await item("SKU-0005", "web");
    expect(regular.price?.amount).toBe(299);
    // The regular price is valid until the promotion takes over.
    expect(Date.parse(regular.validUntil!)).toBe(from.getTime());
    // The scheduler's role stops before the promotion is due, and starts again after.
    await tally!.close();
    tally = null;
    await new Promise((r) => setTimeout(r, Math.max(0, from.getTime() - Date.now()) + 500));
    expect((await item("SKU-0005", "web")).price?.amount).toBe(299);
    await startCdc();
    await eventually("the promotion", async () => (await item("SKU-0005", "web")).price?.amount === 50);
    const web = await item("SKU-0005", "web");
    const store = await item("SKU-0005", "store_s01");
    expect(store.price?.amount).toBe(50);
    expect(store.catalogVersion).toBe(web.catalogVersion);
    expect(Date.parse(web.validUntil!)).toBe(from.getTime() + 3600_000);
    const [v] = await h.sql<[{ source: string; created_at: Date }]>`
      select source, created_at from catalog_versions where version = ${web.catalogVersion}`;
    expect(v.source).toBe("schedule");
    expect(v.created_at.getTime()).toBeGreaterThanOrEqual(from.getTime());
    await eventually("the KV promotion", async () => (await kvValue("web", "SKU-0005"))?.price?.amount === 50);
    // A store without the promotion keeps the regular price.
    expect((await item("SKU-0005", "store_s02")).price?.amount).toBe(299);
  });

  it("serves a channel's changes after a version as a paged delta feed", async () => {
    const since = (await item("SKU-0001", "web")).catalogVersion - 1;
    const seen: Array<CatalogItem> = [];
    let cursor: string | null = null;
    let version = 0;
    do {
      const q: string = `/v1/catalog?channel=web&sinceVersion=${since}&limit=2${cursor ? `&cursor=${cursor}` : ""}`;
      const res = await app.inject({ method: "GET", url: q, headers: auth("webReader") });
      expect(res.statusCode).toBe(200);
      const page = res.json<{ items: Array<CatalogItem>; nextCursor: string | null; catalogVersion: number }>();
      expect(page.items.length).toBeLessThanOrEqual(2);
      seen.push(...page.items);
      cursor = page.nextCursor;
      version = page.catalogVersion;
    } while (cursor);
    expect(seen.map((s) => s.sku)).toEqual(expect.arrayContaining(["SKU-0001", "SKU-0002", "SKU-0003", "SKU-0004", "SKU-0005"]));
    expect(seen.every((s) => s.catalogVersion > since && s.channel === "web")).toBe(true);
    const versions = seen.map((s) => s.catalogVersion);
    expect(versions).toEqual([...versions].sort((a, b) => a - b));
    expect(version).toBe(await head());
    const bad = await app.inject({ method: "GET", url: "/v1/catalog?channel=web&cursor=bm9wZQ", headers: auth("webReader") });
    expect(bad.statusCode).toBe(400);
    expect(bad.json()).toMatchObject({ errors: [{ path: "querystring.cursor" }] });
    const other = await app.inject({ method: "GET", url: "/v1/catalog?channel=store_s01", headers: auth("webReader") });
    expect(other.statusCode).toBe(403);
  });
});

describe("catalog facts and versions", () => {
  it("names the catalog's bucket, keys and subjects as integrators read them (pinned)", () => {
    const t = topology("prod", 8);
    expect(t.catalogBucket).toBe("tally_prod_catalog");
    expect(t.catalogStream).toBe("TALLY_PROD_CATALOG");
    expect(t.catalogKey("web", "A.B")).toBe("web.A=2EB");
    expect(t.catalogSubject("store_s01", "SKU-1")).toBe("tally.prod.catalog.store_s01.SKU-1");
    expect(t.catalogSubjects()).toBe("tally.prod.catalog.>");
    expect(t.catalogSubjects("web")).toBe("tally.prod.catalog.web.*");
  });

  const change = (table: string, op: Change["op"], rows: { new?: Record<string, string | null>; old?: Record<string, string | null> }): Change => ({
    source: "erp",
    op,
    table: `public.${table}`,
    new: rows.new ? new RowView(`public.${table}`, "new", rows.new) : null,
    old: rows.old ? new RowView(`public.${table}`, "old", rows.old) : null,
    commitLsn: "0/1",
    index: 0,
    commitTime: "2026-11-30T10:00:00.000Z",
  });
  const price = { item_no: "100001", price_list: "WEB", amount: "1.25", valid_from: "2026-12-01 00:00:00+01", valid_to: null };

  it("maps a price whose start moved to the old one's removal and the new price; refuses a bad status naming the field", () => {
    const moved = erpItemPrices(
      change("item_prices", "update", { old: price, new: { ...price, valid_from: "2026-12-02 00:00:00+01" } }),
    ) as MappingResult;
    expect(moved.catalog).toEqual([
      { kind: "price_removed", item: { system: "erp_item", id: "100001" }, priceList: "WEB", validFrom: "2026-12-01T00:00:00+01:00" },
      {
        kind: "price",
        item: { system: "erp_item", id: "100001" },
        priceList: "WEB",
        validFrom: "2026-12-02T00:00:00+01:00",
        validTo: null,
        amount: "1.25",
      },
    ]);
    const row = { item_no: "1", sku: "SKU-X", description: "X", kind: "stock", base_uom: "EA", status: "retired" };
    expect(() => erpCatalogItem(new RowView("public.items", "new", row))).toThrow(/new\.status: expected active, discontinued, blocked/);
  });

  it("resolves a price's item through the crosswalk (an unknown one is an UnknownItem) and checks its window", async () => {
    const cw = await Crosswalk.load(h.sql);
    const fact = {
      kind: "price",
      item: { system: "erp_item", id: "100001" },
      priceList: "WEB",
      validFrom: "2026-12-01T00:00:00Z",
      validTo: null,
      amount: "1",
    } as const;
    expect(resolveCatalogFacts(cw, [fact])).toMatchObject([{ kind: "price", sku: "SKU-0001" }]);
    expect(() => resolveCatalogFacts(cw, [{ ...fact, item: { system: "erp_item", id: "nope" } }])).toThrow(UnknownItem);
    expect(() => resolveCatalogFacts(cw, [{ ...fact, validTo: "2026-11-01T00:00:00Z" }])).toThrow(/catalog\.validTo/);
    expect(() => resolveCatalogFacts(cw, [{ ...fact, amount: "1e3" }])).toThrow(/catalog\.amount/);
  });

  it("records a source transaction sent again (after a restart) as no new version", async () => {
    const facts = [{ kind: "item", sku: "SKU-0006", name: "Still water", status: "active" } as const];
    const first = await recordCatalogVersion(h.sql, { source: "erp", ref: "0/FFFFFF0", sourceAt: null, facts });
    expect(first).toBe(await head());
    expect(await recordCatalogVersion(h.sql, { source: "erp", ref: "0/FFFFFF0", sourceAt: null, facts })).toBeNull();
    expect(await head()).toBe(first);
    expect((await item("SKU-0006", "web")).name).toBe("Still water");
  });
});

describe("a dead-lettered catalog change", () => {
  it("is a catalog version of its own when `tally dlq replay` maps it again", async () => {
    const row = { item_no: "100010", price_list: "WEB", amount: "7.77", valid_from: "2026-06-01 00:00:00+00", valid_to: null };
    const change = {
      table: "public.item_prices",
      op: "insert",
      new: row,
      old: null,
      commitLsn: "0/3",
      index: 0,
      commitTime: new Date().toISOString(),
    };
    await publishDeadLetter(
      { js: h.nats.js, topology: h.topology },
      deadLetter("erp", "item.erp_item: unknown item", change, { source: "erp", lsn: "0/3", index: 0, table: "public.item_prices" }),
    );
    const [letter] = (await listDeadLetters(h.nats, h.topology, "erp")).filter((l) => l.context.lsn === "0/3");
    const before = await head();
    const deps = { sql: h.sql, nats: h.nats, topology: h.topology, sources: new Map([["erp", findSource(demo.config, "erp", ctx.env)]]) };
    expect(await replayDeadLetter(deps, letter!)).toMatchObject({ ok: true });
    expect(await head()).toBe(before + 1);
    const replayed = await item("SKU-0010", "web");
    expect(replayed).toMatchObject({ price: { amount: 777, currency: "EUR" }, catalogVersion: before + 1 });
  });
});
