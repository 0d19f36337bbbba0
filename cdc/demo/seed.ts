/**
 * The demo retailer's data: `applyDemoSchemas` creates the reference ERP and shop schemas
 * (`erp.sql`, `shop.sql`), `seedDemo` fills the ERP with a small catalog, stock policies and
 * opening balances. Both are idempotent. `DEMO_*` describe what is seeded, so tests can compute
 * the ledger they expect.
 */
import { readFile } from "node:fs/promises";
import type { Sql } from "../../src/platform/index.ts";

export const DEMO_LOCATIONS = ["DC1", "S01", "S02"] as const;

export interface DemoItem {
  readonly itemNo: string;
  readonly sku: string;
  readonly description: string;
  readonly kind: "stock" | "non_inventory" | "bundle" | "variable_weight";
  readonly baseUom: "EA" | "KG";
  readonly caseQty: number | null;
  readonly barcode: string | null;
  readonly plu: string | null;
  readonly shopSku: string | null;
  readonly components: ReadonlyArray<{ readonly sku: string; readonly qty: number }>;
}

export interface DemoPolicy {
  readonly itemNo: string;
  readonly location: string;
  /** In base units (EA; g for variable-weight items). */
  readonly safetyStock: number;
  readonly reorderPoint: number;
}

export interface DemoStock {
  readonly itemNo: string;
  readonly sku: string;
  readonly location: string;
  /** As stored in `stock_on_hand` (exact decimal text) in `uom`. */
  readonly qty: string;
  readonly uom: "EA" | "CASE" | "KG";
  /** The same quantity in the item's base unit: what the opening `count` sets on hand to. */
  readonly baseQty: number;
}

/** EAN-13 with its check digit, from 12 digits. */
function ean13(first12: string): string {
  const sum = [...first12].reduce((s, d, i) => s + Number(d) * (i % 2 === 0 ? 1 : 3), 0);
  return `${first12}${(10 - (sum % 10)) % 10}`;
}

const STOCK_NAMES = [
  "Sparkling water 0.5 l",
  "Still water 1.5 l",
  "Orange juice 1 l",
  "Espresso beans 1 kg",
  "Oat drink 1 l",
  "Dark chocolate 100 g",
  "Sea salt crisps 150 g",
  "Olive oil 0.75 l",
  "Spaghetti 500 g",
  "Tomato passata 700 g",
  "Basmati rice 1 kg",
  "Green tea 20 bags",
  "Dish soap 0.5 l",
  "Paper towels 4 rolls",
  "AA batteries 4 pack",
  "Toothpaste 75 ml",
  "Shampoo 250 ml",
  "Notebook A5",
  "Ballpoint pen blue",
  "Reusable tote bag",
] as const;

const pad = (n: number) => String(n).padStart(4, "0");

/** 20 stock items (SKU-0001 comes in CASEs of 12, SKU-0002 of 6), loose bananas by weight, a bundle, a gift card. */
export const DEMO_ITEMS: ReadonlyArray<DemoItem> = [
  ...STOCK_NAMES.map(
    (description, i): DemoItem => ({
      itemNo: String(100001 + i),
      sku: `SKU-${pad(i + 1)}`,
      description,
      kind: "stock",
      baseUom: "EA",
      caseQty: i === 0 ? 12 : i === 1 ? 6 : null,
      barcode: ean13(`400000000${String(i + 1).padStart(3, "0")}`),
      plu: null,
      shopSku: `W-${pad(i + 1)}`,
      components: [],
    }),
  ),
  {
    itemNo: "200001",
    sku: "SKU-BANANAS",
    description: "Bananas, loose (by weight)",
    kind: "variable_weight",
    baseUom: "KG",
    caseQty: null,
    barcode: null,
    plu: "4011",
    shopSku: "W-BANANAS",
    components: [],
  },
  {
    itemNo: "300001",
    sku: "SKU-PICNIC",
    description: "Picnic kit: 2 × sparkling water, 1 × orange juice",
    kind: "bundle",
    baseUom: "EA",
    caseQty: null,
    barcode: ean13("400000000901"),
    plu: null,
    shopSku: "W-PICNIC",
    components: [
      { sku: "SKU-0001", qty: 2 },
      { sku: "SKU-0003", qty: 1 },
    ],
  },
  {
    itemNo: "900001",
    sku: "SKU-GIFT-25",
    description: "Gift card 25",
    kind: "non_inventory",
    baseUom: "EA",
    caseQty: null,
    barcode: ean13("400000000999"),
    plu: null,
    shopSku: "W-GIFT-25",
    components: [],
  },
];

