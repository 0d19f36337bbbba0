/**
 * Where the write-back sends rows: inbound tables in the source's own Postgres (inserted on a
 * session tagged with a replication origin, so the CDC reader skips what it wrote), or signed POSTs
 * to the ERP's HTTP interface. Both are keyed by Tally's (command_id, leg) / (journal_id, line): a
 * row sent twice (a retry after a crash) is inserted once.
 */
import type { ReservedSql } from "postgres";
import type { Logger } from "pino";
import type { Sql } from "../src/platform/index.ts";
import { ConfigFileError, connectPostgres, signPayload, type WriteBackConfig } from "../src/platform/index.ts";
import { quoteIdent } from "./admin.ts";
import { identifiersOf } from "./crosswalk.ts";
import { WRITE_BACK_ORIGIN_PREFIX } from "./reader.ts";
import type { ResolvedSource } from "./sources.ts";

/** One on_hand leg as the ERP receives it: the signed change in the ERP's item and stock unit. */
export interface MovementRow {
  readonly command_id: string;
  readonly leg: number;
  readonly item_no: string;
  readonly location: string;
  /** Exact decimal text in `uom`. */
  readonly qty: string;
  readonly uom: string;
  readonly movement: string;
  /** Integer minor units of `currency` (text: exact past 2^53), or null. */
  readonly unit_cost: string | null;
  readonly value: string | null;
  readonly currency: string | null;
  readonly occurred_at: string;
  readonly source_system: string;
  readonly source_ref: string;
}

/** One GL journal line as the ERP receives it (amounts in integer minor units of `currency`). */
export interface JournalRow {
  readonly journal_id: string;
  readonly line: number;
  readonly account: string;
  readonly cost_center: string;
  readonly debit: string;
  readonly credit: string;
  readonly currency: string;
  readonly posted_on: string;
  readonly business_date: string;
  readonly sku: string | null;
  readonly item_no: string | null;
  readonly qty: string | null;
  readonly unit: string | null;
  readonly command_id: string | null;
  readonly movement: string;
}

/** A replenishment request as a purchase-requisition suggestion (quantities in the ERP's stock unit). */
export interface RequisitionRow {
  readonly requisition_id: string;
  readonly item_no: string;
  readonly location: string;
  readonly qty: string;
  readonly uom: string;
  readonly available: string;
  readonly reorder_point: string;
  readonly command_id: string;
  readonly requested_at: string;
}

export type Batch =
  | { readonly kind: "movements"; readonly rows: ReadonlyArray<MovementRow> }
  | { readonly kind: "journal"; readonly rows: ReadonlyArray<JournalRow> }
  | { readonly kind: "requisitions"; readonly rows: ReadonlyArray<RequisitionRow> };

export interface Sink {
  /** Sends the rows (all or none); throws on failure. Rows already there are left as they are. */
  send(batch: Batch): Promise<void>;
  close(): Promise<void>;
}

/**
 * The replication origin of a source's write-back sessions (the reader skips its transactions). An
 * origin is active in one session at a time: the writer has its own, reconciliation's corrections another.
 */
export const writeBackOrigin = (source: string, purpose: "writer" | "correction" = "writer"): string =>
  `${WRITE_BACK_ORIGIN_PREFIX}_${source.replace(/-/g, "_")}${purpose === "writer" ? "" : `_${purpose}`}`;

/** The environment variable holding an HTTP write-back's signing secret, unless the config names another. */
export const writeBackSecretVar = (source: string): string => `TALLY_WRITEBACK_${source.toUpperCase().replace(/-/g, "_")}_SECRET`;

const WRITE_BACK_DELIVERY_HEADER = "tally-delivery";
const WRITE_BACK_SIGNATURE_HEADER = "tally-signature";

/** The sink a source's `writeBack` names (a SettingsError-like Error naming a missing secret). */
export function openSink(
  source: ResolvedSource,
  log: Logger,
  purpose: "writer" | "correction" = "writer",
  env: Readonly<Record<string, string | undefined>> = process.env,
): Sink {
  const w = source.writeBack;
  if (!w) throw new ConfigFileError(`sources.${source.name}.writeBack: not configured`);
  if (w.http) return new HttpSink(source.name, w.http.url, writeBackSecret(source, env)!, w.http.timeoutMs);
  return new PostgresSink(source, w, log, writeBackOrigin(source.name, purpose));
}

/** An HTTP write-back's signing secret (undefined for inbound tables); throws naming the variable when it is missing or short. */
export function writeBackSecret(source: ResolvedSource, env: Readonly<Record<string, string | undefined>> = process.env): string | undefined {
  const http = source.writeBack?.http;
  if (!http) return undefined;
  const variable = http.secretEnv ?? writeBackSecretVar(source.name);
  const secret = env[variable];
  if (!secret || secret.length < 16)
    throw new ConfigFileError(`sources.${source.name}.writeBack.http: ${variable} must hold the signing secret (at least 16 characters)`);
  return secret;
}

