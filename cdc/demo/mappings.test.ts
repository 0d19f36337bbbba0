import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodeTallyConfig } from "../../src/platform/configFile.ts";
import { testContext, type TestContext } from "../../test/support/context.ts";
import config from "../../tally.config.ts";
import { Crosswalk, type ResolveContext } from "../crosswalk.ts";
import {
  MappingError,
  RowView,
  type Change,
  type ItemDefinition,
  type MappedCommand,
  type MappingResult,
  type RawRow,
} from "../../src/contract/mapping.ts";
import {
  erpGoodsReceipts,
  erpItemDefinition,
  erpItemLocations,
  erpItemLocationsSnapshot,
  erpItems,
  erpItemsSnapshot,
  erpSource,
  erpStockAdjustments,
  erpStockCounts,
  erpStockOnHand,
  erpTransfers,
  shopOrderLines,
  shopReturns,
  shopSource,
} from "./mappings.ts";
import { applyDemoSchemas, DEMO_ITEMS, DEMO_POLICIES, DEMO_STOCK, seedDemo } from "./seed.ts";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const T0 = "2026-11-26 10:00:00.123456+01";
const T0_ISO = "2026-11-26T10:00:00.123456+01:00";
const T1 = "2026-11-27 08:30:00+00";
const T1_ISO = "2026-11-27T08:30:00+00:00";

function change(source: string, table: string, op: Change["op"], rows: { new?: RawRow; old?: RawRow }): Change {
  return {
    source,
    op,
    table,
    new: rows.new ? new RowView(table, "new", rows.new) : null,
    old: rows.old ? new RowView(table, "old", rows.old) : null,
    commitLsn: "0/16B3748",
    index: 3,
    commitTime: "2026-11-26T12:00:00+00:00",
  };
}
const erp = (table: string, op: Change["op"], rows: { new?: RawRow; old?: RawRow }) => change("erp", `public.${table}`, op, rows);
const shop = (table: string, op: Change["op"], rows: { new?: RawRow; old?: RawRow }) => change("shop", `public.${table}`, op, rows);

const commandsOf = (r: MappingResult | ReadonlyArray<MappedCommand>): ReadonlyArray<MappedCommand> =>
  Array.isArray(r) ? (r as ReadonlyArray<MappedCommand>) : ((r as MappingResult).commands ?? []);

function mappingError(fn: () => unknown): MappingError {
  try {
    fn();
  } catch (e) {
    if (e instanceof MappingError) return e;
    throw e;
  }
  throw new Error("expected a MappingError");
}

/** An ERP items row in pgoutput's text form. */
const itemRow = (over: Partial<Record<string, string | null>> = {}): RawRow => ({
  item_no: "100001",
  sku: "SKU-0001",
  description: "Sparkling water 0.5 l",
  kind: "stock",
  base_uom: "EA",
  case_qty: "12",
  barcode: "4000000000017",
  plu: null,
  shop_sku: "W-0001",
  components: "[]",
  updated_at: T0,
  ...over,
});

const ITEM_ROWS = {
  water: itemRow(),
  juice: itemRow({ item_no: "100003", sku: "SKU-0003", description: "Orange juice", case_qty: null, barcode: "4000000000031", shop_sku: "W-0003" }),
  bananas: itemRow({
    item_no: "200001",
    sku: "SKU-BANANAS",
    kind: "variable_weight",
    base_uom: "KG",
    case_qty: null,
    barcode: null,
    plu: "4011",
    shop_sku: "W-BANANAS",
  }),
  picnic: itemRow({
    item_no: "300001",
    sku: "SKU-PICNIC",
    kind: "bundle",
    case_qty: null,
    barcode: "4000000009013",
    shop_sku: "W-PICNIC",
    components: '[{"sku": "SKU-0001", "qty": 2}, {"sku": "SKU-0003", "qty": 1}]',
  }),
  gift: itemRow({ item_no: "900001", sku: "SKU-GIFT-25", kind: "non_inventory", case_qty: null, barcode: "4000000009990", shop_sku: "W-GIFT-25" }),
};

/** A crosswalk holding the items above, defined through the ERP items mapping. */
function crosswalk(): Crosswalk {
  const cw = new Crosswalk();
  const defs: Array<ItemDefinition> = [];
  for (const row of Object.values(ITEM_ROWS)) {
    const r = erpItems(erp("items", "insert", { new: row })) as MappingResult;
    defs.push(...(r.items ?? []));
  }
  cw.apply(defs);
  return cw;
}

const ctx = (source: string, id = `${source}:0/16B3748:3`): ResolveContext => ({
  source,
  id,
  ref: "public.x",
  occurredAt: "2026-11-26T12:00:00+00:00",
  lsn: "0/16B3748",
});

/** Maps a change and resolves its one mapped command through the crosswalk. */
function resolveOne(cw: Crosswalk, c: Change, map: (c: Change) => MappingResult | ReadonlyArray<MappedCommand>) {
  const mapped = commandsOf(map(c));
  expect(mapped).toHaveLength(1);
  return cw.resolve(mapped[0]!, ctx(c.source));
}