const stocked = DEMO_ITEMS.filter((i) => i.kind === "stock" || i.kind === "variable_weight");

/** Policies for every stocked item at every location (grams for bananas). */
export const DEMO_POLICIES: ReadonlyArray<DemoPolicy> = stocked.flatMap((item) =>
  DEMO_LOCATIONS.map((location): DemoPolicy => {
    const dc = location === "DC1";
    const grams = item.baseUom === "KG";
    return {
      itemNo: item.itemNo,
      location,
      safetyStock: (dc ? 10 : 2) * (grams ? 500 : 1),
      reorderPoint: (dc ? 50 : 10) * (grams ? 500 : 1),
    };
  }),
);

/** Opening balances per stocked item and location (SKU-0001 at DC1 in CASEs, bananas in KG). */
export const DEMO_STOCK: ReadonlyArray<DemoStock> = stocked.flatMap((item, i) =>
  DEMO_LOCATIONS.map((location): DemoStock => {
    if (item.baseUom === "KG") {
      const kg = { DC1: "250.000", S01: "18.500", S02: "12.250" }[location];
      return { itemNo: item.itemNo, sku: item.sku, location, qty: kg, uom: "KG", baseQty: Math.round(Number(kg) * 1000) };
    }
    if (item.caseQty === 12 && location === "DC1") return { itemNo: item.itemNo, sku: item.sku, location, qty: "10", uom: "CASE", baseQty: 120 };
    const each = location === "DC1" ? 100 + 10 * i : location === "S01" ? 20 + i : 10 + i;
    return { itemNo: item.itemNo, sku: item.sku, location, qty: String(each), uom: "EA", baseQty: each };
  }),
);

/** Price lists: the web shop's and the two seeded stores' (channels of tally.config.ts), all in EUR. */
export const DEMO_PRICE_LISTS: ReadonlyArray<{ readonly priceList: string; readonly channel: string; readonly currency: string }> = [
  { priceList: "WEB", channel: "web", currency: "EUR" },
  { priceList: "S01", channel: "store_s01", currency: "EUR" },
  { priceList: "S02", channel: "store_s02", currency: "EUR" },
];

/** Each item's regular price (EUR, per EA; bananas per kg), the same in every list, valid since the seed. */
export const DEMO_PRICES: ReadonlyArray<{ readonly itemNo: string; readonly sku: string; readonly amount: string }> = DEMO_ITEMS.map((item, i) => ({
  itemNo: item.itemNo,
  sku: item.sku,
  amount:
    item.kind === "non_inventory"
      ? "25.00"
      : item.kind === "variable_weight"
        ? "1.99"
        : item.kind === "bundle"
          ? "4.49"
          : (0.99 + 0.5 * i).toFixed(2),
}));

const schemaFile = (name: string) => new URL(`./${name}`, import.meta.url);

/** Runs one schema file in a transaction, serialised with any concurrent run on the same database. */
async function applySchema(sql: Sql, name: string): Promise<void> {
  const text = await readFile(schemaFile(name), "utf8");
  await sql.begin(async (tx) => {
    await tx`select pg_advisory_xact_lock(hashtext('tally demo schema'))`;
    await tx.unsafe(text);
  });
}

/** Creates (or leaves as they are) the demo ERP and shop tables. */
export async function applyDemoSchemas(erpSql: Sql, shopSql: Sql): Promise<void> {
  await applySchema(erpSql, "erp.sql");
  await applySchema(shopSql, "shop.sql");
}

