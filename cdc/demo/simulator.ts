/**
 * The demo traffic simulator (`tally dev --demo`): a retailer's day written into the demo ERP and
 * shop databases (captured by CDC) and the POS endpoint (HTTP), at a configurable rate.
 *
 * - a catalog of `skus` items (default 2,000) over one DC and `stores` stores (default 10), onboarded
 *   into the ERP item master with policies and opening stock by `demoInit` (`onboardCatalog`); the
 *   traffic starts once CDC has brought that opening stock into the ledger (`ready`);
 * - skewed (Zipf-like) popularity: a few items sell most;
 * - online orders (reserve → ship, or cancel) placed only when the web shows stock, as a shop does;
 * - in-store sales and returns over POS, with loose bananas sold by weight and the picnic bundle, priced
 *   with tax and paid by card, cash or gift card (`DemoTill`), so the GL journal gets their money;
 * - goods receipts: the ERP replenishes what Tally reports low or out of stock, at a cost;
 * - pricing: the ERP changes a few regular prices now and then (one transaction: one catalog
 *   version), and runs a short promotion that starts a few seconds later (published when it starts).
 */
import { createHash } from "node:crypto";
import type { Logger } from "pino";
import type { KV } from "@nats-io/kv";
import type { Sql } from "../../src/platform/index.ts";
import { availabilityKey } from "../../src/wire/index.ts";
import { fromMinorUnits } from "../../src/contract/index.ts";
import { DemoTill, lineTotal, simCost } from "./till.ts";

export interface SimulatorOptions {
  readonly erp: Sql;
  readonly shop: Sql;
  /** The Tally ledger database: which items are low (the ERP's replenishment run). */
  readonly ledger: Sql;
  /** The availability KV bucket: the shop's stock check before an order. */
  readonly availability: KV;
  /** The API base URL and a token with `pos:write`, for the POS traffic. */
  readonly apiUrl: string;
  readonly token: string;
  readonly log: Logger;
  /** Events per second (orders, POS transactions, receipts…), default 20. */
  readonly rate?: number;
  readonly skus?: number;
  readonly stores?: number;
  /** The web channel's name (default `web`), whose availability the shop checks. */
  readonly webChannel?: string;
  /** The company's currency (`finance.currency`), which POS amounts are in (default EUR). */
  readonly currency?: string;
}

export interface SimulatorStats {
  orders: number;
  shipped: number;
  cancelled: number;
  notInStock: number;
  posTransactions: number;
  posReturns: number;
  weightSales: number;
  bundles: number;
  receipts: number;
  /** ERP pricing: transactions that changed regular prices, and promotions scheduled. */
  priceChanges: number;
  promotions: number;
  errors: number;
}

const pad = (n: number, w: number) => String(n).padStart(w, "0");

/** EAN-13 with its check digit, from 12 digits. */
function ean13(first12: string): string {
  const sum = [...first12].reduce((s, d, i) => s + Number(d) * (i % 2 === 0 ? 1 : 3), 0);
  return `${first12}${(10 - (sum % 10)) % 10}`;
}

/** The simulated catalog's item `i` (0-based). */
export const simItem = (i: number) => ({
  itemNo: String(500001 + i),
  sku: `SKU-S${pad(i + 1, 5)}`,
  shopSku: `W-S${pad(i + 1, 5)}`,
  barcode: ean13(`41${pad(i + 1, 10)}`),
  caseQty: i % 5 === 0 ? 12 : null,
});

export const storeIds = (stores: number): Array<string> => Array.from({ length: stores }, (_, i) => `S${pad(i + 1, 2)}`);