// ---------------------------------------------------------------------------------------------
// ERP items → crosswalk
// ---------------------------------------------------------------------------------------------

describe("ERP items", () => {
  it("defines a stock item with its identifiers and its CASE unit", () => {
    const r = erpItems(erp("items", "insert", { new: ITEM_ROWS.water })) as MappingResult;
    expect(r).toEqual({
      items: [
        {
          sku: "SKU-0001",
          kind: "stock",
          baseUnit: "EA",
          units: { CASE: 12 },
          identifiers: [
            { system: "erp_item", id: "100001" },
            { system: "barcode", id: "4000000000017" },
            { system: "shop_sku", id: "W-0001" },
          ],
        },
      ],
    });
  });

  it("counts a variable-weight item in grams, sold in kg, known by its PLU", () => {
    expect(erpItemDefinition(new RowView("public.items", "new", ITEM_ROWS.bananas))).toEqual({
      sku: "SKU-BANANAS",
      kind: "stock",
      baseUnit: "g",
      units: { kg: 1000 },
      identifiers: [
        { system: "erp_item", id: "200001" },
        { system: "plu", id: "4011" },
        { system: "shop_sku", id: "W-BANANAS" },
      ],
    });
  });

  it("defines a bundle with its components, and a non-inventory gift card", () => {
    const bundle = erpItemDefinition(new RowView("public.items", "new", ITEM_ROWS.picnic));
    expect(bundle).toMatchObject({
      sku: "SKU-PICNIC",
      kind: "bundle",
      baseUnit: "EA",
      components: [
        { sku: "SKU-0001", qty: 2 },
        { sku: "SKU-0003", qty: 1 },
      ],
    });
    expect(erpItemDefinition(new RowView("public.items", "new", ITEM_ROWS.gift))).toMatchObject({ sku: "SKU-GIFT-25", kind: "non_inventory" });
  });

  it("upserts on update, dropping the old SKU when the ERP renames it", () => {
    const same = erpItems(erp("items", "update", { old: ITEM_ROWS.water, new: { ...ITEM_ROWS.water, barcode: "4000000000024" } })) as MappingResult;
    expect(same.removeItems).toBeUndefined();
    expect(same.items?.[0]?.identifiers).toContainEqual({ system: "barcode", id: "4000000000024" });
    const renamed = erpItems(erp("items", "update", { old: ITEM_ROWS.water, new: { ...ITEM_ROWS.water, sku: "SKU-WATER" } })) as MappingResult;
    expect(renamed.items?.[0]?.sku).toBe("SKU-WATER");
    expect(renamed.removeItems).toEqual(["SKU-0001"]);
  });

  it("takes an unchanged TOAST value from the old row", () => {
    const r = erpItems(
      erp("items", "update", { old: ITEM_ROWS.picnic, new: { ...ITEM_ROWS.picnic, description: "Picnic kit", components: undefined } }),
    ) as MappingResult;
    expect(r.items?.[0]?.components).toEqual([
      { sku: "SKU-0001", qty: 2 },
      { sku: "SKU-0003", qty: 1 },
    ]);
  });

  it("removes the item on delete (the old row carries the SKU under REPLICA IDENTITY FULL)", () => {
    expect(erpItems(erp("items", "delete", { old: ITEM_ROWS.gift }))).toEqual({ removeItems: ["SKU-GIFT-25"] });
    // Under REPLICA IDENTITY DEFAULT only the key is sent: a clear error, not a silent loss.
    expect(mappingError(() => erpItems(erp("items", "delete", { old: { item_no: "900001" } })))).toMatchObject({
      field: "old.sku",
      reason: "missing_column",
    });
  });

  it("names the field of a bad item row", () => {
    const cases: Array<[Partial<Record<string, string | null>>, string]> = [
      [{ kind: "service" }, "new.kind"],
      [{ base_uom: "LB" }, "new.base_uom"],
      [{ kind: "variable_weight", base_uom: "EA" }, "new.base_uom"],
      [{ case_qty: "0" }, "new.case_qty"],
      [{ case_qty: "twelve" }, "new.case_qty"],
      [{ sku: null }, "new.sku"],
      [{ kind: "bundle", components: "[]" }, "new.components"],
      [{ kind: "bundle", components: "{oops" }, "new.components"],
      [{ kind: "bundle", components: '[{"sku": "SKU-1", "qty": 1.5}]' }, "new.components[0].qty"],
      [{ kind: "bundle", components: '[{"qty": 1}]' }, "new.components[0].sku"],
      [{ components: '[{"sku": "SKU-1", "qty": 1}]' }, "new.components"],
    ];
    for (const [over, field] of cases)
      expect(mappingError(() => erpItems(erp("items", "insert", { new: itemRow(over) }))).field, JSON.stringify(over)).toBe(field);
  });
});

// ---------------------------------------------------------------------------------------------
// ERP movements
// ---------------------------------------------------------------------------------------------

