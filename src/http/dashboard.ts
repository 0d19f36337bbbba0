/**
 * The live dashboard at `/`: a static page (no build step, no network) fed by one server-sent
 * event stream, `/v1/dashboard/stream` (scope `admin`). A hub in the API process listens to the
 * availability changes, events, worker outcomes and relay latency reports on core NATS and keeps
 * only what the page shows: the busiest SKUs' availability per channel, per-flow throughput and
 * end-to-end latency, CDC slot lag, dead letters and recent stock alerts.
 */
import { readFile } from "node:fs/promises";
import type { Subscription } from "@nats-io/transport-node";
import type { FastifyInstance } from "fastify";
import { ID_LIST_JSON_PATTERN, fromMinorUnits, type AvailabilityJson as Availability } from "../contract/index.ts";
import { stockValueByLocation } from "../../ledger/index.ts";
import type { RelayRound } from "../channels/index.ts";
import { catalogVersions, lastRuns, type CatalogVersions } from "../../cdc/index.ts";
import type { ApiContext } from "./context.ts";
import { openEventStream } from "./eventStream.ts";
import type { OutcomeBatch } from "../wire/index.ts";

const BUSIEST = 15;
const MAX_TRACKED = 5000;
const MAX_PINNED = 20;
const ACTIVITY_HALF_LIFE_MS = 60_000;
const WINDOW_MS = 30_000;
const ALERTS = new Set(["low_stock", "out_of_stock", "back_in_stock", "negative_stock"]);

interface Cell {
  readonly available: number;
  readonly status: string;
  readonly version: number;
}

interface Tracked {
  score: number;
  at: number;
  readonly cells: Map<string, Cell>;
}

export interface DashboardAlert {
  readonly type: string;
  readonly sku: string;
  readonly location: string;
  readonly at: string;
  readonly detail: Record<string, unknown>;
}

/** What the page shows, once a second. */
export interface DashboardSummary {
  readonly at: string;
  readonly channels: ReadonlyArray<string>;
  readonly rows: ReadonlyArray<{ sku: string; pinned: boolean; cells: Record<string, Cell> }>;
  readonly flows: ReadonlyArray<{ source: string; perSecond: number; total: number; rejected: number; p50Ms: number | null; p99Ms: number | null }>;
  readonly cdc: ReadonlyArray<{ source: string; streaming: boolean; lagBytes: number | null; changes: number }>;
  readonly deadLetters: number | null;
  readonly alerts: ReadonlyArray<DashboardAlert>;
  /** Stock value per location (Σ of its on-hand value), decimals of the company currency; null when the ledger did not answer. */
  readonly stockValue: StockValue | null;
  /** The last reconciliation per source (null: unknown, the ledger did not answer). */
  readonly reconciliation: ReadonlyArray<ReconciliationSummary> | null;
  /** The catalog version each channel runs and how far behind it is (null: unknown, the ledger did not answer). */
  readonly catalog: CatalogVersions | null;
}

/** A source's last reconciliation: when, how many pairs and units drifted, and the largest few. */
export interface ReconciliationSummary {
  readonly source: string;
  readonly finishedAt: string;
  readonly trigger: string;
  /** The source's WAL position it compared at (null when the run failed). */
  readonly at: string | null;
  readonly pairs: number;
  readonly units: number;
  readonly applied: number;
  readonly toWriteBack: number;
  readonly error: string | null;
  readonly top: ReadonlyArray<{ sku: string; location: string; ledger: number; source: number; diff: number }>;
}

const TOP_DRIFT = 5;

async function reconciliationSummary(sql: ApiContext["sql"]): Promise<Array<ReconciliationSummary>> {
  return (await lastRuns(sql)).map((r) => ({
    source: r.source,
    finishedAt: r.finishedAt,
    trigger: r.trigger,
    at: r.at,
    pairs: r.pairs,
    units: r.units,
    applied: r.applied,
    toWriteBack: r.toWriteBack.length,
    error: r.error,
    top: [...r.drift]
      .sort((a, b) => Math.abs(b.diff) - Math.abs(a.diff))
      .slice(0, TOP_DRIFT)
      .map(({ sku, location, ledger, source, diff }) => ({ sku, location, ledger, source, diff })),
  }));
}

