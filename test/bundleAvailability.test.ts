import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Command } from "../src/contract/command.ts";
import { publishCommands } from "../src/wire/publisher.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { commandMaker, eventually, harness, publishAndSettle, readStream, settle, startInProcess } from "./support/tally.ts";
import { decodeTallyConfig } from "../src/platform/configFile.ts";
import { readEvents } from "./support/sse.ts";
import { TOKENS, auth, balance, defineItems, startApi, type ApiFixture } from "./apiSupport.ts";
import { demoSources } from "./support/cdc.ts";
import { buildApp } from "../src/http/server.ts";
import { createLogger } from "../src/platform/log.ts";

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

const cmd = commandMaker("b");
const at = (location: string) => ({ location });
const apply = (commands: ReadonlyArray<Command>) => publishAndSettle(api.h, commands);

interface View {
  sku: string;
  channel: string;
  available: number;
  onHand: number;
  reserved: number;
  status: string;
  seq: number;
  components?: Array<{ sku: string; qty: number; available?: number }>;
}

/** A bundle defined in the crosswalk, as the ERP's item master does. */
const defineBundle = (sku: string, components: Array<{ sku: string; qty: number }>) =>
  defineItems(api.sql, [{ sku, kind: "bundle", baseUnit: "EA", components, identifiers: [] }]);

const kvValue = async (channel: string, sku: string): Promise<View | null> => {
  const e = await api.h.nats.availability.get(api.h.topology.availabilityKey(channel, sku));
  return e && e.operation === "PUT" && e.length > 0 ? e.json<View>() : null;
};
const published = async (channel: string, sku: string): Promise<Array<View>> =>
  (await readStream(api.h, api.h.topology.availabilityStream, api.h.topology.availabilitySubject(channel, sku))).map((m) => m.data as View);
const getAvailability = async (sku: string, channel = "web"): Promise<View> => {
  const r = await api.call({ method: "GET", url: `/v1/availability/${sku}?channel=${channel}`, as: "reader" });
  expect(r.statusCode).toBe(200);
  return r.json<View>();
};

