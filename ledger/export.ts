import type { ReservedSql, Sql } from "postgres";
import { quantityJson } from "./store.ts";
import { type EntryRow, entryJson } from "./entryRow.ts";

/** The columns of an exported ledger entry, in order (the CSV header). */
export const EXPORT_COLUMNS = [
  "entry_id",
  "command_id",
  "leg",
  "sku",
  "location",
  "bucket",
  "delta",
  "balance_after",
  "unit",
  "value",
  "unit_cost",
  "valuation_flag",
  "movement",
  "source_system",
  "source_ref",
  "occurred_at",
  "recorded_at",
  "sku_seq",
  "prev_hash",
  "hash",
] as const;

export interface ExportRange {
  /** Resume after a previous export: its `nextCursor`. Absent: from the first entry. */
  readonly cursor?: string | undefined;
  /** recorded_at ≥ from (inclusive); default: the beginning. A filter only: see `cursor` for increments. */
  readonly from?: Date | undefined;
  /** recorded_at < to (exclusive); default: now and beyond. */
  readonly to?: Date | undefined;
}

/** The response header that carries the next cursor, and the trailer that carries the summary. */
export const EXPORT_CURSOR_HEADER = "tally-export-cursor";
export const EXPORT_SUMMARY_TRAILER = "tally-export-summary";

/** A resume cursor: a transaction id (xid8) in decimal (19 digits at most: always below 2^64). */
export const EXPORT_CURSOR_PATTERN = /^[0-9]{1,19}$/;

/**
 * What finance checks an export against: how many entries, the sum of deltas per unit and bucket
 * (`sums.EA.on_hand`; unit "" for a SKU no item master defines), the last hash, and the cursor to
 * resume from.
 */
export interface ExportSummary {
  readonly count: number;
  /** Exact: a number, or a decimal string past 2^53 (as every quantity in JSON). */
  readonly sums: Record<string, Record<string, number | string>>;
  readonly firstEntryId: number | null;
  readonly lastEntryId: number | null;
  readonly lastHash: string | null;
  readonly from: string | null;
  readonly to: string | null;
  /** The cursor this export resumed from (null: from the first entry). */
  readonly cursor: string | null;
  /** Pass as `cursor` to get exactly the entries committed after this export's. */
  readonly nextCursor: string;
}

/** An entry with its item's unit, as the export reads it. */
interface ExportRow extends EntryRow {
  unit: string;
}

/**
 * RFC 4180: a field with a comma, quote or line break is quoted, quotes doubled; records end in CRLF.
 * Null (an entry without a value) is an empty cell.
 */