describe("ERP item_locations", () => {
  it("maps a policy to set_policy, and its deletion to a zero policy", () => {
    const row = { item_no: "100001", location: "S01", safety_stock: "2", reorder_point: "10" };
    expect(erpItemLocations(erp("item_locations", "insert", { new: row }))).toEqual([
      {
        type: "set_policy",
        item: { system: "erp_item", id: "100001" },
        location: "S01",
        ref: "item_locations:100001:S01",
        fields: { safetyStock: 2, reorderPoint: 10 },
      },
    ]);
    expect(commandsOf(erpItemLocations(erp("item_locations", "update", { new: { ...row, safety_stock: "4" } })))[0]?.fields).toEqual({
      safetyStock: 4,
      reorderPoint: 10,
    });
    // Only the key is needed on delete (REPLICA IDENTITY DEFAULT).
    expect(commandsOf(erpItemLocations(erp("item_locations", "delete", { old: { item_no: "100001", location: "S01" } })))[0]).toMatchObject({
      type: "set_policy",
      location: "S01",
      fields: { safetyStock: 0, reorderPoint: 0 },
    });
    expect(mappingError(() => erpItemLocations(erp("item_locations", "insert", { new: { ...row, reorder_point: "-" } }))).field).toBe(
      "new.reorder_point",
    );
  });
});

describe("ERP goods receipts", () => {
  const row = { receipt_id: "1001", item_no: "100001", location: "DC1", qty: "3.000", uom: "CASE", received_at: T0 };

  it("maps an insert to receive with the exact decimal qty and unit", () => {
    expect(erpGoodsReceipts(erp("goods_receipts", "insert", { new: row }))).toEqual([
      {
        type: "receive",
        item: { system: "erp_item", id: "100001" },
        location: "DC1",
        qty: "3.000",
        uom: "CASE",
        ref: "goods_receipts:1001",
        occurredAt: T0_ISO,
      },
    ]);
    expect(commandsOf(erpGoodsReceipts(erp("goods_receipts", "insert", { new: { ...row, uom: "KG" } })))[0]?.uom).toBe("kg");
    expect(commandsOf(erpGoodsReceipts(erp("goods_receipts", "insert", { new: { ...row, uom: "EA" } })))[0]?.uom).toBe("EA");
  });

  it("passes the unit cost on in integer minor units of its currency (exact, rounded half away from zero)", () => {
    const costed = (unit_cost: string | null, currency: string | null) =>
      commandsOf(erpGoodsReceipts(erp("goods_receipts", "insert", { new: { ...row, unit_cost, currency } })))[0]?.fields;
    expect(costed("12.3450", "EUR")).toEqual({ unitCost: 1235, currency: "EUR" });
    expect(costed("12.3449", "EUR")).toEqual({ unitCost: 1234, currency: "EUR" });
    expect(costed("99999999.9999", "EUR")).toEqual({ unitCost: 10_000_000_000, currency: "EUR" });
    expect(costed("150.0000", "JPY")).toEqual({ unitCost: 150, currency: "JPY" });
    expect(costed("1.2345", "KWD")).toEqual({ unitCost: 1235, currency: "KWD" });
    expect(costed(null, null)).toBeUndefined();
    expect(mappingError(() => costed("1.0000", null))).toMatchObject({ field: "new.currency" });
    expect(mappingError(() => costed("1,5", "EUR"))).toMatchObject({ field: "new.unit_cost" });
  });

  it("names the bad field", () => {
    expect(mappingError(() => erpGoodsReceipts(erp("goods_receipts", "insert", { new: { ...row, qty: "abc" } })))).toMatchObject({
      field: "new.qty",
      reason: "bad_value",
    });
    expect(mappingError(() => erpGoodsReceipts(erp("goods_receipts", "insert", { new: { ...row, uom: "PALLET" } }))).field).toBe("new.uom");
    expect(mappingError(() => erpGoodsReceipts(erp("goods_receipts", "insert", { new: { ...row, received_at: "yesterday" } }))).field).toBe(
      "new.received_at",
    );
    const { location: _, ...noLocation } = row;
    expect(mappingError(() => erpGoodsReceipts(erp("goods_receipts", "insert", { new: noLocation })))).toMatchObject({
      field: "new.location",
      reason: "missing_column",
    });
  });

  it("refuses updates and deletes, so they dead-letter visibly", () => {
    for (const c of [
      erp("goods_receipts", "update", { new: { ...row, qty: "4" } }),
      erp("goods_receipts", "delete", { old: { receipt_id: "1001" } }),
    ])
      expect(mappingError(() => erpGoodsReceipts(c))).toMatchObject({
        field: "op",
        problem: "goods receipts are immutable; post an adjustment",
        reason: "unsupported_change",
      });
  });
});

