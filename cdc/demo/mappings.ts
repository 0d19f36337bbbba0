/**
 * The demo retailer's sources: how the tables of the reference ERP (`cdc/demo/erp.sql`) and shop
 * (`cdc/demo/shop.sql`) map to canonical commands. Every mapping is a pure function of one change;
 * it reads columns only through RowView accessors and throws MappingError (naming the field) for a
 * row it cannot map, so the change is dead-lettered instead of guessed at.
 *
 * A real retailer's tables differ: copy this file and adapt the column names and rules.
 *
 * Command ids: movements with a business key (transfers, order lines, returns) use it, so the same
 * movement keeps its id even if the slot is dropped and re-created (new LSNs); journal rows
 * (receipts, adjustments, counts, policies) use the default `<source>:<commit lsn>:<index>`, which
 * is stable across replays of the same slot. Snapshot rows get their ids from the reader.
 */
import type { SourceConfig } from "../../src/platform/index.ts";
import {
  MappingError,
  RowView,
  type CatalogFact,
  type Change,
  type ItemDefinition,
  type ItemRef,
  type MappedCommand,
  type MappingResult,
  type OnHandRow,
  type TableMapping,
  toMinorUnits,
} from "../../src/contract/index.ts";

/** What `tally.config.ts` accepts for one source (defaults not yet applied). */
export type SourceInput = typeof SourceConfig.Encoded;

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/** The new row of an insert or update. */
function newRow(c: Change): RowView {
  if (!c.new) throw new MappingError("new", `${c.op} on ${c.table} carries no new row`, "missing_row");
  return c.new;
}

/** The old row of an update or delete: complete only under REPLICA IDENTITY FULL. */
function oldRow(c: Change): RowView {
  if (!c.old)
    throw new MappingError(
      "old",
      `${c.op} on ${c.table} carries no old row (the table needs REPLICA IDENTITY FULL and oldRow: 'full')`,
      "missing_old_row",
    );
  return c.old;
}

/**
 * The new row with every value Postgres did not send (an unchanged TOAST value) taken from the old
 * row, which carries it under REPLICA IDENTITY FULL.
 */
function completeNewRow(c: Change): RowView {
  const row = newRow(c);
  const old = c.old;
  if (!old) return row;
  const raw: Record<string, string | null | undefined> = { ...row.raw };
  let filled = false;
  for (const [column, value] of Object.entries(raw))
    if (value === undefined && old.has(column)) {
      raw[column] = old.raw[column];
      filled = true;
    }
  return filled ? new RowView(row.table, "new", raw) : row;
}

/** A table whose rows are journal entries: only inserts have a meaning. */
function insertOnly(what: string, remedy: string, map: (row: RowView, c: Change) => ReadonlyArray<MappedCommand>): TableMapping {
  return (c) => {
    if (c.op !== "insert") throw new MappingError("op", `${what} are immutable; ${remedy}`, "unsupported_change");
    return map(newRow(c), c);
  };
}

/** Refuses a change to columns a status transition must not alter (it would desynchronise the ledger). */
function requireUnchanged(old: RowView, row: RowView, columns: ReadonlyArray<string>, what: string): void {
  for (const column of columns)
    if (old.optionalText(column) !== row.optionalText(column))
      throw new MappingError(
        `new.${column}`,
        `${what} cannot change ${column} (${JSON.stringify(old.optionalText(column))} → ${JSON.stringify(row.optionalText(column))}); cancel it and create a new one`,
        "unsupported_change",
      );
}

/** A timestamptz column that may be NULL: undefined (the commit time is used) when it is. */
function optionalTimestamp(row: RowView, column: string): string | undefined {
  return row.optionalText(column) === null ? undefined : row.timestamp(column);
}

/** A non-empty text value (an empty or blank identifier is a bad value, not an identifier). */
function nonEmpty(row: RowView, column: string): string {
  const v = row.text(column);
  if (v.trim() === "") throw new MappingError(`${row.which}.${column}`, "is empty", "bad_value");
  return v;
}

// ---------------------------------------------------------------------------------------------
// ERP
// ---------------------------------------------------------------------------------------------

/** ERP units of measure → crosswalk unit names (variable-weight items count grams, sold in kg). */
const ERP_UNITS: Readonly<Record<string, string>> = { EA: "EA", CASE: "CASE", KG: "kg" };