/** Samples ranks 0..n−1 with probability ∝ 1/(rank+1)^s. */
export class Zipf {
  readonly #cumulative: Float64Array;
  constructor(n: number, s = 1.07) {
    this.#cumulative = new Float64Array(n);
    let total = 0;
    for (let k = 0; k < n; k++) this.#cumulative[k] = total += 1 / (k + 1) ** s;
    for (let k = 0; k < n; k++) this.#cumulative[k]! /= total;
  }
  sample(random: () => number = Math.random): number {
    const u = random();
    let lo = 0;
    let hi = this.#cumulative.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.#cumulative[mid]! < u) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}

const randInt = (lo: number, hi: number) => lo + Math.floor(Math.random() * (hi - lo + 1));

/**
 * Onboards the simulated catalog into the ERP (items, policies, opening stock) where it is not
 * there yet. Idempotent: items already present are left alone. Returns how many items were new.
 * The opening stock goes in as goods receipts (captured as they stream), or with `opening:
 * "stock_on_hand"` as opening balances, which only the source's initial snapshot reads: the fast
 * way, for a catalog written before the slot exists (one `count` per item and location, no receipts).
 * `storePolicies: false` sets a policy (safety stock, reorder point) at the DC only.
 */
export async function onboardCatalog(
  erp: Sql,
  skus: number,
  stores: number,
  opts: { readonly opening?: "goods_receipts" | "stock_on_hand"; readonly storePolicies?: boolean; readonly currency?: string } = {},
): Promise<number> {
  const currency = opts.currency ?? "EUR";
  const locations = ["DC1", ...storeIds(stores)];
  let added = 0;
  for (let from = 0; from < skus; from += 5000) {
    const items = Array.from({ length: Math.min(5000, skus - from) }, (_, k) => simItem(from + k));
    await erp.begin(async (tx) => {
      const inserted = await tx<Array<{ item_no: string }>>`
        insert into items (item_no, sku, description, kind, base_uom, case_qty, barcode, shop_sku)
        select i, s, 'Simulated item ' || s, 'stock', 'EA', c, b, w
          from unnest(${tx.array(items.map((i) => i.itemNo))}::text[], ${tx.array(items.map((i) => i.sku))}::text[],
                      ${tx.array(items.map((i) => i.caseQty))}::int[], ${tx.array(items.map((i) => i.barcode))}::text[],
                      ${tx.array(items.map((i) => i.shopSku))}::text[]) as t(i, s, c, b, w)
        on conflict do nothing
        returning item_no`;
      if (inserted.length === 0) return;
      added += inserted.length;
      const fresh = inserted.map((r) => r.item_no);
      const pairs = fresh.flatMap((item) => locations.map((location) => ({ item, location })));
      const itemNos = tx.array(pairs.map((p) => p.item));
      const where = tx.array(pairs.map((p) => p.location));
      const qtys = tx.array(pairs.map((p) => (p.location === "DC1" ? randInt(60, 240) : randInt(8, 30))));
      await tx`
        insert into item_locations (item_no, location, safety_stock, reorder_point)
        select i, l, case when l = 'DC1' then 0 else 1 end, case when l = 'DC1' then 20 else 3 end
          from unnest(${itemNos}::text[], ${where}::text[]) as t(i, l)
         where ${opts.storePolicies ?? true} or l = 'DC1'
        on conflict do nothing`;
      if (opts.opening === "stock_on_hand")
        await tx`
          insert into stock_on_hand (item_no, location, qty, uom)
          select i, l, q, 'EA' from unnest(${itemNos}::text[], ${where}::text[], ${qtys}::int[]) as t(i, l, q)
          on conflict do nothing`;
      else {
        const costs = tx.array(pairs.map((p) => fromMinorUnits(simCost(Number(p.item) - 500001), currency)));
        await tx`
          insert into goods_receipts (item_no, location, qty, uom, unit_cost, currency)
          select i, l, q, 'EA', c, ${currency}
            from unnest(${itemNos}::text[], ${where}::text[], ${qtys}::int[], ${costs}::numeric[]) as t(i, l, q, c)`;
      }
    });
  }
  return added;
}

interface PendingOrder {
  readonly orderId: string;
  readonly due: number;
}

/** Runs the traffic until stopped. */
export class DemoSimulator {
  readonly stats: SimulatorStats = {
    orders: 0,
    shipped: 0,
    cancelled: 0,
    notInStock: 0,
    posTransactions: 0,
    posReturns: 0,
    weightSales: 0,
    bundles: 0,
    receipts: 0,
    priceChanges: 0,
    promotions: 0,
    errors: 0,
  };
  readonly done: Promise<void>;
  /**
   * Resolves once the catalog's opening stock is in the ledger and the traffic starts: true, or false
   * when it was not there after 2 minutes (the traffic starts anyway) or the simulator was stopped.
   */
  readonly ready: Promise<boolean>;
  #catalogReady: (applied: boolean) => void = () => {};
  #stopped = false;
  #started = false;
  #wake: (() => void) | null = null;
  readonly #zipf: Zipf;
  readonly #stores: Array<string>;
  readonly #run = createHash("sha256").update(`${process.pid}:${Date.now()}:${Math.random()}`).digest("hex").slice(0, 8);
  #seq = 0;
  #pending: Array<PendingOrder> = [];
  /** Recent sales to return: store, barcode, the item's index (its price). */
  #sold: Array<{ store: string; barcode: string; index: number }> = [];
  readonly #till = new DemoTill(this.#run);
  #lastReplenish = 0;

  constructor(readonly opts: SimulatorOptions) {
    this.#zipf = new Zipf(opts.skus ?? 2000);
    this.#stores = storeIds(opts.stores ?? 10);
    this.ready = new Promise((resolve) => (this.#catalogReady = resolve));
    this.done = this.#loop();
  }

  /** Whether the traffic runs (`running`), or the simulator waits for the catalog or has stopped. */
  get phase(): "waiting for the catalog" | "running" | "stopped" {
    return this.#stopped ? "stopped" : this.#started ? "running" : "waiting for the catalog";
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    this.#catalogReady(false);
    this.#wake?.();
    await this.done;
  }

  async #loop(): Promise<void> {
    const { log } = this.opts;
    const applied = await this.#catalogApplied();
    this.#started = !this.#stopped;
    this.#catalogReady(applied && !this.#stopped);
    const rate = this.opts.rate ?? 20;
    const tickMs = 100;
    let owed = 0;
    while (!this.#stopped) {
      const started = Date.now();
      owed += (rate * tickMs) / 1000;
      const n = Math.floor(owed);
      owed -= n;
      try {
        await this.#tick(n);
      } catch (error) {
        this.stats.errors++;
        log.warn({ err: error }, "demo simulator: a tick failed");
      }
      await this.#sleep(Math.max(0, tickMs - (Date.now() - started)));
    }
  }

  /**
   * Waits (up to 2 minutes) until the catalog's opening stock is in the ledger: a balance for every
   * item and location (onboarded into the ERP by `tally dev`, brought in by CDC). True when it is.
   */
  async #catalogApplied(): Promise<boolean> {
    const expected = (this.opts.skus ?? 2000) * (this.#stores.length + 1);
    const until = Date.now() + 120_000;
    while (!this.#stopped && Date.now() < until) {
      const [row] = await this.opts.ledger<Array<{ n: number }>>`
        select count(*)::int as n from balances where bucket = 'on_hand' and sku like 'SKU-S%'`.catch(() => [{ n: 0 }]); // not there yet: ask again
      if ((row?.n ?? 0) >= expected) return true;
      await this.#sleep(250);
    }
    return false;
  }

  async #tick(events: number): Promise<void> {
    await this.#pricing();
    const pos: Array<Record<string, unknown>> = [];
    const orders: Array<Array<{ shopSku: string; qty: number }>> = [];
    for (let e = 0; e < events; e++) {
      const r = Math.random();
      if (r < 0.4) orders.push(this.#cart());
      else if (r < 0.9) pos.push(this.#sale());
      else pos.push(this.#return() ?? this.#sale());
    }
    // Settled, not all: a failing flow must not leave the others running past a stop.
    const results = await Promise.allSettled([this.#placeOrders(orders), this.#postPos(pos), this.#settleOrders(), this.#replenish()]);
    const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (failed) throw failed.reason;
  }

  #item(): ReturnType<typeof simItem> {
    return simItem(this.#zipf.sample());
  }

  #cart(): Array<{ shopSku: string; qty: number }> {
    if (Math.random() < 0.03) {
      this.stats.bundles++;
      return [{ shopSku: "W-PICNIC", qty: 1 }];
    }
    return Array.from({ length: randInt(1, 3) }, () => ({ shopSku: this.#item().shopSku, qty: Math.random() < 0.8 ? 1 : 2 }));
  }

  #txn(store: string, lines: Array<Record<string, unknown>>, money: object): Record<string, unknown> {
    return {
      store,
      terminal: `T${randInt(1, 4)}`,
      id: `sim-${this.#run}-${++this.#seq}`,
      occurredAt: new Date().toISOString(),
      lines,
      currency: this.opts.currency ?? "EUR",
      ...money,
    };
  }

  #sale(): Record<string, unknown> {
    // The demo stores S01 and S02 sell loose bananas by weight too.
    const store = this.#stores[Math.min(this.#stores.length - 1, Math.floor(this.#zipf.sample() % this.#stores.length))]!;
    let total = 0;
    const lines: Array<Record<string, unknown>> = Array.from({ length: randInt(1, 4) }, () => {
      const index = this.#zipf.sample();
      const item = simItem(index);
      const qty = Math.random() < 0.85 ? 1 : 2;
      const money = this.#till.itemLine(index, qty);
      total += lineTotal(money, qty);
      this.#sold.push({ store, barcode: item.barcode, index });
      return { type: "sale", barcode: item.barcode, qty, ...money };
    });
    if ((store === "S01" || store === "S02") && Math.random() < 0.15) {
      this.stats.weightSales++;
      const grams = randInt(300, 2500);
      const money = this.#till.bananaLine(grams);
      total += lineTotal(money, 0, grams);
      lines.push({ type: "sale", plu: "4011", weight: { value: (grams / 1000).toFixed(3), unit: "kg" }, ...money });
    }
    if (this.#sold.length > 500) this.#sold.splice(0, this.#sold.length - 500);
    return this.#txn(store, lines, this.#till.pay(total));
  }

  #return(): Record<string, unknown> | null {
    const sold = this.#sold.splice(randInt(0, Math.max(0, this.#sold.length - 1)), 1)[0];
    if (!sold) return null;
    this.stats.posReturns++;
    const money = this.#till.returnLine(sold.index, 1);
    return this.#txn(
      sold.store,
      [{ type: "return", barcode: sold.barcode, qty: 1, restockable: Math.random() < 0.9, ...money }],
      this.#till.refund(lineTotal(money, 1)),
    );
  }

  async #postPos(transactions: Array<Record<string, unknown>>): Promise<void> {
    if (transactions.length === 0) return;
    const res = await fetch(`${this.opts.apiUrl}/v1/pos/transactions`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${this.opts.token}` },
      body: JSON.stringify({ transactions }),
      signal: AbortSignal.timeout(10_000),
    });
    await res.arrayBuffer();
    if (res.status >= 300) {
      this.stats.errors++;
      this.opts.log.warn({ status: res.status }, "demo simulator: POS batch refused");
      return;
    }
    this.stats.posTransactions += transactions.length;
  }

  /** The shop checks the web's availability, then places the order (CDC turns each line into a reserve). */
  async #placeOrders(carts: Array<Array<{ shopSku: string; qty: number }>>): Promise<void> {
    const channel = this.opts.webChannel ?? "web";
    for (const cart of carts) {
      let inStock = true;
      for (const line of cart) {
        const sku = line.shopSku === "W-PICNIC" ? "SKU-0001" : line.shopSku.replace(/^W-/, "SKU-");
        const e = await this.opts.availability.get(availabilityKey(channel, sku)).catch(() => null); // unreadable: the demo shop sees none available
        const available = e && e.length > 0 ? (e.json<{ available: number }>().available ?? 0) : 0;
        if (available < line.qty * (line.shopSku === "W-PICNIC" ? 2 : 1) + 2) inStock = false;
      }
      if (!inStock) {
        this.stats.notInStock++;
        continue;
      }
      const orderId = `SIM-${this.#run}-${++this.#seq}`;
      await this.opts.shop.begin(async (tx) => {
        await tx`insert into orders (order_id, channel) values (${orderId}, 'web')`;
        for (const [i, line] of cart.entries())
          await tx`insert into order_lines (order_id, line_no, shop_sku, location, qty) values (${orderId}, ${i + 1}, ${line.shopSku}, 'DC1', ${line.qty})`;
      });
      this.stats.orders++;
      this.#pending.push({ orderId, due: Date.now() + randInt(2000, 10_000) });
    }
  }

  /** Orders ship (85%) or are cancelled (15%) a few seconds after they were placed. */
  async #settleOrders(): Promise<void> {
    const now = Date.now();
    const due = this.#pending.filter((p) => p.due <= now);
    if (due.length === 0) return;
    this.#pending = this.#pending.filter((p) => p.due > now);
    for (const p of due) {
      const ship = Math.random() < 0.85;
      await this.opts.shop`update order_lines set status = ${ship ? "shipped" : "cancelled"} where order_id = ${p.orderId} and status = 'placed'`;
      if (ship) this.stats.shipped++;
      else this.stats.cancelled++;
    }
  }

  /** Every few seconds the ERP receives stock for what Tally reports low or out (a replenishment run). */
  async #replenish(): Promise<void> {
    if (Date.now() - this.#lastReplenish < 3000) return;
    this.#lastReplenish = Date.now();
    const low = await this.opts.ledger<Array<{ sku: string; location: string }>>`
      select sku, location from sku_locations where status in ('low', 'out') and sku like 'SKU-S%' order by random() limit 50`;
    if (low.length === 0) return;
    const currency = this.opts.currency ?? "EUR";
    const items = low.map((l) => ({
      itemNo: String(500000 + Number(l.sku.slice(5))),
      location: l.location,
      qty: l.location === "DC1" ? randInt(60, 200) : randInt(10, 30),
      // Each replenishment at a slightly different cost: the moving average moves.
      unitCost: fromMinorUnits(simCost(Number(l.sku.slice(5)) - 1, randInt(-8, 8)), currency),
    }));
    // As one JSON value: the three array parameters once failed as `malformed array literal: "500001"` (one item sent as a plain value).
    await this.opts.erp`
      insert into goods_receipts (item_no, location, qty, uom, unit_cost, currency)
      select "itemNo", location, qty, 'EA', "unitCost", ${currency}
        from jsonb_to_recordset(${this.opts.erp.json(items)}::jsonb) as t("itemNo" text, location text, qty int, "unitCost" numeric)
      on conflict do nothing`;
    this.stats.receipts += items.length;
  }

  // --- ERP pricing (the catalog flow) ---------------------------------------------------------

  #lastPriceChange = 0;
  #lastPromotion = 0;

  /**
   * Every 15 s the ERP moves the regular price of a few seeded items by up to ±10 % in every list, in
   * one transaction (one catalog version, the same in every channel); every 60 s it schedules a
   * promotion (20 % off, in every list) that starts 10 s later and lasts 30 s, which Tally publishes
   * when it starts and withdraws when it ends. Without the seeded price lists nothing changes.
   */
  async #pricing(): Promise<void> {
    const now = Date.now();
    if (now - this.#lastPriceChange >= 15_000) {
      this.#lastPriceChange = now;
      const items = Array.from({ length: randInt(1, 3) }, () => String(100001 + randInt(0, 19)));
      const changed = await this.opts.erp`
        update item_prices set amount = greatest(0.10, round(amount * (0.9 + random() * 0.2), 2))
         where item_no = any(${this.opts.erp.array(items)}::text[]) and valid_to is null`;
      if (changed.count > 0) this.stats.priceChanges++;
    }
    if (now - this.#lastPromotion >= 60_000) {
      this.#lastPromotion = now;
      const promoted = await this.opts.erp`
        insert into item_prices (item_no, price_list, amount, valid_from, valid_to)
        select p.item_no, p.price_list, round(p.amount * 0.8, 2), now() + interval '10 seconds', now() + interval '40 seconds'
          from item_prices p
         where p.item_no = ${String(100001 + randInt(0, 19))} and p.valid_to is null
        on conflict do nothing`;
      if (promoted.count > 0) this.stats.promotions++;
    }
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.#wake = null;
        resolve();
      }, ms);
      this.#wake = () => {
        clearTimeout(t);
        resolve();
      };
    });
  }
}
