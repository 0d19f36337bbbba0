import type { FastifyInstance } from "fastify";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildApp } from "../src/http/server.ts";
import { createLogger } from "../src/platform/log.ts";
import { TOKENS } from "./apiSupport.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { demoSources, type DemoSources } from "./support/cdc.ts";
import { eventually, harness, startInProcess, type Harness } from "./support/tally.ts";

/**
 * The demo shop's order lines for the picnic kit (W-PICNIC: 2 × SKU-0001, 1 × SKU-0003), by CDC:
 * a placed line holds every component or none, a shipped one moves every component.
 */
let ctx: TestContext;
let h: Harness;
let demo: DemoSources;
let tally: Awaited<ReturnType<typeof startInProcess>>;
let app: FastifyInstance;

beforeAll(async () => {
  ctx = await testContext();
  h = await harness(ctx);
  demo = await demoSources(ctx);
  tally = await startInProcess(ctx, ["worker", "relay", "cdc"], {}, demo.config);
  // The API process runs the reservation sweeper (which releases a broken bundle line's holds).
  app = await buildApp({
    settings: h.settings,
    config: demo.config,
    topology: h.topology,
    sql: h.sql,
    nats: h.nats,
    log: createLogger("test-api", process.env.TALLY_LOG_LEVEL ?? "warn"),
    tokens: TOKENS,
    worker: null,
    options: { sweepIntervalMs: 200 },
  });
});
afterAll(async () => {
  await app?.close();
  await tally?.close();
  await demo?.close();
  await h?.close();
});

const onHand = async (sku: string, location: string): Promise<number | null> => {
  const [r] = await h.sql<[{ qty: string }?]>`select qty::text from balances where sku = ${sku} and location = ${location} and bucket = 'on_hand'`;
  return r ? Number(r.qty) : null;
};
const holds = async (holdId: string) =>
  Object.fromEntries(
    (
      await h.sql<Array<{ sku: string; status: string; open_qty: string }>>`select sku, status, open_qty::text from holds where hold_id = ${holdId}`
    ).map((r) => [r.sku, { status: r.status, open: Number(r.open_qty) }]),
  );
const placeLine = async (order: string, qty: number) => {
  await demo.shop`insert into orders (order_id) values (${order})`;
  await demo.shop`insert into order_lines (order_id, line_no, shop_sku, location, qty) values (${order}, 1, 'W-PICNIC', 'DC1', ${qty})`;
};

describe("a shop order line for a bundle, by CDC", () => {
  it("holds all components or none, and ships all of them", async () => {
    await eventually(
      "the demo stock applied",
      async () => ((await onHand("SKU-0001", "DC1")) ?? 0) > 0 && (await onHand("SKU-0003", "DC1")) !== null,
    );
    // SKU-0003 down to its safety stock at DC1 (10): nothing of it may be promised there.
    await demo.erp`insert into stock_counts (item_no, location, counted_qty) values ('100003', 'DC1', 10)`;
    await eventually("the count applied", async () => (await onHand("SKU-0003", "DC1")) === 10);

    await placeLine("BND-1", 1);
    // SKU-0003's reserve is refused; SKU-0001's, decided on its own, held 2, is released again.
    await eventually("the kit's line settled as none", async () => {
      const held = await holds("shop:BND-1:1");
      return held["SKU-0003"]?.status === "refused" && held["SKU-0001"] !== undefined && held["SKU-0001"].status !== "open";
    });
    expect(await holds("shop:BND-1:1")).toEqual({ "SKU-0001": { status: "released", open: 0 }, "SKU-0003": { status: "refused", open: 0 } });

    // With stock again, a line holds both components, and shipping it takes both off hand.
    await demo.erp`insert into goods_receipts (item_no, location, qty, uom) values ('100003', 'DC1', 20, 'EA')`;
    await eventually("the receipt applied", async () => (await onHand("SKU-0003", "DC1")) === 30);
    const before = { p1: (await onHand("SKU-0001", "DC1"))!, p3: 30 };
    await placeLine("BND-2", 2);
    await eventually("both components held", async () => {
      const held = await holds("shop:BND-2:1");
      return held["SKU-0001"]?.status === "open" && held["SKU-0003"]?.status === "open";
    });
    expect(await holds("shop:BND-2:1")).toEqual({ "SKU-0001": { status: "open", open: 4 }, "SKU-0003": { status: "open", open: 2 } });
    await demo.shop`update order_lines set status = 'shipped' where order_id = 'BND-2' and line_no = 1`;
    await eventually("both components shipped", async () => {
      const held = await holds("shop:BND-2:1");
      return held["SKU-0001"]?.status === "fulfilled" && held["SKU-0003"]?.status === "fulfilled";
    });
    expect(await onHand("SKU-0001", "DC1")).toBe(before.p1 - 4);
    expect(await onHand("SKU-0003", "DC1")).toBe(before.p3 - 2);
  });
});