/** The unit of a quantity column in an ERP row. */
export function erpUom(row: RowView, column = "uom"): string {
  const v = row.text(column);
  const unit = ERP_UNITS[v];
  if (unit === undefined)
    throw new MappingError(`${row.which}.${column}`, `expected one of ${Object.keys(ERP_UNITS).join(", ")}, got ${JSON.stringify(v)}`);
  return unit;
}

const erpItem = (row: RowView): ItemRef => ({ system: "erp_item", id: nonEmpty(row, "item_no") });

function bundleComponents(row: RowView): Array<{ sku: string; qty: number }> {
  const field = `${row.which}.components`;
  const text = row.optionalText("components");
  if (text === null) return [];
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new MappingError(field, `expected JSON, got ${JSON.stringify(text.slice(0, 60))}`);
  }
  if (!Array.isArray(parsed)) throw new MappingError(field, `expected a JSON array of {"sku", "qty"}`);
  return parsed.map((c: unknown, i) => {
    const entry = (typeof c === "object" && c !== null ? c : {}) as { sku?: unknown; qty?: unknown };
    if (typeof entry.sku !== "string" || entry.sku.trim() === "")
      throw new MappingError(`${field}[${i}].sku`, `expected a SKU, got ${JSON.stringify(entry.sku ?? null)}`);
    if (typeof entry.qty !== "number" || !Number.isSafeInteger(entry.qty) || entry.qty < 1)
      throw new MappingError(`${field}[${i}].qty`, `expected a positive integer, got ${JSON.stringify(entry.qty ?? null)}`);
    return { sku: entry.sku, qty: entry.qty };
  });
}

/**
 * An ERP item row → its crosswalk definition. `variable_weight` items are stock counted in grams
 * and received or sold in kg (1.25 kg = 1250 g); `case_qty` is base units per CASE.
 */
export function erpItemDefinition(row: RowView): ItemDefinition {
  const itemNo = nonEmpty(row, "item_no");
  const sku = nonEmpty(row, "sku");
  const erpKind = row.text("kind");
  const baseUom = row.text("base_uom");
  if (baseUom !== "EA" && baseUom !== "KG") throw new MappingError(`${row.which}.base_uom`, `expected EA or KG, got ${JSON.stringify(baseUom)}`);
  if (erpKind === "variable_weight" && baseUom !== "KG")
    throw new MappingError(`${row.which}.base_uom`, `a variable-weight item is measured in KG, got ${JSON.stringify(baseUom)}`);
  let kind: ItemDefinition["kind"];
  switch (erpKind) {
    case "stock":
    case "variable_weight":
      kind = "stock";
      break;
    case "non_inventory":
    case "bundle":
      kind = erpKind;
      break;
    default:
      throw new MappingError(`${row.which}.kind`, `expected stock, non_inventory, bundle or variable_weight, got ${JSON.stringify(erpKind)}`);
  }
  const perBase = baseUom === "KG" ? 1000 : 1;
  const units: Record<string, number> = baseUom === "KG" ? { kg: 1000 } : {};
  if (row.optionalText("case_qty") !== null) {
    const caseQty = row.int("case_qty");
    if (caseQty < 1) throw new MappingError(`${row.which}.case_qty`, `expected a positive integer, got ${caseQty}`);
    units.CASE = caseQty * perBase;
  }
  const components = bundleComponents(row);
  if (kind === "bundle" && components.length === 0) throw new MappingError(`${row.which}.components`, "a bundle needs at least one component");
  if (kind !== "bundle" && components.length > 0) throw new MappingError(`${row.which}.components`, `only bundles have components (kind ${erpKind})`);
  const identifiers: Array<ItemRef> = [{ system: "erp_item", id: itemNo }];
  for (const [column, system] of [
    ["barcode", "barcode"],
    ["plu", "plu"],
    ["shop_sku", "shop_sku"],
  ] as const) {
    const id = row.optionalText(column);
    if (id !== null && id.trim() !== "") identifiers.push({ system, id });
  }
  return {
    sku,
    kind,
    baseUnit: baseUom === "KG" ? "g" : "EA",
    ...(Object.keys(units).length > 0 ? { units } : {}),
    ...(kind === "bundle" ? { components } : {}),
    identifiers,
  };
}