/**
 * Inbound tables in the source database, written on a session tagged with the write-back's replication
 * origin. Each batch reserves the pool's one connection and releases it; after any failure the pool is
 * thrown away (its sockets destroyed) and the next batch connects afresh. A reserved connection whose
 * server went away must never be used again: postgres.js leaves a query on it unanswered for ever.
 */
export class PostgresSink implements Sink {
  #pool: Sql | null = null;
  #warned = false;

  constructor(
    readonly source: ResolvedSource,
    readonly config: WriteBackConfig,
    readonly log: Logger,
    readonly origin: string,
  ) {}

  /** Tags the session with the origin, unless it already is (or the privilege is missing: logged once); true when tagged. */
  async #tag(conn: ReservedSql): Promise<boolean> {
    const origin = this.origin;
    try {
      const [{ on }] = await conn<[{ on: boolean }]>`select pg_replication_origin_session_is_setup() as on`;
      if (on) return true;
      await conn`select pg_replication_origin_create(${origin}) where not exists (select 1 from pg_replication_origin where roname = ${origin})`;
      await conn`select pg_replication_origin_session_setup(${origin})`;
      return true;
    } catch (error) {
      if ((error as { code?: string }).code !== "42501") throw error;
      // Without the privilege the session stays untagged: the inbound tables' import must mark what it books (the demo ERP's `origin` column).
      if (!this.#warned)
        this.log.warn(
          { err: error, origin },
          "write-back: cannot tag the session with a replication origin (grant EXECUTE on pg_replication_origin_* or use a superuser)",
        );
      this.#warned = true;
      return false;
    }
  }

  async send(batch: Batch): Promise<void> {
    const table = this.config[batch.kind];
    if (!table || batch.rows.length === 0) return;
    const pool = (this.#pool ??= connectPostgres(this.source.url, { max: 1, application: `tally-writeback-${this.source.name}` }));
    const rows = batch.rows.map((r, ord) => ({ ...r, ord }));
    try {
      const conn = await pool.reserve();
      const tagged = await this.#tag(conn);
      await conn`begin`;
      await conn.unsafe(INSERTS[batch.kind](table), [JSON.stringify(rows)]);
      // A transaction of an origin carries the origin's timestamp as its commit time (what logical
      // decoding reports, and track_commit_timestamp keeps), not the server's clock. Left unset, the
      // session's first commit fixes it and every later transaction of the session repeats it: the
      // ERP's WAL would date each write-back at the writer's first batch. Stamped now, just before the commit.
      if (tagged) await conn`select pg_replication_origin_xact_setup('0/0', clock_timestamp())`;
      await conn`commit`;
      conn.release();
    } catch (error) {
      // The connection may be gone (a rollback on it could wait for ever): the server rolls back what the dropped session began.
      this.#discard();
      throw error;
    }
  }

  /** Destroys the pool's connections (ending whatever waits on them) without waiting. */
  #discard(): void {
    const pool = this.#pool;
    this.#pool = null;
    pool?.end({ timeout: 0 }).catch((err: unknown) => this.log.debug({ err }, "write-back: closing the ERP connection failed"));
  }

  /** Ends the connection at once: a batch still in flight (the writer was stopped) is rolled back by the server and sent again by the next writer. */
  async close(): Promise<void> {
    const pool = this.#pool;
    this.#pool = null;
    await pool?.end({ timeout: 0 });
  }
}

const movementsInsert = (table: string) => `
  insert into ${quoteQualified(table)} (command_id, leg, item_no, location, qty, uom, movement, unit_cost, value, currency, occurred_at, source_system, source_ref)
  select command_id, leg, item_no, location, qty, uom, movement, unit_cost, value, currency, occurred_at, source_system, source_ref
    from jsonb_to_recordset($1::text::jsonb) as t(ord int, command_id text, leg smallint, item_no text, location text, qty numeric, uom text,
         movement text, unit_cost numeric, value numeric, currency text, occurred_at timestamptz, source_system text, source_ref text)
   order by ord
  on conflict (command_id, leg) do nothing`;

const journalInsert = (table: string) => `
  insert into ${quoteQualified(table)} (journal_id, line, account, cost_center, debit, credit, currency, posted_on, business_date, sku, item_no, qty, unit, command_id, movement)
  select journal_id, line, account, cost_center, debit, credit, currency, posted_on, business_date, sku, item_no, qty, unit, command_id, movement
    from jsonb_to_recordset($1::text::jsonb) as t(ord int, journal_id text, line smallint, account text, cost_center text, debit numeric, credit numeric,
         currency text, posted_on date, business_date date, sku text, item_no text, qty bigint, unit text, command_id text, movement text)
   order by ord
  on conflict (journal_id, line) do nothing`;