describe("ERP adjustments and counts", () => {
  it("maps an adjustment to adjust with its signed qty and reason", () => {
    const row = { adjustment_id: "7", item_no: "100003", location: "S01", qty: "-2.000", uom: "EA", reason: "damaged", adjusted_at: T1 };
    expect(erpStockAdjustments(erp("stock_adjustments", "insert", { new: row }))).toEqual([
      {
        type: "adjust",
        item: { system: "erp_item", id: "100003" },
        location: "S01",
        qty: "-2.000",
        uom: "EA",
        ref: "stock_adjustments:7",
        occurredAt: T1_ISO,
        fields: { reason: "damaged" },
      },
    ]);
    expect(mappingError(() => erpStockAdjustments(erp("stock_adjustments", "insert", { new: { ...row, reason: " " } }))).field).toBe("new.reason");
    expect(mappingError(() => erpStockAdjustments(erp("stock_adjustments", "delete", { old: { adjustment_id: "7" } }))).reason).toBe(
      "unsupported_change",
    );
  });

  it("skips an adjustment the ERP imported from Tally's write-back (origin 'tally'): no echo", () => {
    const row = { adjustment_id: "8", item_no: "100003", location: "S01", qty: "-1.000", uom: "EA", reason: "tally adjust x", adjusted_at: T1 };
    expect(erpStockAdjustments(erp("stock_adjustments", "insert", { new: { ...row, origin: "tally" } }))).toEqual([]);
    expect(erpStockAdjustments(erp("stock_adjustments", "insert", { new: { ...row, origin: null } }))).toHaveLength(1);
  });

  it("maps a count to count", () => {
    const row = { count_id: "9", item_no: "200001", location: "S02", counted_qty: "12.250", uom: "KG", counted_at: T1 };
    expect(erpStockCounts(erp("stock_counts", "insert", { new: row }))).toEqual([
      {
        type: "count",
        item: { system: "erp_item", id: "200001" },
        location: "S02",
        qty: "12.250",
        uom: "kg",
        ref: "stock_counts:9",
        occurredAt: T1_ISO,
      },
    ]);
    expect(mappingError(() => erpStockCounts(erp("stock_counts", "insert", { new: { ...row, counted_qty: null } })))).toMatchObject({
      field: "new.counted_qty",
      reason: "bad_value",
    });
  });

  it("snapshots the item master and the policies", () => {
    expect(erpItemsSnapshot(new RowView("public.items", "new", ITEM_ROWS.bananas))).toEqual({
      items: [erpItemDefinition(new RowView("public.items", "new", ITEM_ROWS.bananas))],
    });
    expect(
      erpItemLocationsSnapshot(
        new RowView("public.item_locations", "new", { item_no: "100001", location: "DC1", safety_stock: "10", reorder_point: "50" }),
      ),
    ).toEqual([
      {
        type: "set_policy",
        item: { system: "erp_item", id: "100001" },
        location: "DC1",
        ref: "item_locations:100001:DC1",
        fields: { safetyStock: 10, reorderPoint: 50 },
      },
    ]);
  });

  it("maps an opening balance to count with the reader's default id", () => {
    const [cmd] = erpStockOnHand(new RowView("public.stock_on_hand", "new", { item_no: "100001", location: "DC1", qty: "10.000", uom: "CASE" }));
    expect(cmd).toEqual({
      type: "count",
      item: { system: "erp_item", id: "100001" },
      location: "DC1",
      qty: "10.000",
      uom: "CASE",
      ref: "stock_on_hand:100001:DC1",
    });
    expect(cmd?.id).toBeUndefined();
  });
});

describe("ERP transfers", () => {
  const shipped = {
    transfer_id: "TR-55",
    item_no: "100001",
    from_location: "DC1",
    to_location: "S01",
    qty: "24",
    status: "shipped",
    shipped_at: T0,
    received_at: null,
  };
  const received = { ...shipped, status: "received", received_at: T1 };

  it("maps a shipped insert to transfer_out with a business-key id", () => {
    expect(erpTransfers(erp("transfers", "insert", { new: shipped }))).toEqual([
      {
        type: "transfer_out",
        id: "erp:transfer:TR-55:out",
        item: { system: "erp_item", id: "100001" },
        location: "DC1",
        qty: 24,
        ref: "transfers:TR-55",
        occurredAt: T0_ISO,
        fields: { transferId: "TR-55", to: "S01" },
      },
    ]);
  });

  it("maps shipped → received to transfer_in at the destination", () => {
    expect(erpTransfers(erp("transfers", "update", { old: shipped, new: received }))).toEqual([
      {
        type: "transfer_in",
        id: "erp:transfer:TR-55:in",
        item: { system: "erp_item", id: "100001" },
        location: "S01",
        qty: 24,
        ref: "transfers:TR-55",
        occurredAt: T1_ISO,
        fields: { transferId: "TR-55", from: "DC1" },
      },
    ]);
  });

  it("maps an insert already received to both legs", () => {
    expect(commandsOf(erpTransfers(erp("transfers", "insert", { new: received }))).map((c) => c.id)).toEqual([
      "erp:transfer:TR-55:out",
      "erp:transfer:TR-55:in",
    ]);
  });

  it("ignores updates that do not change the status, and refuses the others", () => {
    expect(erpTransfers(erp("transfers", "update", { old: shipped, new: { ...shipped, shipped_at: T1 } }))).toEqual([]);
    expect(erpTransfers(erp("transfers", "update", { old: received, new: received }))).toEqual([]);
    expect(mappingError(() => erpTransfers(erp("transfers", "update", { old: received, new: shipped })))).toMatchObject({
      field: "new.status",
      reason: "unsupported_change",
    });
    expect(mappingError(() => erpTransfers(erp("transfers", "update", { old: shipped, new: { ...received, qty: "20" } })))).toMatchObject({
      field: "new.qty",
      reason: "unsupported_change",
    });
    expect(mappingError(() => erpTransfers(erp("transfers", "delete", { old: shipped }))).field).toBe("op");
    expect(mappingError(() => erpTransfers(erp("transfers", "insert", { new: { ...shipped, status: "lost" } }))).field).toBe("new.status");
  });

  it("needs the old row to see the old status", () => {
    expect(mappingError(() => erpTransfers(erp("transfers", "update", { new: received })))).toMatchObject({
      field: "old",
      reason: "missing_old_row",
    });
  });
});