/** Item master → crosswalk: upsert on insert/update (and drop a renamed SKU), remove on delete. */
export const erpItems: TableMapping = (c): MappingResult => {
  if (c.op === "delete") return { removeItems: [nonEmpty(oldRow(c), "sku")] };
  const def = erpItemDefinition(completeNewRow(c));
  const previous = c.op === "update" && c.old?.has("sku") ? c.old.text("sku") : null;
  return previous !== null && previous !== def.sku ? { items: [def], removeItems: [previous] } : { items: [def] };
};

/** A set_policy for the row's item and location (the values given, or the row's). */
function setPolicy(row: RowView, values?: { safetyStock: number; reorderPoint: number }): MappedCommand {
  return {
    type: "set_policy",
    item: erpItem(row),
    location: nonEmpty(row, "location"),
    ref: `item_locations:${row.text("item_no")}:${row.text("location")}`,
    fields: values ?? { safetyStock: row.int("safety_stock"), reorderPoint: row.int("reorder_point") },
  };
}

/** Stock policy per item and location; deleting the policy resets it to zero (the old key suffices). */
export const erpItemLocations: TableMapping = (c) =>
  c.op === "delete" ? [setPolicy(oldRow(c), { safetyStock: 0, reorderPoint: 0 })] : [setPolicy(newRow(c))];

/** A receipt's optional unit cost (in minor units) and currency; a cost needs its currency. */
function receiptCost(row: RowView): Record<string, unknown> {
  // An ERP from before these columns sends neither.
  const cost = row.has("unit_cost") ? row.optionalText("unit_cost") : null;
  const currency = row.has("currency") ? row.optionalText("currency") : null;
  if (cost === null) return currency === null ? {} : { currency };
  if (currency === null) throw new MappingError(`${row.which}.currency`, "is null but unit_cost is set: a cost needs its currency", "bad_value");
  return { unitCost: Number(toMinorUnits(row.decimal("unit_cost"), currency)), currency };
}

export const erpGoodsReceipts: TableMapping = insertOnly("goods receipts", "post an adjustment", (row) => {
  const fields = receiptCost(row);
  return [
    {
      type: "receive",
      item: erpItem(row),
      location: nonEmpty(row, "location"),
      qty: row.decimal("qty"),
      uom: erpUom(row),
      ref: `goods_receipts:${row.text("receipt_id")}`,
      occurredAt: row.timestamp("received_at"),
      ...(Object.keys(fields).length > 0 ? { fields } : {}),
    },
  ];
});

const adjustment = (row: RowView): ReadonlyArray<MappedCommand> => [
  {
    type: "adjust",
    item: erpItem(row),
    location: nonEmpty(row, "location"),
    qty: row.decimal("qty"),
    uom: erpUom(row),
    ref: `stock_adjustments:${row.text("adjustment_id")}`,
    occurredAt: row.timestamp("adjusted_at"),
    fields: { reason: nonEmpty(row, "reason") },
  },
];

/** The `origin` of an adjustment the ERP imported from Tally's write-back: not captured again (no echo). */
const WRITE_BACK_ORIGIN = "tally";

export const erpStockAdjustments: TableMapping = insertOnly("stock adjustments", "post another adjustment", (row) =>
  row.has("origin") && row.optionalText("origin") === WRITE_BACK_ORIGIN ? [] : adjustment(row),
);

export const erpStockCounts: TableMapping = insertOnly("stock counts", "post a new count", (row) => [
  {
    type: "count",
    item: erpItem(row),
    location: nonEmpty(row, "location"),
    qty: row.decimal("counted_qty"),
    uom: erpUom(row),
    ref: `stock_counts:${row.text("count_id")}`,
    occurredAt: row.timestamp("counted_at"),
  },
]);

function transferOut(source: string, row: RowView): MappedCommand {
  const id = nonEmpty(row, "transfer_id");
  return {
    type: "transfer_out",
    id: `${source}:transfer:${id}:out`,
    item: erpItem(row),
    location: nonEmpty(row, "from_location"),
    qty: row.int("qty"),
    ref: `transfers:${id}`,
    occurredAt: row.timestamp("shipped_at"),
    fields: { transferId: id, to: nonEmpty(row, "to_location") },
  };
}