export interface StockValue {
  readonly currency: string;
  readonly locations: ReadonlyArray<{ location: string; value: string }>;
  readonly total: string;
}

/** How often the stock value is summed again (a scan of the on-hand balances: not once a second). */
const STOCK_VALUE_EVERY_MS = 5000;

const quantile = (sorted: ReadonlyArray<number>, q: number): number | null =>
  sorted.length === 0 ? null : sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;

export class DashboardHub {
  readonly #tracked = new Map<string, Tracked>();
  readonly #applied = new Map<string, Array<{ at: number; n: number }>>();
  readonly #totals = new Map<string, { applied: number; rejected: number }>();
  readonly #latency = new Map<string, Array<{ at: number; ms: number }>>();
  readonly #alerts: Array<DashboardAlert> = [];
  readonly #subs: Array<Subscription> = [];
  readonly #listeners = new Set<(changed: ReadonlySet<string>) => void>();
  #changed = new Set<string>();
  #flushTimer: NodeJS.Timeout | null = null;
  #deadLetters: { n: number | null; at: number } = { n: null, at: 0 };
  #stockValue: { v: StockValue | null; at: number } = { v: null, at: 0 };
  #reconciliation: { runs: Array<ReconciliationSummary> | null; at: number } = { runs: null, at: 0 };
  #catalog: { v: CatalogVersions | null; at: number } = { v: null, at: 0 };

  constructor(readonly ctx: ApiContext) {}