const requisitionsInsert = (table: string) => `
  insert into ${quoteQualified(table)} (requisition_id, item_no, location, qty, uom, available, reorder_point, command_id, requested_at)
  select requisition_id, item_no, location, qty, uom, available, reorder_point, command_id, requested_at
    from jsonb_to_recordset($1::text::jsonb) as t(ord int, requisition_id text, item_no text, location text, qty numeric, uom text,
         available numeric, reorder_point numeric, command_id text, requested_at timestamptz)
   order by ord
  on conflict (requisition_id) do nothing`;

const INSERTS: Readonly<Record<Batch["kind"], (table: string) => string>> = {
  movements: (t) => movementsInsert(t),
  journal: (t) => journalInsert(t),
  requisitions: (t) => requisitionsInsert(t),
};

const quoteQualified = (table: string) =>
  table
    .split(".")
    .map((p) => quoteIdent(p))
    .join(".");

/** The ERP's HTTP interface: one signed POST per batch; the receiver keeps each (command_id, leg) once. */
export class HttpSink implements Sink {
  constructor(
    readonly source: string,
    readonly url: string,
    readonly secret: string,
    readonly timeoutMs: number,
  ) {}

  async send(batch: Batch): Promise<void> {
    if (batch.rows.length === 0) return;
    const first = batch.rows[0]!;
    const last = batch.rows[batch.rows.length - 1]!;
    const key = (r: MovementRow | JournalRow | RequisitionRow) =>
      "leg" in r ? `${r.command_id}#${r.leg}` : "line" in r ? `${r.journal_id}#${r.line}` : r.requisition_id;
    const deliveryId = `${this.source}:${batch.kind}:${key(first)}..${key(last)}`;
    const text = JSON.stringify({ source: this.source, kind: batch.kind, deliveryId, rows: batch.rows });
    let res: Response;
    try {
      res = await fetch(this.url, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          "user-agent": "tally-writeback",
          [WRITE_BACK_SIGNATURE_HEADER]: signPayload(this.secret, text),
          [WRITE_BACK_DELIVERY_HEADER]: deliveryId,
        },
        body: text,
        signal: AbortSignal.timeout(this.timeoutMs),
      });
    } catch (error) {
      const e = error as Error & { cause?: { code?: string } };
      throw new Error(`POST ${this.url}: ${e.name === "TimeoutError" ? `no answer within ${this.timeoutMs} ms` : (e.cause?.code ?? e.message)}`);
    }
    await res.arrayBuffer().catch(() => undefined); // read only to free the socket: the status decides
    if (!res.ok) throw new Error(`POST ${this.url}: HTTP ${res.status}`);
  }

  async close(): Promise<void> {}
}

/** `delta` base units in a unit `factor` times larger, as exact decimal text; null when not exact. */
export function scaleDown(delta: bigint, factor: number): string | null {
  if (factor === 1) return delta.toString();
  const digits = Math.log10(factor);
  if (Number.isInteger(digits)) {
    const negative = delta < 0n;
    const abs = (negative ? -delta : delta).toString().padStart(digits + 1, "0");
    const text = `${abs.slice(0, -digits)}.${abs.slice(-digits)}`.replace(/\.?0+$/, "");
    return negative ? `-${text}` : text;
  }
  return delta % BigInt(factor) === 0n ? (delta / BigInt(factor)).toString() : null;
}

/** A SKU's item and unit in the ERP, or why the leg cannot be sent. */
export type ErpItem = { readonly itemNo: string; readonly uom: string; readonly factor: number } | { readonly missing: string };

/** The reverse crosswalk for a batch: each SKU's item number in the ERP and the ERP's stock unit. */
export async function erpItems(sql: Sql, source: ResolvedSource, skus: ReadonlyArray<string>): Promise<Map<string, ErpItem>> {
  const w = source.writeBack!;
  const found = await identifiersOf(sql, w.itemSystem, skus);
  const out = new Map<string, ErpItem>();
  for (const sku of skus) {
    const f = found.get(sku);
    if (!f) {
      out.set(sku, { missing: `SKU ${sku} has no ${w.itemSystem} identifier in the item crosswalk: the ERP has no item to book it on` });
      continue;
    }
    const unit = w.units[f.baseUnit];
    out.set(sku, { itemNo: f.id, uom: unit?.unit ?? f.baseUnit, factor: unit?.factor ?? 1 });
  }
  return out;
}