export const csvCell = (v: unknown): string => {
  if (v === null || v === undefined) return "";
  const s = v instanceof Date ? v.toISOString() : String(v);
  return /[",\r\n]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s;
};
export const CRLF = "\r\n";

const jsonRow = (r: ExportRow) => JSON.stringify(entryJson(r), quantityJson);

/** An export opened on its snapshot: the cursor is known before the first row is sent. */
export interface LedgerExport {
  /** The cursor the next export resumes from (known up front, e.g. for a response header). */
  readonly nextCursor: string;
  /** The file, a chunk at a time; its return value is the summary. Ends the snapshot when done. */
  readonly chunks: AsyncGenerator<string, ExportSummary>;
  /** Ends the snapshot and frees its connection (idempotent; also done when `chunks` finishes). */
  close(): Promise<void>;
}

/**
 * Opens an export of the entries committed after `range.cursor` (all, without one) and before this
 * export's horizon, in entry order: CSV (RFC 4180: one header row, one row per entry, nothing else)
 * or NDJSON (one entry per line). The summary is not part of the file: it is the generator's return
 * value (HTTP sends it as a trailer, the CLI beside the file and on stderr).
 *
 * One REPEATABLE READ snapshot on a connection of its own: the horizon is that snapshot's xmin. Every
 * transaction below it has ended, so the entries with `txid` below it are all visible and no more can
 * appear; entries of transactions still open, or committed with an id at or above the horizon, are
 * left for the next export (cursor = this horizon). A worker's batch is one statement, one
 * transaction, so a batch is never split across two exports. A transaction held open anywhere on
 * the server holds the horizon back: later entries wait for it, none are lost.
 *
 * Rows come through a server-side cursor, a batch at a time, and the next batch is read only when
 * the consumer has taken the last one, so memory stays flat however large the ledger.
 */
export async function openExport(
  sql: Sql,
  format: "csv" | "ndjson",
  range: ExportRange = {},
  onProgress?: (summary: ExportSummary) => void,
): Promise<LedgerExport> {
  const { conn, horizon: nextCursor, close } = await openSnapshot(sql);
  return { nextCursor, chunks: exportRows(conn, format, range, nextCursor, close, onProgress), close };
}

/** A REPEATABLE READ snapshot on a reserved connection, with its xmin horizon (every export's start). */
export interface ExportSnapshot {
  readonly conn: ReservedSql;
  /** The snapshot's xmin: every transaction below it has ended, so its rows are all visible and final. */
  readonly horizon: string;
  /** Ends the snapshot and frees its connection (idempotent). */
  close(): Promise<void>;
}

/** Opens the snapshot an export reads in; the connection is freed if opening fails. */
export async function openSnapshot(sql: Sql): Promise<ExportSnapshot> {
  const conn = await sql.reserve();
  let open = true;
  const close = async () => {
    if (!open) return;
    open = false;
    try {
      await conn`rollback`;
    } catch {
      // The connection is gone; releasing it below is all there is left to do.
    } finally {
      conn.release();
    }
  };
  try {
    await conn`begin isolation level repeatable read read only`;
    const [{ horizon }] = await conn<[{ horizon: string }]>`select pg_snapshot_xmin(pg_current_snapshot())::text as horizon`;
    return { conn, horizon, close };
  } catch (error) {
    await close();
    throw error;
  }
}

async function* exportRows(
  conn: ReservedSql,
  format: "csv" | "ndjson",
  range: ExportRange,
  horizon: string,
  close: () => Promise<void>,
  onProgress?: (summary: ExportSummary) => void,
): AsyncGenerator<string, ExportSummary> {
  let count = 0;
  // Summed exactly: over a whole ledger a bucket's deltas may pass 2^53.
  const sums: Record<string, Record<string, bigint>> = {};
  let firstEntryId: number | null = null;
  let lastEntryId: number | null = null;
  let lastHash: string | null = null;
  const summary = (): ExportSummary => ({
    count,
    sums: Object.fromEntries(
      Object.entries(sums).map(([u, b]) => [
        u,
        Object.fromEntries(Object.entries(b).map(([bucket, sum]) => [bucket, quantityJson(bucket, sum) as number | string])),
      ]),
    ),
    firstEntryId,
    lastEntryId,
    lastHash,
    from: range.from?.toISOString() ?? null,
    to: range.to?.toISOString() ?? null,
    cursor: range.cursor ?? null,
    nextCursor: horizon,
  });
  try {
    if (format === "csv") yield `${EXPORT_COLUMNS.join(",")}${CRLF}`;
    const cursor = conn<Array<ExportRow>>`
      select e.entry_id, e.command_id, e.leg, e.sku, e.location, e.bucket, e.delta, e.balance_after,
             coalesce(i.base_unit, '') as unit, e.value, e.unit_cost, e.valuation_flag, e.movement, e.source_system, e.source_ref,
             e.occurred_at, e.recorded_at, e.sku_seq, e.prev_hash, e.hash
        from ledger_entries e
        left join items i on i.sku = e.sku
       where (e.txid is null or e.txid < ${horizon}::xid8)
         ${range.cursor !== undefined ? conn`and e.txid >= ${range.cursor}::xid8` : conn``}
         ${range.from ? conn`and e.recorded_at >= ${range.from}` : conn``}
         ${range.to ? conn`and e.recorded_at < ${range.to}` : conn``}
       order by e.entry_id`.cursor(2000);
    for await (const rows of cursor) {
      let chunk = "";
      for (const r of rows) {
        count++;
        const unit = (sums[r.unit] ??= { on_hand: 0n, reserved: 0n, in_transit: 0n, damaged: 0n });
        unit[r.bucket] = (unit[r.bucket] ?? 0n) + BigInt(r.delta);
        firstEntryId ??= r.entry_id;
        lastEntryId = r.entry_id;
        lastHash = r.hash;
        chunk += format === "csv" ? `${EXPORT_COLUMNS.map((c) => csvCell(r[c])).join(",")}${CRLF}` : `${jsonRow(r)}\n`;
      }
      yield chunk;
      onProgress?.(summary());
    }
    return summary();
  } finally {
    await close();
  }
}