function transferIn(source: string, row: RowView): MappedCommand {
  const id = nonEmpty(row, "transfer_id");
  const at = optionalTimestamp(row, "received_at");
  return {
    type: "transfer_in",
    id: `${source}:transfer:${id}:in`,
    item: erpItem(row),
    location: nonEmpty(row, "to_location"),
    qty: row.int("qty"),
    ref: `transfers:${id}`,
    ...(at !== undefined ? { occurredAt: at } : {}),
    fields: { transferId: id, from: nonEmpty(row, "from_location") },
  };
}

/**
 * Transfers: inserted `shipped` → transfer_out at the origin; `shipped → received` →
 * transfer_in at the destination (inserted already `received` → both). Ids are business keys.
 */
export const erpTransfers: TableMapping = (c) => {
  if (c.op === "delete") throw new MappingError("op", "transfers are not deleted; book a transfer back instead", "unsupported_change");
  const row = newRow(c);
  const status = row.text("status");
  if (status !== "shipped" && status !== "received")
    throw new MappingError("new.status", `expected shipped or received, got ${JSON.stringify(status)}`);
  if (c.op === "insert") return status === "shipped" ? [transferOut(c.source, row)] : [transferOut(c.source, row), transferIn(c.source, row)];
  const old = oldRow(c);
  const before = old.text("status");
  requireUnchanged(old, row, ["transfer_id", "item_no", "from_location", "to_location", "qty"], "a transfer");
  if (before === status) return [];
  if (before === "shipped" && status === "received") return [transferIn(c.source, row)];
  throw new MappingError("new.status", `a transfer cannot go from ${JSON.stringify(before)} to ${JSON.stringify(status)}`, "unsupported_change");
};

/** Snapshot of the item master: every item that existed before the slot, into the crosswalk. */
export const erpItemsSnapshot = (row: RowView): MappingResult => ({ items: [erpItemDefinition(row)] });

/** Snapshot of the policies that existed before the slot (ids from the reader). */
export const erpItemLocationsSnapshot = (row: RowView): ReadonlyArray<MappedCommand> => [setPolicy(row)];

/** Opening balance: one `count` per item and location, in the row's unit (id from the reader). */
export const erpStockOnHand = (row: RowView): ReadonlyArray<MappedCommand> => [
  {
    type: "count",
    item: erpItem(row),
    location: nonEmpty(row, "location"),
    qty: row.decimal("qty"),
    uom: erpUom(row),
    ref: `stock_on_hand:${row.text("item_no")}:${row.text("location")}`,
  },
];

// ---------------------------------------------------------------------------------------------
// ERP catalog: item names and statuses, price lists, prices
// ---------------------------------------------------------------------------------------------

const CATALOG_STATUSES = ["active", "discontinued", "blocked"] as const;

/** An item's free-form attributes (a JSON object); an ERP from before the column sends none. */
function itemAttributes(row: RowView): Record<string, unknown> {
  const text = row.has("attributes") ? row.optionalText("attributes") : null;
  if (text === null) return {};
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new MappingError(`${row.which}.attributes`, `expected JSON, got ${JSON.stringify(text.slice(0, 60))}`);
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed))
    throw new MappingError(`${row.which}.attributes`, "expected a JSON object");
  return parsed as Record<string, unknown>;
}

/** An ERP item row's catalog fact: its description is the name channels show; loose items are priced per kg. */
export function erpCatalogItem(row: RowView): CatalogFact {
  const status = row.has("status") ? row.text("status") : "active";
  if (!(CATALOG_STATUSES as ReadonlyArray<string>).includes(status))
    throw new MappingError(`${row.which}.status`, `expected ${CATALOG_STATUSES.join(", ")}, got ${JSON.stringify(status)}`);
  const sku = nonEmpty(row, "sku");
  const description = row.optionalText("description");
  return {
    kind: "item",
    sku,
    name: description === null || description.trim() === "" ? sku : description,
    status: status as (typeof CATALOG_STATUSES)[number],
    ...(row.text("base_uom") === "KG" ? { unit: "kg" } : {}),
    attributes: itemAttributes(row),
  };
}

/** The item master with its catalog facts: the crosswalk as `erpItems` keeps it, and each item's name and status. */
export const erpCatalogItems: TableMapping = (c): MappingResult => {
  const result = erpItems(c) as MappingResult;
  const removed = (result.removeItems ?? []).map((sku): CatalogFact => ({ kind: "item_removed", sku }));
  const item = c.op === "delete" ? null : erpCatalogItem(completeNewRow(c));
  const renamedFrom = result.removeItems?.[0];
  const named = item === null ? [] : [renamedFrom !== undefined && item.kind === "item" ? { ...item, renamedFrom } : item];
  return { ...result, catalog: [...named, ...removed] };
};