  /** Listens only while a dashboard is open: an API process nobody watches pays nothing for it. */
  #start(): void {
    if (this.#subs.length > 0) return;
    const { nc } = this.ctx.nats;
    const { topology } = this.ctx;
    // Core-NATS JSON messages; anything that does not parse is not for the dashboard.
    const on = <T>(subject: string, handle: (value: T) => void): Subscription =>
      nc.subscribe(subject, {
        callback: (err, msg) => {
          if (err) return;
          try {
            handle(msg.json<T>());
          } catch {
            // Parse fallback: not a message of ours.
          }
        },
      });
    this.#subs.push(
      on<Availability>(topology.availabilitySubjects(), (a) => this.#onAvailability(a)),
      on<Record<string, unknown>>(topology.eventSubjects, (e) => this.#onEvent(e)),
      on<OutcomeBatch>(topology.outcomesSubject, (b) => this.#onOutcomes(b)),
      on<RelayRound>(topology.relaySubject, (r) => this.#onRelay(r)),
    );
    this.#flushTimer = setInterval(() => this.#flush(), 250);
  }

  #quiet(): void {
    for (const s of this.#subs.splice(0)) s.unsubscribe();
    if (this.#flushTimer) clearInterval(this.#flushTimer);
    this.#flushTimer = null;
  }

  stop(): void {
    this.#quiet();
    this.#listeners.clear();
  }

  /** Called every 250 ms with the SKUs whose availability changed; the first listener starts the hub, the last one stops it. */
  listen(fn: (changed: ReadonlySet<string>) => void): () => void {
    this.#listeners.add(fn);
    this.#start();
    return () => {
      this.#listeners.delete(fn);
      if (this.#listeners.size === 0) this.#quiet();
    };
  }

  #flush(): void {
    if (this.#changed.size === 0) return;
    const changed = this.#changed;
    this.#changed = new Set();
    for (const fn of this.#listeners) fn(changed);
  }

  #onAvailability(a: Availability): void {
    if (typeof a?.sku !== "string" || typeof a.channel !== "string") return;
    const now = Date.now();
    let t = this.#tracked.get(a.sku);
    if (!t) {
      t = { score: 0, at: now, cells: new Map() };
      this.#tracked.set(a.sku, t);
      if (this.#tracked.size > MAX_TRACKED) this.#prune(now);
    }
    const prev = t.cells.get(a.channel);
    if (prev && prev.version > a.version) return;
    t.score = t.score * 0.5 ** ((now - t.at) / ACTIVITY_HALF_LIFE_MS) + 1;
    t.at = now;
    // On the wire a quantity past 2^53 is a decimal string; the dashboard only displays it.
    t.cells.set(a.channel, { available: Number(a.available), status: a.status, version: a.version });
    this.#changed.add(a.sku);
  }

  /** Keeps the most active half when too many SKUs are tracked (memory stays flat with a million SKUs). */
  #prune(now: number): void {
    const scored = [...this.#tracked].map(([sku, t]) => [sku, t.score * 0.5 ** ((now - t.at) / ACTIVITY_HALF_LIFE_MS)] as const);
    scored.sort((x, y) => x[1] - y[1]);
    for (const [sku] of scored.slice(0, scored.length - MAX_TRACKED / 2)) this.#tracked.delete(sku);
  }

  #onEvent(e: Record<string, unknown>): void {
    const type = String(e.type ?? "");
    if (!ALERTS.has(type)) return;
    const { type: _t, sku, location, commandId: _c, occurredAt, seq: _s, ...detail } = e;
    this.#alerts.unshift({ type, sku: String(sku), location: String(location), at: String(occurredAt ?? new Date().toISOString()), detail });
    this.#alerts.length = Math.min(this.#alerts.length, 30);
  }

  #onOutcomes(batch: OutcomeBatch): void {
    if (!Array.isArray(batch?.outcomes)) return;
    const now = Date.now();
    const applied = new Map<string, number>();
    for (const o of batch.outcomes) {
      const source = o.source ?? "unknown";
      const totals = this.#totals.get(source) ?? { applied: 0, rejected: 0 };
      if (o.status === "applied") {
        totals.applied++;
        applied.set(source, (applied.get(source) ?? 0) + 1);
      } else totals.rejected++;
      this.#totals.set(source, totals);
    }
    for (const [source, n] of applied) {
      const list = this.#applied.get(source) ?? [];
      list.push({ at: now, n });
      this.#applied.set(source, list);
    }
  }

  #onRelay(round: RelayRound): void {
    const now = Date.now();
    for (const [source, list] of Object.entries(round?.latencyMs ?? {})) {
      if (!Array.isArray(list)) continue;
      const kept = this.#latency.get(source) ?? [];
      for (const ms of list) if (typeof ms === "number") kept.push({ at: now, ms });
      if (kept.length > 20_000) kept.splice(0, kept.length - 20_000);
      this.#latency.set(source, kept);
    }
  }

  async #deadLetterCount(): Promise<number | null> {
    if (Date.now() - this.#deadLetters.at > 2000) {
      const info = await this.ctx.nats.jsm.streams.info(this.ctx.topology.dlqStream).catch(() => null); // NATS down: shown as unknown
      this.#deadLetters = { n: info ? info.state.messages : null, at: Date.now() };
    }
    return this.#deadLetters.n;
  }

  async #stockValueNow(): Promise<StockValue | null> {
    if (Date.now() - this.#stockValue.at > STOCK_VALUE_EVERY_MS) {
      const { currency } = this.ctx.config.finance;
      const rows = await stockValueByLocation(this.ctx.sql).catch(() => null); // Postgres down: shown as unknown
      const v = rows && {
        currency,
        locations: rows.map((r) => ({ location: r.location, value: fromMinorUnits(r.value, currency) })),
        total: fromMinorUnits(
          rows.reduce((n, r) => n + r.value, 0n),
          currency,
        ),
      };
      this.#stockValue = { v, at: Date.now() };
    }
    return this.#stockValue.v;
  }

  /** The last reconciliation per source, read from the ledger at most every 5 s. */
  async #reconciliationRuns(): Promise<Array<ReconciliationSummary> | null> {
    if (Date.now() - this.#reconciliation.at > 5000) {
      const runs = await reconciliationSummary(this.ctx.sql).catch(() => null); // the ledger down: shown as unknown
      this.#reconciliation = { runs, at: Date.now() };
    }
    return this.#reconciliation.runs;
  }