describe("a bundle's availability", () => {
  it("follows each component's changes in the API, the KV bucket and the SSE stream, with its components listed", async () => {
    await defineBundle("B-KIT", [
      { sku: "B-P1", qty: 2 },
      { sku: "B-P2", qty: 1 },
    ]);
    // The definition alone publishes the bundle in every channel: nothing of it can be sold yet.
    await eventually(
      "the bundle's first figure",
      async () => (await kvValue("store_s01", "B-KIT")) !== null && (await kvValue("web", "B-KIT")) !== null,
    );
    expect(await kvValue("web", "B-KIT")).toMatchObject({ sku: "B-KIT", available: 0, status: "out", seq: 1 });
    expect(await getAvailability("B-KIT")).toMatchObject({
      available: 0,
      components: [
        { sku: "B-P1", qty: 2, available: 0 },
        { sku: "B-P2", qty: 1, available: 0 },
      ],
    });

    const res = await fetch(`${base}/v1/availability/stream?channel=web&skus=B-KIT`, { headers: auth("webReader") });
    const events = readEvents(res, 3);
    await new Promise((r) => setTimeout(r, 200)); // the stream starts at "now"
    // web = DC1 + S01 less a buffer of 2 on each component. P1 alone: the bundle still has no P2, so nothing changes.
    await apply([cmd("receive", "B-P1", { qty: 10, ...at("DC1") })]);
    await apply([cmd("receive", "B-P2", { qty: 5, ...at("DC1") })]); // ⌊8 / 2⌋ = 4, ⌊3 / 1⌋ = 3 → 3
    await apply([cmd("sell", "B-P2", { qty: 1, ...at("DC1") })]); // P2: 2 → 2
    await apply([cmd("sell", "B-P1", { qty: 6, ...at("DC1") })]); // P1: 4 − 2 = 2, ⌊2 / 2⌋ = 1 → 1
    const seen = (await events).map((e) => JSON.parse(e.data) as View);
    expect(seen.map((v) => [v.sku, v.available])).toEqual([
      ["B-KIT", 3],
      ["B-KIT", 2],
      ["B-KIT", 1],
    ]);
    expect(seen.map((v) => v.seq)).toEqual([2, 3, 4]);

    expect(await kvValue("web", "B-KIT")).toMatchObject({
      available: 1,
      onHand: 2,
      reserved: 0,
      status: "in_stock",
      seq: 4,
      components: [
        { sku: "B-P1", qty: 2 },
        { sku: "B-P2", qty: 1 },
      ],
    });
    expect(await getAvailability("B-KIT")).toMatchObject({
      channel: "web",
      sku: "B-KIT",
      available: 1,
      status: "in_stock",
      components: [
        { sku: "B-P1", qty: 2, available: 2 },
        { sku: "B-P2", qty: 1, available: 2 },
      ],
    });
    // The store's channel has none of the components at S01: still nothing, never republished.
    expect(await published("store_s01", "B-KIT")).toEqual([expect.objectContaining({ available: 0, seq: 1 })]);

    // The list route and the per-location stock answer it too.
    const list = await api.call({ method: "GET", url: "/v1/availability?channel=web&skus=B-KIT,B-P1", as: "reader" });
    expect(list.json().items).toEqual([
      expect.objectContaining({
        sku: "B-KIT",
        available: 1,
        components: [expect.objectContaining({ available: 2 }), expect.objectContaining({ available: 2 })],
      }),
      expect.objectContaining({ sku: "B-P1", available: 2 }),
    ]);
    const stock = await api.call({ method: "GET", url: "/v1/stock/B-KIT", as: "reader" });
    expect(stock.statusCode).toBe(200);
    // At DC1 (no buffer): P1 4 → ⌊4 / 2⌋ = 2, P2 4 → 4.
    expect(stock.json()).toMatchObject({
      sku: "B-KIT",
      seq: 0,
      locations: [
        {
          location: "DC1",
          available: 2,
          onHand: 2,
          components: [
            { sku: "B-P1", qty: 2, available: 4 },
            { sku: "B-P2", qty: 1, available: 4 },
          ],
        },
      ],
    });
  });

  it("is 0 when one component is out", async () => {
    await apply([cmd("sell", "B-P2", { qty: 4, ...at("DC1") })]);
    expect(await getAvailability("B-KIT")).toMatchObject({
      available: 0,
      status: "out",
      components: [
        { sku: "B-P1", available: 2 },
        { sku: "B-P2", available: 0 },
      ],
    });
    expect(await kvValue("web", "B-KIT")).toMatchObject({ available: 0, onHand: 0, status: "out", seq: 5 });
  });

  it("publishes nothing for a change of an unrelated SKU, nor for a component change that leaves its figure as it was", async () => {
    const before = await published("web", "B-KIT");
    await apply([cmd("receive", "B-UNRELATED", { qty: 7, ...at("DC1") })]);
    // P2 is out: more of P1 changes P1, not the bundle.
    await apply([cmd("receive", "B-P1", { qty: 3, ...at("DC1") })]);
    expect((await kvValue("web", "B-P1"))?.available).toBe(5);
    expect(await published("web", "B-KIT")).toEqual(before);
    const [row] = await api.sql<Array<{ seq: number }>>`select seq::int as seq from bundle_availability where bundle = 'B-KIT' and channel = 'web'`;
    expect(row?.seq).toBe(5);
  });

  it("is published again when its definition changes in the item master", async () => {
    await apply([cmd("receive", "B-P2", { qty: 10, ...at("DC1") })]); // P1 5, P2 8 → min(⌊5 / 2⌋, 8) = 2
    await eventually("the bundle back in stock", async () => (await kvValue("web", "B-KIT"))?.available === 2);
    await defineBundle("B-KIT", [
      { sku: "B-P1", qty: 1 },
      { sku: "B-P2", qty: 4 },
    ]); // min(5, ⌊8 / 4⌋) = 2: same available, but the components changed
    await eventually("the new definition", async () => (await kvValue("web", "B-KIT"))?.components?.[1]?.qty === 4);
    expect(await getAvailability("B-KIT")).toMatchObject({
      available: 2,
      components: [
        { sku: "B-P1", qty: 1, available: 5 },
        { sku: "B-P2", qty: 4, available: 8 },
      ],
    });
  });

  it("is derived for a bundle written straight into the item master too, and withdrawn when it is deleted there; a SKU that is no bundle and has no ledger is 404", async () => {
    await api.sql`insert into items (sku, kind, base_unit, components, defined_by) values ('B-NEW', 'bundle', 'EA', '[{"sku":"B-P1","qty":1}]', 'test')`;
    await eventually("B-NEW derived", async () => (await kvValue("web", "B-NEW"))?.available === 5);
    expect((await api.call({ method: "GET", url: "/v1/availability/B-NONE?channel=web", as: "reader" })).statusCode).toBe(404);
    // No longer a bundle: its figures go, and the API no longer knows it.
    await api.sql`delete from items where sku = 'B-NEW'`;
    await eventually("B-NEW gone", async () => (await kvValue("web", "B-NEW")) === null && (await kvValue("store_s01", "B-NEW")) === null);
    expect((await api.call({ method: "GET", url: "/v1/availability/B-NEW?channel=web", as: "reader" })).statusCode).toBe(404);
    // Defined again: it goes on from its last sequence (a reader keeps the highest), whatever its figure.
    const [last] = await api.sql<[{ seq: number }]>`select seq::int as seq from bundle_availability where bundle = 'B-NEW' and channel = 'web'`;
    await defineBundle("B-NEW", [{ sku: "B-P1", qty: 1 }]);
    await eventually("B-NEW back", async () => (await kvValue("web", "B-NEW"))?.seq === last.seq + 1);
    expect(await kvValue("web", "B-NEW")).toMatchObject({ available: 5 });
  });

  it("is low when a component is low in the channel", async () => {
    await defineBundle("L-KIT", [{ sku: "L-P1", qty: 1 }]);
    // web: 10 − 2 = 8 available, at or below the reorder point 9: low.
    await apply([cmd("set_policy", "L-P1", { safetyStock: 0, reorderPoint: 9, ...at("DC1") }), cmd("receive", "L-P1", { qty: 10, ...at("DC1") })]);
    expect(await kvValue("web", "L-P1")).toMatchObject({ available: 8, status: "low" });
    expect(await kvValue("web", "L-KIT")).toMatchObject({ available: 8, status: "low" });
  });

  it("converges to the rule over the latest component values when its components change concurrently", async () => {
    // Two components on different partitions: their workers commit side by side.
    const pick = (prefix: string, other?: number) => {
      for (let i = 0; ; i++) if (api.h.topology.partitionOf(`${prefix}${i}`) !== other) return `${prefix}${i}`;
    };
    const p1 = pick("CV-A");
    const p2 = pick("CV-B", api.h.topology.partitionOf(p1));
    await defineBundle("CV-KIT", [
      { sku: p1, qty: 1 },
      { sku: p2, qty: 3 },
    ]);
    await eventually("the bundle's first figure", async () => (await kvValue("web", "CV-KIT")) !== null);
    // Each component changes step by step on its own, the two side by side: the relay derives the bundle
    // many times over, from whichever component's change it sees, while the other keeps changing.
    const steps = (sku: string, receive: number, sellEvery: number, sell: number) =>
      Array.from({ length: 30 }, (_, i) => [
        cmd("receive", sku, { qty: receive, ...at("DC1") }),
        ...(i % sellEvery === sellEvery - 1 ? [cmd("sell", sku, { qty: sell, ...at("DC1") })] : []),
      ]).flat();
    const a = steps(p1, 1, 3, 2); // 30 − 10 × 2 = 10 on hand
    const b = steps(p2, 3, 4, 5); // 90 − 7 × 5 = 55 on hand
    const drip = async (commands: ReadonlyArray<Command>) => {
      for (const c of commands) {
        await publishCommands(api.h.nats.js, api.h.topology, [c]);
        await new Promise((r) => setTimeout(r, Math.random() * 15));
      }
    };
    await Promise.all([drip(a), drip(b)]);
    await settle(
      api.h,
      [...a, ...b].map((c) => c.id),
    );
    // web less its buffer of 2: P1 10 − 2 = 8, P2 55 − 2 = 53 → min(⌊8 / 1⌋, ⌊53 / 3⌋) = 8.
    expect([(await kvValue("web", p1))!.available, (await kvValue("web", p2))!.available]).toEqual([8, 53]);
    expect(await kvValue("web", "CV-KIT")).toMatchObject({ available: 8 });
    const history = await published("web", "CV-KIT");
    expect(history.at(-1)).toMatchObject({ available: 8 });
    expect(history.length, "derived many times over, not once at the end").toBeGreaterThan(2);
    const seqs = history.map((v) => v.seq);
    expect(seqs).toEqual(seqs.map((_, i) => i + 1)); // every publication in order, none repeated
    expect(await getAvailability("CV-KIT")).toMatchObject({ available: 8 });
  });
});

