/**
 * A seeded writer of stock movements into the demo ERP and shop databases (the CDC fault tests'
 * load), and an independent model of what the ledger must hold afterwards. Written from
 * the command types as the README describes them and the demo mappings' documented behaviour; it shares no code with
 * cdc/, actors/ or ledger/ (only the DEMO_* seed description).
 *
 * No command the load causes may be rejected, whatever order the two sources' streams interleave
 * in, or however often they are re-sent. A reservation is only placed when the stock it needs is
 * certain to be there at the moment the ledger decides it:
 * - per SKU, the ledger applies shop commands in shop commit order and ERP commands in ERP commit
 *   order, interleaved in any way; so the shop may count on its own movements, plus ERP stock the
 *   ledger has provably applied before the shop transaction commits (`#syncCredit`);
 * - that ERP "credit" is the minimum of the ERP running total over every prefix the ledger could
 *   have applied by then, and later negative ERP adjustments may never push the running total
 *   below the largest credit ever granted.
 *
 * Every transaction can be re-run after an ambiguous failure (the source Postgres killed while
 * committing): it carries a marker row whose presence says whether it committed.
 */
import type postgres from "postgres";
import { DEMO_ITEMS, DEMO_LOCATIONS, DEMO_POLICIES, DEMO_STOCK } from "../../cdc/demo/seed.ts";
import type { Sql } from "../../src/platform/db.ts";
import { rng } from "./workload.ts";

export interface Buckets {
  on_hand: number;
  reserved: number;
  damaged: number;
}

/** What the ledger must hold once every change the load wrote has been applied. */
export interface LoadExpectation {
  /** `${sku}|${location}` → buckets, for every stocked SKU at every demo location. */
  readonly balances: ReadonlyMap<string, Buckets>;
  /** Ledger entries per `source_ref` (snapshot counts included; refs with no entry left out). */
  readonly entriesByRef: ReadonlyMap<string, number>;
  /** Commands (outcomes) the streamed changes cause: all applied. */
  readonly commands: number;
  /** Commands of the initial snapshot (policies and opening counts). */
  readonly snapshotCommands: number;
  /** Captured row changes written (inserts and updates of captured tables). */
  readonly changes: number;
  /** Gift-card order-line changes (mapped, then skipped as non-inventory). */
  readonly skippedChanges: number;
}

export interface DemoLoadOptions {
  /** Captured row changes to write. */
  readonly changes: number;
  readonly seed: number;
  /** The ledger database: read to learn which ERP movements are already applied. */
  readonly ledger: Sql;
  /** Captured changes per transaction, inclusive bounds (default 6..14). */
  readonly rowsPerTx?: readonly [number, number];
  /** Awaited before every transaction with the changes written so far (pacing, fault injection). */
  readonly beforeTx?: (written: number) => Promise<void> | void;
  /** How long one transaction may keep failing (server down) before the load gives up, default 60 s. */
  readonly retryForMs?: number;
}

interface Component {
  readonly sku: string;
  readonly qty: number;
}
interface OpenLine {
  readonly orderId: string;
  readonly lineNo: number;
  readonly location: string;
  readonly qty: number;
  /** null: a gift card (non-inventory, skipped). */
  readonly components: ReadonlyArray<Component> | null;
  readonly shopSku: string;
}
interface ShippedLine {
  readonly orderId: string;
  readonly lineNo: number;
  readonly shopSku: string;
  readonly sku: string;
  left: number;
}

const STOCK_ITEMS = DEMO_ITEMS.filter((i) => i.kind === "stock");
const STOCKED = DEMO_ITEMS.filter((i) => i.kind === "stock" || i.kind === "variable_weight");
const BY_SHOP_SKU = new Map(DEMO_ITEMS.map((i) => [i.shopSku, i]));
const key = (sku: string, location: string) => `${sku}|${location}`;