const priceList = (row: RowView): CatalogFact & { kind: "price_list" } => ({
  kind: "price_list",
  priceList: nonEmpty(row, "price_list"),
  channel: nonEmpty(row, "channel"),
  currency: row.text("currency"),
});

/** Price lists: which channel each prices, in which currency. */
export const erpPriceLists: TableMapping = (c): MappingResult => {
  if (c.op === "delete") return { catalog: [{ kind: "price_list_removed", priceList: nonEmpty(oldRow(c), "price_list") }] };
  const list = priceList(newRow(c));
  const previous = c.op === "update" && c.old?.has("price_list") ? c.old.text("price_list") : null;
  return { catalog: previous !== null && previous !== list.priceList ? [{ kind: "price_list_removed", priceList: previous }, list] : [list] };
};

/** The key of an item price: a price is replaced by the one with the same item, list and start. */
const priceRemoved = (row: RowView): CatalogFact => ({
  kind: "price_removed",
  item: erpItem(row),
  priceList: nonEmpty(row, "price_list"),
  validFrom: row.timestamp("valid_from"),
});

function itemPrice(row: RowView): CatalogFact {
  return {
    kind: "price",
    item: erpItem(row),
    priceList: nonEmpty(row, "price_list"),
    validFrom: row.timestamp("valid_from"),
    validTo: optionalTimestamp(row, "valid_to") ?? null,
    amount: row.decimal("amount"),
  };
}

/** Item prices: a price (regular or a promotion's window) per item, list and start; a moved start replaces the old one. */
export const erpItemPrices: TableMapping = (c): MappingResult => {
  if (c.op === "delete") return { catalog: [priceRemoved(oldRow(c))] };
  const price = itemPrice(newRow(c));
  if (c.op === "insert") return { catalog: [price] };
  const old = oldRow(c);
  const moved = ["item_no", "price_list", "valid_from"].some((k) => old.optionalText(k) !== newRow(c).optionalText(k));
  return { catalog: moved ? [priceRemoved(old), price] : [price] };
};

/** Snapshot of the item master with its catalog facts. */
export const erpCatalogItemsSnapshot = (row: RowView): MappingResult => ({ items: [erpItemDefinition(row)], catalog: [erpCatalogItem(row)] });

/** The ERP's stock on hand per item and location, in the row's unit (`tally reconcile erp`). */
const erpOnHand = (row: RowView): OnHandRow => ({
  item: erpItem(row),
  location: nonEmpty(row, "location"),
  qty: row.decimal("qty"),
  uom: erpUom(row),
});

/** The demo ERP (`TALLY_SOURCE_ERP_URL`). */
export const erpSource = {
  tables: {
    "public.items": { map: erpCatalogItems, oldRow: "full" },
    "public.item_locations": { map: erpItemLocations },
    "public.goods_receipts": { map: erpGoodsReceipts },
    "public.stock_adjustments": { map: erpStockAdjustments },
    "public.stock_counts": { map: erpStockCounts },
    "public.transfers": { map: erpTransfers, oldRow: "full" },
    "public.price_lists": { map: erpPriceLists },
    "public.item_prices": { map: erpItemPrices, oldRow: "full" },
  },
  // Read in order inside the slot's exported snapshot: the item master first (so the crosswalk
  // knows every item), then the policies and the opening balances.
  snapshot: [
    { table: "public.items", key: ["item_no"], map: erpCatalogItemsSnapshot },
    { table: "public.item_locations", key: ["item_no", "location"], map: erpItemLocationsSnapshot },
    { table: "public.stock_on_hand", key: ["item_no", "location"], map: erpStockOnHand },
    // The catalog's price lists, then their prices (each names a list).
    { table: "public.price_lists", key: ["price_list"], map: (row) => ({ catalog: [priceList(row)] }) },
    { table: "public.item_prices", key: ["item_no", "price_list", "valid_from"], map: (row) => ({ catalog: [itemPrice(row)] }) },
  ],
  // What `tally reconcile erp` compares with the ledger (the ERP is the system of record).
  onHand: { table: "public.stock_on_hand", map: erpOnHand },
  systemOfRecord: "erp",
  // The cdc role compares them every 5 minutes (report only): the dashboard's reconciliation block.
  reconcileEvery: "5m",
  // Tally's own movements (POS, shop, API) and journal lines go back into the ERP's inbound tables
  // (cdc/demo/erp.sql), whose import job books them on stock_on_hand. Variable-weight items are
  // counted in g by Tally and in KG by the ERP.
  writeBack: {
    movements: "public.inbound_movements",
    journal: "public.inbound_journal",
    requisitions: "public.inbound_requisitions",
    units: { g: { unit: "KG", factor: 1000 } },
  },
} satisfies SourceInput;