  /** Which catalog version each channel runs, read from the ledger at most every 2 s. */
  async #catalogVersions(): Promise<CatalogVersions | null> {
    if (Date.now() - this.#catalog.at > 2000) {
      const tolerances = Object.fromEntries(Object.entries(this.ctx.config.channels).map(([name, c]) => [name, c.catalogLagToleranceSeconds]));
      const v = await catalogVersions(this.ctx.sql, tolerances).catch(() => null); // the ledger down: shown as unknown
      this.#catalog = { v, at: Date.now() };
    }
    return this.#catalog.v;
  }

  /**
   * Current availability of pinned SKUs, from the KV bucket, for each channel not known yet. Called
   * while listening (see the route): a change published after the read arrives as a message, one
   * published before is in the bucket; of the two, the higher version wins.
   */
  async pin(skus: ReadonlyArray<string>): Promise<void> {
    const channels = Object.keys(this.ctx.config.channels);
    for (const sku of skus) {
      const t: Tracked = this.#tracked.get(sku) ?? { score: 0, at: Date.now(), cells: new Map() };
      this.#tracked.set(sku, t);
      for (const channel of channels) {
        if (t.cells.has(channel)) continue;
        const e = await this.ctx.nats.availability.get(this.ctx.topology.availabilityKey(channel, sku)).catch(() => null); // NATS down: the cell stays empty
        if (e && e.operation === "PUT" && e.length > 0) {
          const a = e.json<Availability>();
          const known = t.cells.get(channel);
          if (!known || known.version < a.version) t.cells.set(channel, { available: Number(a.available), status: a.status, version: a.version });
        }
      }
    }
  }

  /** The rows for a page: its pinned SKUs first, then the busiest. */
  rows(pinned: ReadonlyArray<string>): DashboardSummary["rows"] {
    const now = Date.now();
    const busiest = [...this.#tracked]
      .filter(([sku]) => !pinned.includes(sku))
      .map(([sku, t]) => [sku, t.score * 0.5 ** ((now - t.at) / ACTIVITY_HALF_LIFE_MS)] as const)
      .filter(([, score]) => score > 0)
      .sort((x, y) => y[1] - x[1])
      .slice(0, BUSIEST)
      .map(([sku]) => sku);
    const row = (sku: string, isPinned: boolean) => ({ sku, pinned: isPinned, cells: Object.fromEntries(this.#tracked.get(sku)?.cells ?? []) });
    return [...pinned.map((s) => row(s, true)), ...busiest.map((s) => row(s, false))];
  }

  async summary(pinned: ReadonlyArray<string>): Promise<DashboardSummary> {
    const now = Date.now();
    const sources = new Set([...this.#totals.keys(), ...this.#latency.keys()]);
    const flows = [...sources].sort().map((source) => {
      const applied = (this.#applied.get(source) ?? []).filter((x) => now - x.at <= WINDOW_MS);
      this.#applied.set(source, applied);
      const latencies = (this.#latency.get(source) ?? []).filter((x) => now - x.at <= WINDOW_MS);
      this.#latency.set(source, latencies);
      const sorted = latencies.map((x) => x.ms).sort((a, b) => a - b);
      const totals = this.#totals.get(source) ?? { applied: 0, rejected: 0 };
      return {
        source,
        perSecond: Math.round((applied.reduce((n, x) => n + x.n, 0) / (WINDOW_MS / 1000)) * 10) / 10,
        total: totals.applied,
        rejected: totals.rejected,
        p50Ms: quantile(sorted, 0.5),
        p99Ms: quantile(sorted, 0.99),
      };
    });
    const cdc = (this.ctx.readers ?? []).map((r) => ({
      source: r.name,
      streaming: r.streaming,
      lagBytes: r.metrics.lagBytes,
      changes: r.metrics.changes,
    }));
    return {
      at: new Date(now).toISOString(),
      channels: Object.keys(this.ctx.config.channels),
      rows: this.rows(pinned),
      flows,
      cdc,
      deadLetters: await this.#deadLetterCount(),
      alerts: this.#alerts.slice(0, 15),
      stockValue: await this.#stockValueNow(),
      reconciliation: await this.#reconciliationRuns(),
      catalog: await this.#catalogVersions(),
    };
  }

  cells(skus: Iterable<string>): Record<string, Record<string, Cell>> {
    const out: Record<string, Record<string, Cell>> = {};
    for (const sku of skus) {
      const t = this.#tracked.get(sku);
      if (t) out[sku] = Object.fromEntries(t.cells);
    }
    return out;
  }
}

/** `/` (the page) and `/v1/dashboard/stream` (its data). */
export async function dashboardRoutes(app: FastifyInstance, { ctx, hub }: { ctx: ApiContext; hub: DashboardHub }): Promise<void> {
  const page = await readFile(new URL("./dashboard.html", import.meta.url), "utf8");
  app.get("/", { schema: { hide: true } }, async (_req, reply) =>
    reply
      .type("text/html; charset=utf-8")
      .header("cache-control", "no-cache")
      .header("content-security-policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'")
      .send(page),
  );

  app.get<{ Querystring: { pin?: string } }>(
    "/v1/dashboard/stream",
    {
      config: { scope: "admin" },
      schema: {
        operationId: "streamDashboard",
        tags: ["operators"],
        summary: "The dashboard's live feed (server-sent events): `summary` every second, `cells` as availability changes",
        querystring: {
          type: "object",
          properties: { pin: { type: "string", pattern: ID_LIST_JSON_PATTERN, description: `SKUs always shown (at most ${MAX_PINNED})` } },
        },
        response: { 200: { description: "server-sent events", content: { "text/event-stream": { schema: { type: "string" } } } } },
      },
    },
    async (req, reply) => {
      const pinned = [...new Set((req.query.pin ?? "").split(",").filter((s) => s !== ""))].slice(0, MAX_PINNED);
      let shown = new Set<string>();
      let closed = false;
      let res: ReturnType<typeof openEventStream> | null = null;
      // Listening before the pinned SKUs are read from the bucket: a change the relay publishes in
      // between is not lost (the cell would stay empty until the SKU next changed).
      const unlisten = hub.listen((changed) => {
        const mine = [...changed].filter((sku) => shown.has(sku));
        if (mine.length > 0 && !closed && res) res.write(`event: cells\ndata: ${JSON.stringify(hub.cells(mine))}\n\n`);
      });
      try {
        await hub.pin(pinned);
      } catch (error) {
        unlisten();
        throw error;
      }
      res = openEventStream(reply);
      const send = async () => {
        if (closed) return;
        const s = await hub.summary(pinned);
        shown = new Set(s.rows.map((r) => r.sku));
        if (!closed) res?.write(`event: summary\ndata: ${JSON.stringify(s)}\n\n`);
      };
      try {
        await send();
      } catch (error) {
        unlisten();
        throw error;
      }
      const timer = setInterval(() => void send().catch(() => {}), 1000); // a lost frame: the next second sends the state again
      const close = () => {
        if (closed) return;
        closed = true;
        clearInterval(timer);
        unlisten();
        if (!res.writableEnded) res.end();
        ctx.streams.delete(close);
      };
      ctx.streams.add(close);
      req.raw.on("close", close);
      res.on("error", close);
    },
  );
}