export interface SeedOptions {
  /** Insert the opening balances into `stock_on_hand` (default true). */
  readonly stock?: boolean;
  /** Also place a few sample web orders in the shop (default false: they reserve stock). */
  readonly orders?: boolean;
}

export interface SeedSummary {
  readonly items: number;
  readonly policies: number;
  readonly stock: number;
  readonly orderLines: number;
}

/** Sample web orders (placed, fulfilled from DC1), used when `orders: true`. */
export const DEMO_ORDERS: ReadonlyArray<{ orderId: string; lines: ReadonlyArray<{ shopSku: string; location: string; qty: number }> }> = [
  {
    orderId: "WEB-1001",
    lines: [
      { shopSku: "W-0003", location: "DC1", qty: 2 },
      { shopSku: "W-PICNIC", location: "DC1", qty: 1 },
    ],
  },
  {
    orderId: "WEB-1002",
    lines: [
      { shopSku: "W-GIFT-25", location: "DC1", qty: 1 },
      { shopSku: "W-0010", location: "S01", qty: 3 },
    ],
  },
];

/**
 * Inserts the demo catalog, policies and (by default) opening balances into the ERP. Rows that
 * already exist are left as they are, so seeding twice changes nothing. Run it after
 * `applyDemoSchemas`. Returns how many rows were inserted.
 */
export async function seedDemo(erpSql: Sql, shopSql: Sql, opts: SeedOptions = {}): Promise<SeedSummary> {
  let items = 0;
  let policies = 0;
  let stock = 0;
  await erpSql.begin(async (tx) => {
    for (const i of DEMO_ITEMS) {
      const r = await tx`
        insert into items (item_no, sku, description, kind, base_uom, case_qty, barcode, plu, shop_sku, components)
        values (${i.itemNo}, ${i.sku}, ${i.description}, ${i.kind}, ${i.baseUom}, ${i.caseQty}, ${i.barcode}, ${i.plu},
                ${i.shopSku}, ${JSON.stringify(i.components)}::text::jsonb)
        on conflict do nothing`;
      items += r.count;
    }
    for (const p of DEMO_POLICIES) {
      const r = await tx`
        insert into item_locations (item_no, location, safety_stock, reorder_point)
        values (${p.itemNo}, ${p.location}, ${p.safetyStock}, ${p.reorderPoint})
        on conflict do nothing`;
      policies += r.count;
    }
    // The catalog's prices (left as they are when already there).
    for (const l of DEMO_PRICE_LISTS)
      await tx`insert into price_lists (price_list, channel, currency) values (${l.priceList}, ${l.channel}, ${l.currency}) on conflict do nothing`;
    await tx`
      insert into item_prices (item_no, price_list, amount, valid_from)
      select p."itemNo", l.price_list, p.amount::numeric, '2026-01-01T00:00:00Z'
        from jsonb_to_recordset(${tx.json(DEMO_PRICES as never)}::jsonb) as p("itemNo" text, amount text), price_lists l
       where l.price_list = any(${tx.array(DEMO_PRICE_LISTS.map((l) => l.priceList))}::text[])
      on conflict do nothing`;
    if (opts.stock ?? true)
      for (const s of DEMO_STOCK) {
        const r = await tx`
          insert into stock_on_hand (item_no, location, qty, uom) values (${s.itemNo}, ${s.location}, ${s.qty}::numeric, ${s.uom})
          on conflict do nothing`;
        stock += r.count;
      }
  });
  let orderLines = 0;
  if (opts.orders)
    await shopSql.begin(async (tx) => {
      for (const o of DEMO_ORDERS) {
        await tx`insert into orders (order_id, channel) values (${o.orderId}, 'web') on conflict do nothing`;
        for (const [n, l] of o.lines.entries()) {
          const r = await tx`
            insert into order_lines (order_id, line_no, shop_sku, location, qty, status)
            values (${o.orderId}, ${n + 1}, ${l.shopSku}, ${l.location}, ${l.qty}, 'placed')
            on conflict do nothing`;
          orderLines += r.count;
        }
      }
    });
  return { items, policies, stock, orderLines };
}
