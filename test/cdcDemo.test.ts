import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEMO_STOCK } from "../cdc/demo/seed.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { demoSources, type DemoSources } from "./support/cdc.ts";
import { eventually, harness, readStream, runTally, startInProcess, tallyEnv, type Harness } from "./support/tally.ts";

let ctx: TestContext;
let h: Harness;
let demo: DemoSources;
let tally: Awaited<ReturnType<typeof startInProcess>>;

beforeAll(async () => {
  ctx = await testContext();
  h = await harness(ctx);
  demo = await demoSources(ctx);
  tally = await startInProcess(ctx, ["worker", "relay", "cdc"], {}, demo.config);
  // Rows written before a source's slot exists are only seen through its snapshot tables.
  await eventually("both sources streaming", async () => tally.readers.length === 2 && tally.readers.every((r) => r.streaming));
});
afterAll(async () => {
  await tally?.close();
  await demo?.close();
  await h?.close();
});

const bucket = async (sku: string, location: string, b = "on_hand") => {
  const [row] = await h.sql<[{ qty: number } | undefined]>`
    select qty from balances where sku = ${sku} and location = ${location} and bucket = ${b}`;
  return row?.qty ?? 0;
};
const opening = (sku: string, location: string) => DEMO_STOCK.find((s) => s.sku === sku && s.location === location)!.baseQty;