// ---------------------------------------------------------------------------------------------
// Shop
// ---------------------------------------------------------------------------------------------

const shopItem = (row: RowView): ItemRef => ({ system: "shop_sku", id: nonEmpty(row, "shop_sku") });

function orderLineCommand(type: "reserve" | "release" | "fulfill", source: string, row: RowView, occurredAt?: string): MappedCommand {
  const order = nonEmpty(row, "order_id");
  const line = row.int("line_no");
  return {
    type,
    id: `${source}:order:${order}:${line}:${type}`,
    item: shopItem(row),
    location: nonEmpty(row, "location"),
    qty: row.int("qty"),
    ref: `order_lines:${order}:${line}`,
    ...(occurredAt !== undefined ? { occurredAt } : {}),
    fields: { reservationId: `${source}:${order}:${line}` },
  };
}

/**
 * Order lines: inserted `placed` → reserve; `placed → cancelled` → release; `placed → shipped` →
 * fulfill; a deleted placed line → release. Returns arrive through `returns`, so `→ returned` and
 * every other transition has no stock effect. Ids are `<source>:order:<order>:<line>:<type>`; each
 * names the order line's hold, `<source>:<order>:<line>`. A line whose reserve was refused (the
 * `hold_refused` event tells the shop) still ships or cancels: its release is a rejected no-op and
 * its shipment is recorded as goods leaving on hand (`fulfill_unreserved`).
 */
export const shopOrderLines: TableMapping = (c) => {
  if (c.op === "delete") {
    const old = oldRow(c);
    return old.text("status") === "placed" ? [orderLineCommand("release", c.source, old)] : [];
  }
  const row = newRow(c);
  const status = row.text("status");
  if (!["placed", "cancelled", "shipped", "returned"].includes(status))
    throw new MappingError("new.status", `expected placed, cancelled, shipped or returned, got ${JSON.stringify(status)}`);
  if (c.op === "insert") {
    if (status === "placed") return [orderLineCommand("reserve", c.source, row, row.timestamp("updated_at"))];
    if (status === "cancelled") return [];
    throw new MappingError("new.status", `an order line is inserted as placed, got ${JSON.stringify(status)}`, "unsupported_change");
  }
  const old = oldRow(c);
  const before = old.text("status");
  if (before !== "placed") return [];
  requireUnchanged(old, row, ["order_id", "line_no", "shop_sku", "location", "qty"], "a placed order line");
  if (status === "cancelled") return [orderLineCommand("release", c.source, row, row.timestamp("updated_at"))];
  if (status === "shipped") return [orderLineCommand("fulfill", c.source, row, row.timestamp("updated_at"))];
  return [];
};

/** Customer returns → `return` (restockable or damaged), id `<source>:return:<return_id>`. */
export const shopReturns: TableMapping = (c) => {
  if (c.op !== "insert") throw new MappingError("op", "returns are immutable; record a new return", "unsupported_change");
  const row = newRow(c);
  const id = row.text("return_id");
  return [
    {
      type: "return",
      id: `${c.source}:return:${id}`,
      item: shopItem(row),
      location: nonEmpty(row, "location"),
      qty: row.int("qty"),
      ref: `returns:${id}`,
      occurredAt: row.timestamp("returned_at"),
      fields: { restockable: row.bool("restockable") },
    },
  ];
};

/**
 * The demo shop (`TALLY_SOURCE_SHOP_URL`). `public.orders` is not captured: order headers move no
 * stock, and capturing them would only cost decoding work and a replica-identity requirement.
 */
export const shopSource = {
  tables: {
    "public.order_lines": { map: shopOrderLines, oldRow: "full" },
    "public.returns": { map: shopReturns },
  },
} satisfies SourceInput;