describe("a bundle reserve", () => {
  let keys = 0;
  const reserve = (body: Record<string, unknown>) =>
    api.call({
      method: "POST",
      url: "/v1/reservations",
      as: "reserver",
      headers: { "content-type": "application/json", "idempotency-key": `bk${++keys}` },
      payload: JSON.stringify(body),
    });

  it("holds all components together or none: one component short refuses the whole and holds nothing", async () => {
    await defineBundle("R-KIT", [
      { sku: "R-P1", qty: 2 },
      { sku: "R-P2", qty: 1 },
    ]);
    await apply([cmd("receive", "R-P1", { qty: 10, ...at("DC1") }), cmd("receive", "R-P2", { qty: 1, ...at("DC1") })]);
    await eventually("the bundle's availability", async () => (await kvValue("store_s01", "R-KIT")) !== null);
    for (const [i, body] of [
      { sku: "R-KIT", qty: 2, location: "DC1" }, // P1 4 of 10 would do; P2 2 of 1 is short
      { sku: "R-KIT", qty: 2, channel: "web" },
    ].entries()) {
      const r = await reserve(body);
      expect(r.statusCode, `attempt ${i}`).toBe(409);
      expect(r.json()).toMatchObject({ code: "insufficient_stock" });
      const view = await api.call({ method: "GET", url: `/v1/reservations/${r.json().id}`, as: "reserver" });
      expect(view.json().status).toBe("rejected");
      expect(view.json().lines.map((l: { state: string }) => l.state)).not.toContain("held");
      await eventually("every component hold released", async () => {
        const [p1, p2] = await Promise.all([balance(api.sql, "R-P1", "DC1", "reserved"), balance(api.sql, "R-P2", "DC1", "reserved")]);
        const [{ open }] = await api.sql<
          [{ open: number }]
        >`select count(*)::int as open from holds where sku in ('R-P1', 'R-P2') and status = 'open'`;
        return p1 === 0 && p2 === 0 && open === 0;
      });
    }
    // What holds is one whole bundle: both components together.
    const ok = await reserve({ sku: "R-KIT", qty: 1, location: "DC1" });
    expect(ok.statusCode).toBe(201);
    expect(await balance(api.sql, "R-P1", "DC1", "reserved")).toBe(2);
    expect(await balance(api.sql, "R-P2", "DC1", "reserved")).toBe(1);
    await eventually("the bundle's availability after the hold", async () => (await kvValue("web", "R-KIT"))?.available === 0);
  });
});