describe("CDC from the demo ERP and shop, end to end", () => {
  it("opens with the ERP's stock on hand (snapshot), policies and the crosswalk", async () => {
    await eventually("opening balances", async () => {
      for (const s of DEMO_STOCK) if ((await bucket(s.sku, s.location)) !== s.baseQty) return false;
      return true;
    });
    const [policy] = await h.sql<[{ safety_stock: number; reorder_point: number }]>`
      select safety_stock, reorder_point from sku_locations where sku = 'SKU-0005' and location = 'DC1'`;
    expect(policy).toEqual({ safety_stock: 10, reorder_point: 50 });
    const [{ n }] = await h.sql<[{ n: number }]>`select count(*)::int as n from items`;
    expect(n).toBe(23);
  });

  it("onboarding does not flood channels: the snapshot's opening stock raises no back_in_stock", async () => {
    await eventually("the outbox to drain", async () => {
      const [{ pending }] = await h.sql<[{ pending: number }]>`select count(*)::int as pending from outbox`;
      return pending === 0;
    });
    const events = await readStream(h, h.topology.eventsStream, h.topology.eventSubjects);
    expect(events.filter((e) => e.subject.endsWith(".back_in_stock"))).toEqual([]);
    // The locations did come into stock (a crossing recorded, not announced).
    const [{ stocked }] = await h.sql<[{ stocked: number }]>`
      select count(*)::int as stocked from sku_locations where status in ('in_stock', 'low')`;
    expect(stocked).toBeGreaterThan(10);
  });

  it("maps ERP receipts with units (3 CASE of 12 = 36 EA; 1.25 KG = 1250 g), adjustments and counts", async () => {
    const before = await bucket("SKU-0001", "DC1");
    const bananas = await bucket("SKU-BANANAS", "S01");
    await demo.erp`insert into goods_receipts (item_no, location, qty, uom) values ('100001', 'DC1', 3, 'CASE')`;
    await demo.erp`insert into goods_receipts (item_no, location, qty, uom) values ('200001', 'S01', 1.25, 'KG')`;
    await demo.erp`insert into stock_adjustments (item_no, location, qty, reason) values ('100002', 'S02', -2, 'damage')`;
    await demo.erp`insert into stock_counts (item_no, location, counted_qty) values ('100004', 'S01', 33)`;
    await eventually(
      "ERP movements",
      async () =>
        (await bucket("SKU-0001", "DC1")) === before + 36 &&
        (await bucket("SKU-BANANAS", "S01")) === bananas + 1250 &&
        (await bucket("SKU-0002", "S02")) === opening("SKU-0002", "S02") - 2 &&
        (await bucket("SKU-0004", "S01")) === 33,
    );
  });

  it("passes a receipt's unit cost on: numeric(12,4) EUR becomes integer cents on the ledger entry", async () => {
    const [{ receipt_id }] = await demo.erp<[{ receipt_id: string }]>`
      insert into goods_receipts (item_no, location, qty, uom, unit_cost, currency)
      values ('100003', 'S02', 4, 'EA', 2.5050, 'EUR') returning receipt_id::text`;
    const ref = `goods_receipts:${receipt_id}`;
    await eventually("the costed receipt", async () => (await h.sql`select 1 from ledger_entries where source_ref = ${ref}`).length === 1);
    const [entry] = await h.sql<[{ value: string; unit_cost: string; valuation_flag: string | null }]>`
      select value::text, unit_cost::text, valuation_flag from ledger_entries where source_ref = ${ref}`;
    // 2.5050 EUR = 250.50 cents → 251 (half away from zero); 4 × 251.
    expect(entry).toEqual({ value: "1004", unit_cost: "251", valuation_flag: null });
  });

  it("maps shop orders: a placed line reserves, shipping fulfils, cancelling releases; a bundle reserves its components; a gift card is skipped", async () => {
    const reader = tally.readers.find((r) => r.name === "shop")!;
    const skippedBefore = reader.metrics.skipped;
    const onHand3 = await bucket("SKU-0003", "DC1");
    await demo.shop`insert into orders (order_id) values ('O-1'), ('O-2')`;
    await demo.shop`
      insert into order_lines (order_id, line_no, shop_sku, location, qty) values
        ('O-1', 1, 'W-0005', 'DC1', 4), ('O-1', 2, 'W-PICNIC', 'DC1', 3), ('O-1', 3, 'W-GIFT-25', 'DC1', 1), ('O-2', 1, 'W-0006', 'DC1', 2)`;
    await eventually(
      "reservations",
      async () =>
        (await bucket("SKU-0005", "DC1", "reserved")) === 4 &&
        (await bucket("SKU-0001", "DC1", "reserved")) === 6 &&
        (await bucket("SKU-0003", "DC1", "reserved")) === 3 &&
        (await bucket("SKU-0006", "DC1", "reserved")) === 2,
    );
    expect(reader.metrics.skipped).toBe(skippedBefore + 1);
    const ids = await h.sql<Array<{ command_id: string }>>`
      select command_id from command_outcomes where command_id like 'shop:order:O-1:2:reserve%' order by 1`;
    expect(ids.map((r) => r.command_id)).toEqual(["shop:order:O-1:2:reserve#SKU-0001", "shop:order:O-1:2:reserve#SKU-0003"]);

    await demo.shop`update order_lines set status = 'shipped' where order_id = 'O-1' and line_no = 2`;
    await demo.shop`update order_lines set status = 'cancelled' where order_id = 'O-2'`;
    await eventually(
      "fulfil and release",
      async () =>
        (await bucket("SKU-0003", "DC1", "reserved")) === 0 &&
        (await bucket("SKU-0003", "DC1")) === onHand3 - 3 &&
        (await bucket("SKU-0006", "DC1", "reserved")) === 0,
    );
  });

  it("maps returns (non-restockable → damaged) and transfers (out, then in at the destination)", async () => {
    const s02 = await bucket("SKU-0007", "S02");
    const dc = await bucket("SKU-0007", "DC1");
    await demo.shop`insert into returns (order_id, line_no, shop_sku, location, qty, restockable) values ('O-1', 1, 'W-0005', 'DC1', 1, false)`;
    await demo.erp`insert into transfers (transfer_id, item_no, from_location, to_location, qty) values ('TR-1', '100007', 'DC1', 'S02', 5)`;
    await eventually("transfer out", async () => (await bucket("SKU-0007", "S02", "in_transit")) === 5);
    expect(await bucket("SKU-0007", "DC1")).toBe(dc - 5);
    await demo.erp`update transfers set status = 'received' where transfer_id = 'TR-1'`;
    await eventually(
      "transfer in and the return",
      async () =>
        (await bucket("SKU-0007", "S02", "in_transit")) === 0 &&
        (await bucket("SKU-0007", "S02")) === s02 + 5 &&
        (await bucket("SKU-0005", "DC1", "damaged")) === 1,
    );
  });

  it("dead-letters an unknown item with its reason; after the item is added to the ERP, `tally dlq replay` applies it once", async () => {
    await demo.shop`insert into orders (order_id) values ('O-3')`;
    await demo.shop`insert into order_lines (order_id, line_no, shop_sku, location, qty) values ('O-3', 1, 'W-NEW', 'DC1', 2)`;
    // A later row of the same source is not blocked.
    await demo.shop`insert into order_lines (order_id, line_no, shop_sku, location, qty) values ('O-3', 2, 'W-0008', 'DC1', 1)`;
    await eventually("the later line", async () => (await bucket("SKU-0008", "DC1", "reserved")) === 1);
    const env = { ...tallyEnv(ctx), ...demo.env };
    let listed = "";
    await eventually("the dead letter", async () => {
      listed = (await runTally(["dlq", "list", "--origin", "shop"], env)).stdout;
      return listed.includes("W-NEW");
    });
    const id = listed
      .split("\n")
      .find((l) => l.includes("W-NEW"))!
      .split("\t")[0]!;
    const stillFailing = await runTally(["dlq", "replay", id], env);
    expect(stillFailing.code).toBe(1);
    expect(stillFailing.stdout).toContain("still failing");

    await demo.erp`
      insert into items (item_no, sku, description, kind, base_uom, shop_sku) values ('100099', 'SKU-NEW', 'New item', 'stock', 'EA', 'W-NEW')`;
    await demo.erp`insert into goods_receipts (item_no, location, qty) values ('100099', 'DC1', 10)`;
    await eventually("the new item's receipt", async () => (await bucket("SKU-NEW", "DC1")) === 10);
    const replayed = await runTally(["dlq", "replay", id], env);
    expect(replayed.stdout).toContain("replayed");
    expect(replayed.code).toBe(0);
    await eventually("the replayed reservation", async () => (await bucket("SKU-NEW", "DC1", "reserved")) === 2);
    const after = await runTally(["dlq", "list", "--origin", "shop"], env);
    expect(after.stdout).not.toContain("W-NEW");
    const [{ n }] = await h.sql<[{ n: number }]>`select count(*)::int as n from ledger_entries where command_id = 'shop:order:O-3:1:reserve'`;
    expect(n).toBe(1);
  });

  it("keeps the crosswalk current: an ERP item change is usable within seconds, with its new units", async () => {
    await demo.erp`update items set case_qty = 24 where item_no = '100009'`;
    await demo.erp`insert into goods_receipts (item_no, location, qty, uom) values ('100009', 'S01', 2, 'CASE')`;
    const before = opening("SKU-0009", "S01");
    await eventually("48 more", async () => (await bucket("SKU-0009", "S01")) === before + 48);
  });

  it("holds each shop order line apart: B's refused line cannot release A's units, A ships all 5 (the A/B scenario)", async () => {
    await demo.erp`
      insert into items (item_no, sku, description, kind, base_uom, shop_sku) values ('100088', 'SKU-AB', 'A/B item', 'stock', 'EA', 'W-AB')`;
    await demo.erp`insert into goods_receipts (item_no, location, qty) values ('100088', 'DC1', 5)`;
    await eventually("5 on hand", async () => (await bucket("SKU-AB", "DC1")) === 5);
    const outcome = async (id: string) =>
      (await h.sql<Array<{ status: string; reason: string | null }>>`select status, reason from command_outcomes where command_id = ${id}`)[0];
    await demo.shop`insert into orders (order_id) values ('AB-A'), ('AB-B')`;
    await demo.shop`insert into order_lines (order_id, line_no, shop_sku, location, qty) values ('AB-A', 1, 'W-AB', 'DC1', 5)`;
    await eventually("A's hold", async () => (await bucket("SKU-AB", "DC1", "reserved")) === 5);
    await demo.shop`insert into order_lines (order_id, line_no, shop_sku, location, qty) values ('AB-B', 1, 'W-AB', 'DC1', 3)`;
    await eventually("B refused", async () => (await outcome("shop:order:AB-B:1:reserve"))?.reason === "insufficient_stock");
    await demo.shop`update order_lines set status = 'cancelled' where order_id = 'AB-B'`;
    await eventually("B's release rejected", async () => (await outcome("shop:order:AB-B:1:release"))?.reason === "unknown_hold");
    await demo.shop`update order_lines set status = 'shipped' where order_id = 'AB-A'`;
    await eventually("A shipped", async () => (await outcome("shop:order:AB-A:1:fulfill"))?.status === "applied");
    expect(await bucket("SKU-AB", "DC1")).toBe(0);
    expect(await bucket("SKU-AB", "DC1", "reserved")).toBe(0);
    const holds = await h.sql<Array<{ hold_id: string; status: string }>>`select hold_id, status from holds where sku = 'SKU-AB' order by hold_id`;
    expect(holds).toEqual([
      { hold_id: "shop:AB-A:1", status: "fulfilled" },
      { hold_id: "shop:AB-B:1", status: "refused" },
    ]);
    // The shop hears of the line it could not hold.
    await eventually("hold_refused for B's line", async () => {
      const events = await readStream(h, h.topology.eventsStream, h.topology.eventSubject("hold_refused"));
      return events.some((e) => (e.data as { holdId: string }).holdId === "shop:AB-B:1");
    });
  });

  it("dead-letters a quantity that is not whole in base units (1.5 EA)", async () => {
    await demo.erp`insert into goods_receipts (item_no, location, qty, uom) values ('100010', 'S01', 1.5, 'EA')`;
    await eventually("the non-integral receipt's dead letter", async () => {
      const letters = await readStream(h, h.topology.dlqStream, h.topology.dlqSubject("erp"));
      return letters.some((l) => (l.data as { context: { code: string } }).context.code === "non_integral_qty");
    });
  });
});