/** SQLSTATE classes that mean the load itself is wrong (bad value, constraint, SQL): never retried. */
const isBug = (error: unknown) => /^(22|23|42)/.test(String((error as { code?: unknown })?.code ?? ""));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class DemoLoad {
  readonly #opts: DemoLoadOptions;
  readonly #erp: postgres.Sql;
  readonly #shop: postgres.Sql;
  readonly #r: () => number;
  readonly #balances = new Map<string, Buckets>();
  readonly #safety = new Map<string, number>();
  /** Opening stock plus the shop's own on-hand movements (fulfilments, restockable returns). */
  readonly #shopView = new Map<string, number>();
  /** ERP running total of on-hand movements per key, and its history (seq, total after). */
  readonly #erpTotal = new Map<string, number>();
  readonly #erpHistory = new Map<string, Array<{ seq: number; total: number }>>();
  /** ERP stock the shop may count on now, and the largest credit ever granted (a floor for later adjustments). */
  readonly #credit = new Map<string, number>();
  readonly #maxCredit = new Map<string, number>();
  readonly #entriesByRef = new Map<string, number>();
  readonly #open: Array<OpenLine> = [];
  readonly #shipped: Array<ShippedLine> = [];
  #erpSeq = 0;
  #returnSeq = 0;
  #shopTx = 0;
  #written = 0;
  #commands = 0;
  #skipped = 0;
  #lastSync = 0;
  /** Transactions that failed and were re-checked / re-run (server outages seen by the writer). */
  retries = 0;
  /** Committed transactions with at least one captured change. */
  transactions = 0;
  /** Reads of the ledger for ERP credit, and new order lines given up for lack of certain stock. */
  syncs = 0;
  reservesRefused = 0;

  constructor(demo: { readonly erp: postgres.Sql; readonly shop: postgres.Sql }, opts: DemoLoadOptions) {
    this.#opts = opts;
    this.#erp = demo.erp;
    this.#shop = demo.shop;
    this.#r = rng(opts.seed);
    const itemOf = new Map(DEMO_ITEMS.map((i) => [i.itemNo, i]));
    for (const item of STOCKED)
      for (const location of DEMO_LOCATIONS) {
        this.#balances.set(key(item.sku, location), { on_hand: 0, reserved: 0, damaged: 0 });
        this.#shopView.set(key(item.sku, location), 0);
      }
    for (const s of DEMO_STOCK) {
      this.#balances.get(key(s.sku, s.location))!.on_hand = s.baseQty;
      this.#shopView.set(key(s.sku, s.location), s.baseQty);
      this.#ref(`stock_on_hand:${s.itemNo}:${s.location}`, s.baseQty === 0 ? 0 : 1);
    }
    for (const p of DEMO_POLICIES) this.#safety.set(key(itemOf.get(p.itemNo)!.sku, p.location), p.safetyStock);
  }

  get written(): number {
    return this.#written;
  }

  expectation(): LoadExpectation {
    return {
      balances: new Map([...this.#balances].map(([k, b]) => [k, { ...b }])),
      entriesByRef: new Map([...this.#entriesByRef].filter(([, n]) => n > 0)),
      commands: this.#commands,
      snapshotCommands: DEMO_POLICIES.length + DEMO_STOCK.length,
      changes: this.#written,
      skippedChanges: this.#skipped,
    };
  }

  /** Writes `changes` captured changes in small transactions, alternating ERP and shop at random. */
  async run(): Promise<void> {
    const [lo, hi] = this.#opts.rowsPerTx ?? [6, 14];
    while (this.#written < this.#opts.changes) {
      await this.#opts.beforeTx?.(this.#written);
      const n = Math.min(this.#opts.changes - this.#written, lo + Math.floor(this.#r() * (hi - lo + 1)));
      this.#written += this.#r() < 0.45 ? await this.#erpTransaction(n) : await this.#shopTransaction(n);
    }
  }

  // --------------------------------------------------------------------------------------------
  // model helpers

  #int(lo: number, hi: number): number {
    return lo + Math.floor(this.#r() * (hi - lo + 1));
  }
  #pick<T>(xs: ReadonlyArray<T>): T {
    return xs[Math.floor(this.#r() * xs.length)]!;
  }
  #ref(ref: string, entries: number): void {
    this.#entriesByRef.set(ref, (this.#entriesByRef.get(ref) ?? 0) + entries);
  }
  #bucket(sku: string, location: string): Buckets {
    return this.#balances.get(key(sku, location))!;
  }
  /** What a reservation at `k` is certain to find available when the ledger decides it. */
  #available(k: string): number {
    return this.#shopView.get(k)! + (this.#credit.get(k) ?? 0) - this.#balances.get(k)!.reserved - this.#safety.get(k)!;
  }

  /** Learns, per SKU, the last ERP movement the ledger has applied, and recomputes the ERP credit. */
  async #syncCredit(): Promise<void> {
    this.#lastSync = Date.now();
    this.syncs++;
    const rows = await this.#opts.ledger<Array<{ sku: string; seq: number }>>`
      select sku, max(split_part(source_ref, ':', 2)::bigint)::int as seq
        from ledger_entries
       where source_system = 'erp' and (source_ref like 'goods_receipts:%' or source_ref like 'stock_adjustments:%')
       group by sku`;
    const applied = new Map(rows.map((r) => [r.sku, r.seq]));
    for (const [k, history] of this.#erpHistory) {
      const upTo = applied.get(k.slice(0, k.indexOf("|"))) ?? 0;
      // Every ERP prefix the ledger may have applied for this SKU by the time the next shop
      // transaction is decided ends at or after `upTo`: the credit is the least of their totals.
      let credit = 0;
      let i = 0;
      while (i < history.length && history[i]!.seq <= upTo) credit = history[i++]!.total;
      for (; i < history.length; i++) credit = Math.min(credit, history[i]!.total);
      this.#credit.set(k, credit);
      this.#maxCredit.set(k, Math.max(this.#maxCredit.get(k) ?? 0, credit));
    }
  }

  // --------------------------------------------------------------------------------------------
  // transactions

  /**
   * Runs `body` in a transaction until it has committed exactly once: after a failure that is not
   * the load's own bug, waits for the server and asks `committed` whether the commit went through
   * before it was cut off.
   */
  async #commit(sql: postgres.Sql, body: (tx: postgres.TransactionSql) => Promise<void>, committed: () => Promise<boolean>): Promise<void> {
    const deadline = Date.now() + (this.#opts.retryForMs ?? 60_000);
    for (;;) {
      try {
        await sql.begin(body);
        return;
      } catch (error) {
        if (isBug(error) || Date.now() > deadline) throw error;
        this.retries++;
      }
      for (;;) {
        await sleep(100);
        const done = await committed().then(
          (v) => v,
          (error: unknown) => {
            if (isBug(error) || Date.now() > deadline) throw error;
            return null;
          },
        );
        if (done === true) return;
        if (done === false) break;
      }
    }
  }

  /** Goods receipts then stock adjustments (EA and CASE), ids from one sequence in commit order. */
  async #erpTransaction(n: number): Promise<number> {
    const receipts: Array<{ receipt_id: number; item_no: string; location: string; qty: string; uom: string }> = [];
    const adjustments: Array<{ adjustment_id: number; item_no: string; location: string; qty: string; uom: string; reason: string }> = [];
    const nReceipts = Math.round(n * (0.5 + 0.3 * this.#r()));
    const movement = (table: string, item: (typeof STOCK_ITEMS)[number], location: string, delta: number) => {
      const seq = ++this.#erpSeq;
      const k = key(item.sku, location);
      const total = (this.#erpTotal.get(k) ?? 0) + delta;
      this.#erpTotal.set(k, total);
      let history = this.#erpHistory.get(k);
      if (!history) this.#erpHistory.set(k, (history = []));
      history.push({ seq, total });
      this.#bucket(item.sku, location).on_hand += delta;
      this.#ref(`${table}:${seq}`, 1);
      this.#commands++;
      return seq;
    };
    for (let i = 0; i < n; i++) {
      const item = this.#pick(STOCK_ITEMS);
      const location = this.#pick(DEMO_LOCATIONS);
      const inCases = item.caseQty !== null && this.#r() < 0.4;
      if (i < nReceipts) {
        const qty = inCases ? this.#int(1, 3) : this.#int(1, 12);
        const seq = movement("goods_receipts", item, location, qty * (inCases ? item.caseQty! : 1));
        receipts.push({ receipt_id: seq, item_no: item.itemNo, location, qty: String(qty), uom: inCases ? "CASE" : "EA" });
      } else {
        const qty = inCases ? 1 : this.#int(1, 6);
        const base = qty * (inCases ? item.caseQty! : 1);
        const k = key(item.sku, location);
        // A shrink may not take the ERP running total below any credit the shop was granted.
        const shrink = this.#r() < 0.5 && (this.#erpTotal.get(k) ?? 0) - base >= (this.#maxCredit.get(k) ?? 0);
        const seq = movement("stock_adjustments", item, location, shrink ? -base : base);
        adjustments.push({
          adjustment_id: seq,
          item_no: item.itemNo,
          location,
          qty: String(shrink ? -qty : qty),
          uom: inCases ? "CASE" : "EA",
          reason: shrink ? this.#pick(["shrink", "damage"]) : "found",
        });
      }
    }
    const marker = receipts[0]
      ? { table: "goods_receipts", column: "receipt_id", id: receipts[0].receipt_id }
      : { table: "stock_adjustments", column: "adjustment_id", id: adjustments[0]!.adjustment_id };
    await this.#commit(
      this.#erp,
      async (tx) => {
        if (receipts.length > 0) await tx`insert into goods_receipts ${tx(receipts)}`;
        if (adjustments.length > 0) await tx`insert into stock_adjustments ${tx(adjustments)}`;
      },
      async () => (await this.#erp`select 1 from ${this.#erp(marker.table)} where ${this.#erp(marker.column)} = ${marker.id}`).length > 0,
    );
    this.transactions++;
    return receipts.length + adjustments.length;
  }

  /**
   * One shop transaction: an order header (not captured; the commit marker), then status changes
   * of earlier lines (cancel → release, ship → fulfil), returns of shipped lines, and the new
   * order's lines (reserve; a bundle reserves its components, a gift card is skipped).
   */
  async #shopTransaction(n: number): Promise<number> {
    const orderId = `T${++this.#shopTx}`;
    if (this.#shopTx % 20 === 1) await this.#syncCredit();
    const updates: Array<{ orderId: string; lineNo: number; status: "cancelled" | "shipped" }> = [];
    const returns: Array<{
      return_id: number;
      order_id: string;
      line_no: number;
      shop_sku: string;
      location: string;
      qty: number;
      restockable: boolean;
    }> = [];
    const lines: Array<{ order_id: string; line_no: number; shop_sku: string; location: string; qty: number }> = [];
    const placed: Array<OpenLine> = [];
    for (let i = 0; i < n; i++) {
      const roll = this.#r();
      if (this.#open.length > 0 && roll < 0.42) {
        const line = this.#open.splice(Math.floor(this.#r() * this.#open.length), 1)[0]!;
        const ship = this.#r() < 0.55;
        updates.push({ orderId: line.orderId, lineNo: line.lineNo, status: ship ? "shipped" : "cancelled" });
        const ref = `order_lines:${line.orderId}:${line.lineNo}`;
        if (line.components === null) {
          this.#skipped++;
          continue;
        }
        for (const c of line.components) {
          const q = c.qty * line.qty;
          const b = this.#bucket(c.sku, line.location);
          b.reserved -= q;
          if (ship) {
            b.on_hand -= q;
            this.#shopView.set(key(c.sku, line.location), this.#shopView.get(key(c.sku, line.location))! - q);
          }
          this.#ref(ref, ship ? 2 : 1);
          this.#commands++;
        }
        if (ship && line.components.length === 1 && line.components[0]!.qty === 1)
          this.#shipped.push({ orderId: line.orderId, lineNo: line.lineNo, shopSku: line.shopSku, sku: line.components[0]!.sku, left: line.qty });
        continue;
      }
      if (this.#shipped.length > 0 && roll < 0.52) {
        const at = Math.floor(this.#r() * this.#shipped.length);
        const line = this.#shipped[at]!;
        const qty = this.#int(1, line.left);
        line.left -= qty;
        if (line.left === 0) this.#shipped.splice(at, 1);
        const location = this.#pick(DEMO_LOCATIONS);
        const restockable = this.#r() < 0.7;
        const id = ++this.#returnSeq;
        returns.push({ return_id: id, order_id: line.orderId, line_no: line.lineNo, shop_sku: line.shopSku, location, qty, restockable });
        const b = this.#bucket(line.sku, location);
        if (restockable) {
          b.on_hand += qty;
          this.#shopView.set(key(line.sku, location), this.#shopView.get(key(line.sku, location))! + qty);
        } else b.damaged += qty;
        this.#ref(`returns:${id}`, 1);
        this.#commands++;
        continue;
      }
      const line = await this.#newLine(orderId, lines.length + 1);
      if (!line) continue;
      lines.push({ order_id: orderId, line_no: line.lineNo, shop_sku: line.shopSku, location: line.location, qty: line.qty });
      placed.push(line);
    }
    this.#open.push(...placed);
    await this.#commit(
      this.#shop,
      async (tx) => {
        await tx`insert into orders (order_id) values (${orderId})`;
        for (const u of updates) await tx`update order_lines set status = ${u.status} where order_id = ${u.orderId} and line_no = ${u.lineNo}`;
        if (returns.length > 0) await tx`insert into returns ${tx(returns)}`;
        if (lines.length > 0) await tx`insert into order_lines ${tx(lines)}`;
      },
      async () => (await this.#shop`select 1 from orders where order_id = ${orderId}`).length > 0,
    );
    if (updates.length + returns.length + lines.length > 0) this.transactions++;
    return updates.length + returns.length + lines.length;
  }

  /** A new placed line that cannot be refused (or null when no stock can be counted on just now). */
  async #newLine(orderId: string, lineNo: number): Promise<OpenLine | null> {
    for (let attempt = 0; attempt < 4; attempt++) {
      const roll = this.#r();
      const shopSku = roll < 0.03 ? "W-GIFT-25" : roll < 0.11 ? "W-PICNIC" : this.#pick(STOCK_ITEMS).shopSku!;
      const item = BY_SHOP_SKU.get(shopSku)!;
      const location = this.#r() < 0.5 ? "DC1" : this.#pick(DEMO_LOCATIONS);
      const qty = this.#int(1, 4);
      if (item.kind === "non_inventory") {
        this.#skipped++;
        return { orderId, lineNo, location, qty, shopSku, components: null };
      }
      const components = item.kind === "bundle" ? item.components : [{ sku: item.sku, qty: 1 }];
      let fits = components.every((c) => this.#available(key(c.sku, location)) >= c.qty * qty);
      if (!fits && Date.now() - this.#lastSync > 100) {
        await this.#syncCredit();
        fits = components.every((c) => this.#available(key(c.sku, location)) >= c.qty * qty);
      }
      if (!fits) {
        this.reservesRefused++;
        continue;
      }
      for (const c of components) {
        this.#bucket(c.sku, location).reserved += c.qty * qty;
        this.#ref(`order_lines:${orderId}:${lineNo}`, 1);
        this.#commands++;
      }
      return { orderId, lineNo, location, qty, shopSku, components };
    }
    return null;
  }
}