// ---------------------------------------------------------------------------------------------
// Shop
// ---------------------------------------------------------------------------------------------

describe("shop order lines", () => {
  const placed = { order_id: "WEB-1001", line_no: "2", shop_sku: "W-0003", location: "DC1", qty: "3", status: "placed", updated_at: T0 };
  const at = (status: string) => ({ ...placed, status, updated_at: T1 });

  it("maps a placed insert to reserve", () => {
    expect(shopOrderLines(shop("order_lines", "insert", { new: placed }))).toEqual([
      {
        type: "reserve",
        id: "shop:order:WEB-1001:2:reserve",
        item: { system: "shop_sku", id: "W-0003" },
        location: "DC1",
        qty: 3,
        ref: "order_lines:WEB-1001:2",
        occurredAt: T0_ISO,
        fields: { reservationId: "shop:WEB-1001:2" },
      },
    ]);
  });

  it("maps placed → cancelled to release and placed → shipped to fulfill", () => {
    expect(shopOrderLines(shop("order_lines", "update", { old: placed, new: at("cancelled") }))).toEqual([
      {
        type: "release",
        id: "shop:order:WEB-1001:2:release",
        item: { system: "shop_sku", id: "W-0003" },
        location: "DC1",
        qty: 3,
        ref: "order_lines:WEB-1001:2",
        occurredAt: T1_ISO,
        fields: { reservationId: "shop:WEB-1001:2" },
      },
    ]);
    expect(commandsOf(shopOrderLines(shop("order_lines", "update", { old: placed, new: at("shipped") })))).toMatchObject([
      { type: "fulfill", id: "shop:order:WEB-1001:2:fulfill", qty: 3, fields: { reservationId: "shop:WEB-1001:2" } },
    ]);
  });

  it("has no stock effect for other transitions", () => {
    expect(shopOrderLines(shop("order_lines", "update", { old: at("shipped"), new: at("returned") }))).toEqual([]);
    expect(shopOrderLines(shop("order_lines", "update", { old: at("cancelled"), new: at("placed") }))).toEqual([]);
    expect(shopOrderLines(shop("order_lines", "update", { old: placed, new: at("placed") }))).toEqual([]);
    expect(shopOrderLines(shop("order_lines", "insert", { new: at("cancelled") }))).toEqual([]);
  });

  it("releases a placed line that is deleted", () => {
    expect(commandsOf(shopOrderLines(shop("order_lines", "delete", { old: placed })))).toMatchObject([
      { type: "release", id: "shop:order:WEB-1001:2:release", qty: 3 },
    ]);
    expect(shopOrderLines(shop("order_lines", "delete", { old: at("shipped") }))).toEqual([]);
  });

  it("refuses changes it cannot map faithfully", () => {
    expect(mappingError(() => shopOrderLines(shop("order_lines", "update", { old: placed, new: { ...at("placed"), qty: "5" } })))).toMatchObject({
      field: "new.qty",
      reason: "unsupported_change",
    });
    expect(mappingError(() => shopOrderLines(shop("order_lines", "insert", { new: at("shipped") })))).toMatchObject({
      field: "new.status",
      reason: "unsupported_change",
    });
    expect(mappingError(() => shopOrderLines(shop("order_lines", "update", { new: at("cancelled") })))).toMatchObject({ field: "old" });
    expect(mappingError(() => shopOrderLines(shop("order_lines", "insert", { new: { ...placed, qty: "2.5" } }))).field).toBe("new.qty");
  });
});

describe("shop returns", () => {
  const row = {
    return_id: "88",
    order_id: "WEB-1001",
    line_no: "2",
    shop_sku: "W-0003",
    location: "S01",
    qty: "1",
    restockable: "f",
    returned_at: T1,
  };

  it("maps an insert to return with restockable", () => {
    expect(shopReturns(shop("returns", "insert", { new: row }))).toEqual([
      {
        type: "return",
        id: "shop:return:88",
        item: { system: "shop_sku", id: "W-0003" },
        location: "S01",
        qty: 1,
        ref: "returns:88",
        occurredAt: T1_ISO,
        fields: { restockable: false },
      },
    ]);
    expect(commandsOf(shopReturns(shop("returns", "insert", { new: { ...row, restockable: "t" } })))[0]?.fields).toEqual({ restockable: true });
    expect(mappingError(() => shopReturns(shop("returns", "insert", { new: { ...row, restockable: "maybe" } }))).field).toBe("new.restockable");
    expect(mappingError(() => shopReturns(shop("returns", "delete", { old: { return_id: "88" } }))).reason).toBe("unsupported_change");
  });
});