describe("a bundle on a channel webhook", () => {
  it("is POSTed like any SKU when its figure changes", async () => {
    const got: Array<{ sku: string; available: number; components?: unknown }> = [];
    const server = createServer(async (req, res) => {
      let raw = "";
      for await (const chunk of req) raw += chunk;
      got.push(...(JSON.parse(raw) as { items: typeof got }).items);
      res.end();
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`;
    process.env.TALLY_WEBHOOK_HOOKED_SECRET = "bundle-webhook-secret-0123";
    const ctx2 = await testContext();
    const h = await harness(ctx2);
    const config = decodeTallyConfig({ channels: { hooked: { locations: ["DC1"], webhook: { url, lingerMs: 50 } } } });
    const tally = await startInProcess(ctx2, ["worker", "relay"], {}, config);
    try {
      await defineItems(h.sql, [{ sku: "W-KIT", kind: "bundle", baseUnit: "EA", components: [{ sku: "W-P1", qty: 2 }], identifiers: [] }]);
      await publishAndSettle(h, [cmd("receive", "W-P1", { qty: 7, ...at("DC1") })]);
      await eventually("the bundle's figure at the webhook", async () => got.some((i) => i.sku === "W-KIT" && i.available === 3));
      expect(got.find((i) => i.sku === "W-KIT" && i.available === 3)).toMatchObject({ channel: "hooked", components: [{ sku: "W-P1", qty: 2 }] });
    } finally {
      await tally.close();
      await h.close();
      server.close();
    }
  });
});

describe("the demo ERP's SKU-PICNIC (2 × SKU-0001, 1 × SKU-0003)", () => {
  it("has availability from the item master by CDC, follows the ERP's movements, and is 0 once SKU-0003 is counted out", async () => {
    const ctx3 = await testContext();
    const h = await harness(ctx3);
    const demo = await demoSources(ctx3);
    const tally = await startInProcess(ctx3, ["worker", "relay", "cdc"], {}, demo.config);
    const log = createLogger("test-api", process.env.TALLY_LOG_LEVEL ?? "warn");
    const app = await buildApp({
      settings: h.settings,
      config: demo.config,
      topology: h.topology,
      sql: h.sql,
      nats: h.nats,
      log,
      tokens: TOKENS,
      worker: null,
    });
    const value = async (sku: string) => {
      const e = await h.nats.availability.get(h.topology.availabilityKey("web", sku));
      return e && e.operation === "PUT" && e.length > 0 ? e.json<View>() : null;
    };
    /** The bundle as published, and the rule over its components as published: equal once derived. */
    const derived = async () => {
      const [kit, water, juice] = await Promise.all([value("SKU-PICNIC"), value("SKU-0001"), value("SKU-0003")]);
      if (!kit || !water || !juice) return null;
      const rule = Math.min(Math.floor(Math.max(0, water.available) / 2), Math.max(0, juice.available));
      return kit.available === rule ? rule : null;
    };
    try {
      await eventually("the picnic kit derived from its components", async () => ((await derived()) ?? 0) > 0);
      const r = await app.inject({ method: "GET", url: "/v1/availability/SKU-PICNIC?channel=web", headers: auth("reader") });
      expect(r.statusCode).toBe(200);
      expect(r.json()).toMatchObject({
        sku: "SKU-PICNIC",
        available: await derived(),
        components: [
          { sku: "SKU-0001", qty: 2 },
          { sku: "SKU-0003", qty: 1 },
        ],
      });
      // The web sells from DC1 and S01: counting SKU-0003 out at both leaves no picnic kit to sell.
      await demo.erp`insert into stock_counts (item_no, location, counted_qty) values ('100003', 'DC1', 0), ('100003', 'S01', 0)`;
      await eventually("the picnic kit out", async () => (await value("SKU-PICNIC"))?.available === 0);
      const out = await app.inject({ method: "GET", url: "/v1/availability/SKU-PICNIC?channel=web", headers: auth("reader") });
      expect(out.json()).toMatchObject({ available: 0, status: "out", components: [{ sku: "SKU-0001" }, { sku: "SKU-0003", available: 0 }] });
      // A receipt of it brings the kit back, by the rule: DC1 20 − its safety stock 10, less the web's buffer 2 = 8.
      await demo.erp`insert into goods_receipts (item_no, location, qty, uom) values ('100003', 'DC1', 20, 'EA')`;
      await eventually("the picnic kit back", async () => (await derived()) === 8);
    } finally {
      await app.close();
      await tally.close();
      await demo.close();
      await h.close();
    }
  });
});