// ---------------------------------------------------------------------------------------------
// Resolution through a real crosswalk
// ---------------------------------------------------------------------------------------------

describe("resolved through the crosswalk", () => {
  const receipt = (over: Record<string, string>) =>
    erp("goods_receipts", "insert", {
      new: { receipt_id: "1001", item_no: "100001", location: "DC1", qty: "3", uom: "CASE", received_at: T0, ...over },
    });

  it("turns 3 CASE of 12 into 36 EA", () => {
    expect(resolveOne(crosswalk(), receipt({}), erpGoodsReceipts)).toEqual({
      kind: "commands",
      commands: [
        {
          id: "erp:0/16B3748:3",
          type: "receive",
          sku: "SKU-0001",
          location: "DC1",
          qty: 36,
          source: { system: "erp", ref: "goods_receipts:1001", lsn: "0/16B3748" },
          occurredAt: T0_ISO,
        },
      ],
    });
  });

  it("turns 1.25 KG into 1250 g and refuses 1.2345 kg", () => {
    const cw = crosswalk();
    const r = resolveOne(cw, receipt({ item_no: "200001", qty: "1.250", uom: "KG" }), erpGoodsReceipts);
    expect(r.kind === "commands" && r.commands[0]).toMatchObject({ sku: "SKU-BANANAS", qty: 1250 });
    expect(mappingError(() => resolveOne(cw, receipt({ item_no: "200001", qty: "1.2345", uom: "KG" }), erpGoodsReceipts))).toMatchObject({
      reason: "non_integral_qty",
    });
    // A variable-weight item has no EA.
    expect(mappingError(() => resolveOne(cw, receipt({ item_no: "200001", qty: "2", uom: "EA" }), erpGoodsReceipts))).toMatchObject({
      reason: "unknown_unit",
    });
  });

  it("turns a bundle line into one command per component", () => {
    const line = shop("order_lines", "insert", {
      new: { order_id: "WEB-7", line_no: "1", shop_sku: "W-PICNIC", location: "DC1", qty: "2", status: "placed", updated_at: T0 },
    });
    const r = resolveOne(crosswalk(), line, shopOrderLines);
    expect(r.kind === "commands" && r.commands.map((c) => [c.id, c.sku, "qty" in c ? c.qty : undefined])).toEqual([
      ["shop:order:WEB-7:1:reserve#SKU-0001", "SKU-0001", 4],
      ["shop:order:WEB-7:1:reserve#SKU-0003", "SKU-0003", 2],
    ]);
  });

  it("skips a gift card", () => {
    const line = shop("order_lines", "insert", {
      new: { order_id: "WEB-7", line_no: "2", shop_sku: "W-GIFT-25", location: "DC1", qty: "1", status: "placed", updated_at: T0 },
    });
    expect(resolveOne(crosswalk(), line, shopOrderLines)).toEqual({ kind: "skipped", reason: "non_inventory", sku: "SKU-GIFT-25" });
  });

  it("dead-letters an unknown shop SKU, and resolves it once the item master knows it", () => {
    const cw = crosswalk();
    const line = shop("order_lines", "insert", {
      new: { order_id: "WEB-8", line_no: "1", shop_sku: "W-NEW", location: "DC1", qty: "1", status: "placed", updated_at: T0 },
    });
    expect(mappingError(() => resolveOne(cw, line, shopOrderLines))).toMatchObject({ field: "item.shop_sku", reason: "unknown_item" });
    const fix = erpItems(erp("items", "update", { old: ITEM_ROWS.juice, new: { ...ITEM_ROWS.juice, shop_sku: "W-NEW" } })) as MappingResult;
    cw.apply(fix.items ?? [], fix.removeItems ?? []);
    const r = resolveOne(cw, line, shopOrderLines);
    expect(r.kind === "commands" && r.commands[0]).toMatchObject({
      id: "shop:order:WEB-8:1:reserve",
      sku: "SKU-0003",
      qty: 1,
      reservationId: "shop:WEB-8:1",
    });
    // The old shop code is no longer the juice.
    expect(cw.lookup("shop_sku", "W-0003")).toBeUndefined();
  });

  it("resolves every kind of movement into a valid canonical command", () => {
    const cw = crosswalk();
    const cases: Array<[Change, (c: Change) => MappingResult | ReadonlyArray<MappedCommand>, Record<string, unknown>]> = [
      [
        erp("stock_adjustments", "insert", {
          new: { adjustment_id: "7", item_no: "100003", location: "S01", qty: "-2", uom: "EA", reason: "damaged", adjusted_at: T1 },
        }),
        erpStockAdjustments,
        { type: "adjust", sku: "SKU-0003", qty: -2, reason: "damaged" },
      ],
      [
        erp("stock_counts", "insert", {
          new: { count_id: "9", item_no: "200001", location: "S02", counted_qty: "12.250", uom: "KG", counted_at: T1 },
        }),
        erpStockCounts,
        { type: "count", sku: "SKU-BANANAS", qty: 12250 },
      ],
      [
        erp("item_locations", "insert", { new: { item_no: "200001", location: "DC1", safety_stock: "5000", reorder_point: "20000" } }),
        erpItemLocations,
        { type: "set_policy", sku: "SKU-BANANAS", safetyStock: 5000, reorderPoint: 20000 },
      ],
      [
        erp("transfers", "insert", {
          new: {
            transfer_id: "TR-1",
            item_no: "100001",
            from_location: "DC1",
            to_location: "S02",
            qty: "12",
            status: "shipped",
            shipped_at: T0,
            received_at: null,
          },
        }),
        erpTransfers,
        { type: "transfer_out", id: "erp:transfer:TR-1:out", sku: "SKU-0001", qty: 12, transferId: "TR-1", to: "S02" },
      ],
      [
        shop("returns", "insert", {
          new: { return_id: "88", order_id: "WEB-1", line_no: "1", shop_sku: "W-0003", location: "S01", qty: "1", restockable: "t", returned_at: T1 },
        }),
        shopReturns,
        { type: "return", id: "shop:return:88", sku: "SKU-0003", restockable: true },
      ],
    ];
    for (const [c, map, expected] of cases) {
      const r = resolveOne(cw, c, map);
      expect(r.kind === "commands" && r.commands[0], c.table).toMatchObject(expected);
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

describe("the demo sources in tally.config.ts", () => {
  it("decode as valid source configuration", () => {
    const decoded = decodeTallyConfig(config);
    expect(decoded.sources.erp?.tables["public.items"]?.oldRow).toBe("full");
    expect(decoded.sources.erp?.tables["public.transfers"]?.oldRow).toBe("full");
    expect(decoded.sources.erp?.tables["public.goods_receipts"]?.oldRow).toBe("key");
    expect(decoded.sources.shop?.tables["public.order_lines"]?.oldRow).toBe("full");
    // The item master first, so the crosswalk knows every item before policies and balances.
    expect(decoded.sources.erp?.snapshot.map((s) => [s.table, s.key])).toEqual([
      ["public.items", ["item_no"]],
      ["public.item_locations", ["item_no", "location"]],
      ["public.stock_on_hand", ["item_no", "location"]],
      ["public.price_lists", ["price_list"]],
      ["public.item_prices", ["item_no", "price_list", "valid_from"]],
    ]);
    expect(decoded.sources.erp?.tables["public.items"]?.map).toBe(erpSource.tables["public.items"].map);
    expect(Object.keys(decoded.sources.shop?.tables ?? {})).toEqual(Object.keys(shopSource.tables));
  });
});

// ---------------------------------------------------------------------------------------------
// The schemas against a real Postgres
// ---------------------------------------------------------------------------------------------

describe("demo schemas and seed (real Postgres)", () => {
  let tc: TestContext;
  let admin: postgres.Sql;
  let erpSql: postgres.Sql;
  let shopSql: postgres.Sql;
  let shopDb: string;

  beforeAll(async () => {
    tc = await testContext();
    admin = postgres(tc.adminUrl, { max: 1, onnotice: () => {} });
    shopDb = `${new URL(tc.databaseUrl).pathname.slice(1)}_shop`;
    await admin.unsafe(`create database ${shopDb}`);
    const shopUrl = new URL(tc.databaseUrl);
    shopUrl.pathname = `/${shopDb}`;
    erpSql = postgres(tc.databaseUrl, { max: 2, onnotice: () => {} });
    shopSql = postgres(shopUrl.toString(), { max: 2, onnotice: () => {} });
  });

  afterAll(async () => {
    await erpSql?.end({ timeout: 5 });
    await shopSql?.end({ timeout: 5 });
    if (shopDb) await admin?.unsafe(`drop database if exists ${shopDb} with (force)`);
    await admin?.end({ timeout: 5 });
  });

  /** Every column of `table` as text, as pgoutput would send it. */
  async function textRows(sql: postgres.Sql, table: string): Promise<Array<RawRow>> {
    const cols = await sql<Array<{ column_name: string }>>`
      select column_name from information_schema.columns where table_schema = 'public' and table_name = ${table} order by ordinal_position`;
    const list = cols.map((c) => `${c.column_name}::text as ${c.column_name}`).join(", ");
    return (await sql.unsafe(`select ${list} from public.${table}`)) as unknown as Array<RawRow>;
  }

  it("applies twice, with a primary key on every table and full replica identity where the mappings read old rows", async () => {
    await applyDemoSchemas(erpSql, shopSql);
    await applyDemoSchemas(erpSql, shopSql);
    const identity = async (sql: postgres.Sql) =>
      Object.fromEntries(
        (
          await sql<Array<{ table: string; ident: string; pk: boolean }>>`
            select c.relname as table, c.relreplident as ident,
                   exists (select 1 from pg_index i where i.indrelid = c.oid and i.indisprimary) as pk
            from pg_class c join pg_namespace n on n.oid = c.relnamespace
            where n.nspname = 'public' and c.relkind = 'r'`
        ).map((r) => [r.table, { ident: r.ident, pk: r.pk }]),
      );
    expect(await identity(erpSql)).toEqual({
      items: { ident: "f", pk: true },
      item_locations: { ident: "d", pk: true },
      goods_receipts: { ident: "d", pk: true },
      stock_adjustments: { ident: "d", pk: true },
      stock_counts: { ident: "d", pk: true },
      transfers: { ident: "f", pk: true },
      stock_on_hand: { ident: "d", pk: true },
      price_lists: { ident: "d", pk: true },
      item_prices: { ident: "f", pk: true },
      inbound_movements: { ident: "d", pk: true },
      inbound_journal: { ident: "d", pk: true },
      inbound_requisitions: { ident: "d", pk: true },
    });
    expect(await identity(shopSql)).toEqual({
      orders: { ident: "d", pk: true },
      order_lines: { ident: "f", pk: true },
      returns: { ident: "d", pk: true },
    });
    // Every captured or snapshotted table exists in its database.
    const erpTables = [...Object.keys(erpSource.tables), ...erpSource.snapshot.map((s) => s.table)].map((t) => t.replace("public.", ""));
    expect(Object.keys(await identity(erpSql))).toEqual(expect.arrayContaining(erpTables));
    expect(Object.keys(await identity(shopSql))).toEqual(expect.arrayContaining(Object.keys(shopSource.tables).map((t) => t.replace("public.", ""))));
  });

  it("seeds the catalog once, and its rows map and resolve cleanly", async () => {
    const first = await seedDemo(erpSql, shopSql, { orders: true });
    expect(first).toEqual({ items: DEMO_ITEMS.length, policies: DEMO_POLICIES.length, stock: DEMO_STOCK.length, orderLines: 4 });
    expect(await seedDemo(erpSql, shopSql, { orders: true })).toEqual({ items: 0, policies: 0, stock: 0, orderLines: 0 });
    expect(DEMO_ITEMS.filter((i) => i.kind === "stock")).toHaveLength(20);

    // The item master, as the CDC reader would see it, builds the crosswalk.
    const cw = new Crosswalk();
    for (const row of await textRows(erpSql, "items")) cw.apply(erpItemsSnapshot(new RowView("public.items", "new", row)).items ?? []);
    expect(cw.size).toBe(DEMO_ITEMS.length);

    // Opening balances resolve to the documented base quantities.
    const counts = (await textRows(erpSql, "stock_on_hand")).flatMap((row) =>
      erpStockOnHand(new RowView("public.stock_on_hand", "new", row)).map((m) => cw.resolve(m, ctx("erp"))),
    );
    const got = counts.flatMap((r) => (r.kind === "commands" ? r.commands.map((c) => [c.sku, c.location, "qty" in c ? c.qty : undefined]) : []));
    expect(got).toHaveLength(DEMO_STOCK.length);
    expect(got).toEqual(expect.arrayContaining(DEMO_STOCK.map((s) => [s.sku, s.location, s.baseQty])));
    expect(got).toContainEqual(["SKU-0001", "DC1", 120]);
    expect(got).toContainEqual(["SKU-BANANAS", "S01", 18500]);

    // Policies resolve too.
    const policies = (await textRows(erpSql, "item_locations")).flatMap((row) =>
      erpItemLocationsSnapshot(new RowView("public.item_locations", "new", row)).map((m) => cw.resolve(m, ctx("erp"))),
    );
    expect(policies.flatMap((r) => (r.kind === "commands" ? r.commands : []))).toHaveLength(DEMO_POLICIES.length);
    expect(resolveOne(cw, erp("item_locations", "insert", { new: (await textRows(erpSql, "item_locations"))[0]! }), erpItemLocations).kind).toBe(
      "commands",
    );

    // Order lines: the picnic kit fans out, the gift card is skipped.
    const lines = await textRows(shopSql, "order_lines");
    const outcomes = lines.map((row) => resolveOne(cw, shop("order_lines", "insert", { new: row }), shopOrderLines));
    expect(outcomes.filter((o) => o.kind === "skipped")).toHaveLength(1);
    expect(outcomes.flatMap((o) => (o.kind === "commands" ? o.commands.map((c) => c.sku) : [])).sort()).toEqual([
      "SKU-0001",
      "SKU-0003",
      "SKU-0003",
      "SKU-0010",
    ]);
  });

  it("enforces the demo's rules in the database too", async () => {
    await expect(erpSql`insert into items (item_no, sku, kind, base_uom) values ('x1', 'SKU-X1', 'variable_weight', 'EA')`).rejects.toThrow(
      /items_weight_in_kg/,
    );
    await expect(erpSql`insert into items (item_no, sku, kind) values ('x2', 'SKU-X2', 'bundle')`).rejects.toThrow(/items_bundle_components/);
    // A received transfer gets its received_at stamped.
    await erpSql`insert into transfers (transfer_id, item_no, from_location, to_location, qty) values ('TR-T', '100001', 'DC1', 'S01', 12)`;
    await erpSql`update transfers set status = 'received' where transfer_id = 'TR-T'`;
    const [t] = await erpSql<Array<{ received_at: Date | null }>>`select received_at from transfers where transfer_id = 'TR-T'`;
    expect(t?.received_at).toBeInstanceOf(Date);
  });
});
