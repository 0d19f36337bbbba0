import type { ReservedSql, Sql } from "postgres";
import { moneyJson } from "./entryRow.ts";
import { CRLF, csvCell, openSnapshot } from "./export.ts";
import { quantityJson } from "./store.ts";

/** The columns of an exported journal line, in order (the CSV header; the README lists them). */
export const GL_EXPORT_COLUMNS = [
  "journal_id",
  "line",
  "posted_on",
  "business_date",
  "period",
  "account",
  "cost_center",
  "debit",
  "credit",
  "currency",
  "sku",
  "qty",
  "unit",
  "command_id",
  "movement",
  "source_system",
  "source_ref",
  "memo",
] as const;

/** A journal line with its journal's columns, as the readers select it (dates as YYYY-MM-DD text). */
export interface GlLineRow {
  journal_id: string;
  line: number;
  posted_on: string;
  business_date: string;
  period: string;
  account: string;
  cost_center: string;
  /** numeric(38,0) as decimal text. */
  debit: string;
  credit: string;
  currency: string;
  sku: string | null;
  /** Base units the line moves; 0 on a money line (so the column is whole numbers, never empty). */
  qty: number | bigint;
  unit: string | null;
  command_id: string | null;
  movement: string;
  source_system: string;
  source_ref: string;
  memo: string | null;
}

/** A journal line as the API and the NDJSON export show it: amounts and qty as numbers, decimal strings past 2^53. */
export const glLineJson = (r: GlLineRow) => ({
  journalId: r.journal_id,
  line: r.line,
  postedOn: r.posted_on,
  businessDate: r.business_date,
  period: r.period,
  account: r.account,
  costCenter: r.cost_center,
  debit: moneyJson(r.debit),
  credit: moneyJson(r.credit),
  currency: r.currency,
  sku: r.sku,
  qty: quantityJson("qty", r.qty) as number | string,
  unit: r.unit,
  commandId: r.command_id,
  movement: r.movement,
  sourceSystem: r.source_system,
  sourceRef: r.source_ref,
  memo: r.memo,
});

/**
 * A calendar date `YYYY-MM-DD` (years 0001–9999, a day that exists), or null: what `--from`, `--to`,
 * `--at` and the routes' `from`, `to`, `at` accept.
 */
export function glDate(text: string): string | null {
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(text);
  if (!m) return null;
  const [y, mo, d] = [Number(m[1]), Number(m[2]), Number(m[3])];
  const date = new Date(Date.UTC(2000, mo - 1, d));
  date.setUTCFullYear(y);
  if (y < 1 || date.getUTCFullYear() !== y || date.getUTCMonth() !== mo - 1 || date.getUTCDate() !== d) return null;
  return text;
}

/** Journal lines posted between two dates, both inclusive (absent: unbounded). */
export interface GlRange {
  readonly from?: string | undefined;
  readonly to?: string | undefined;
  /** Resume after a previous export: its `nextCursor` (lines of journals committed since). Absent: all. */
  readonly cursor?: string | undefined;
}

/** A resume cursor of the streamed export: a transaction id (xid8) in decimal. */
export const GL_EXPORT_CURSOR_PATTERN = /^[0-9]{1,19}$/;

/** What an export is checked against: how many lines, the debit and credit totals (equal), the cursor to resume from. */
export interface GlExportSummary {
  readonly count: number;
  readonly debit: number | string;
  readonly credit: number | string;
  readonly from: string | null;
  readonly to: string | null;
  readonly cursor: string | null;
  /** Pass as `cursor` to get exactly the lines of journals committed after this export's. */
  readonly nextCursor: string;
}

/** The select list every journal reader uses (one definition of a row; qty 0 on money lines, so the column is whole numbers). */
const lineColumns = (sql: Sql | ReservedSql) => sql`
  l.journal_id, l.line, to_char(j.posted_on, 'YYYY-MM-DD') as posted_on, to_char(j.business_date, 'YYYY-MM-DD') as business_date,
  j.period, l.account, l.cost_center, l.debit::text as debit, l.credit::text as credit, j.currency, l.sku, coalesce(l.qty, 0) as qty, l.unit,
  j.command_id, j.movement, j.source_system, j.source_ref, l.memo`;

/** An export opened on its snapshot: the cursor is known before the first row is sent. */
export interface GlExport {
  readonly nextCursor: string;
  /** The file, a chunk at a time; its return value is the summary. Ends the snapshot when done. */
  readonly chunks: AsyncGenerator<string, GlExportSummary>;
  /** Ends the snapshot and frees its connection (idempotent; also done when `chunks` finishes). */
  close(): Promise<void>;
}

/**
 * Opens an export of the journal lines posted between `range.from` and `range.to` (inclusive), in
 * (posted_on, journal_id, line) order: CSV (RFC 4180, one header row, one row per line) or NDJSON.
 *
 * The txid horizon of the ledger export (ledger/export.ts): one REPEATABLE READ snapshot, whose xmin
 * is the horizon; journals whose transaction is below it are all visible and final, the others are
 * left for the export that resumes from this one's `nextCursor`. A journal and its lines are
 * written by one transaction, so a journal is never split across two exports. Rows come through a
 * server-side cursor, a batch at a time, read only as the consumer takes them: memory stays flat.
 */
export async function openGlExport(sql: Sql, format: "csv" | "ndjson", range: GlRange = {}): Promise<GlExport> {
  const { conn, horizon: nextCursor, close } = await openSnapshot(sql);
  return { nextCursor, chunks: glRows(conn, format, range, nextCursor, close), close };
}

async function* glRows(
  conn: ReservedSql,
  format: "csv" | "ndjson",
  range: GlRange,
  horizon: string,
  close: () => Promise<void>,
): AsyncGenerator<string, GlExportSummary> {
  let count = 0;
  let debit = 0n;
  let credit = 0n;
  try {
    if (format === "csv") yield `${GL_EXPORT_COLUMNS.join(",")}${CRLF}`;
    const cursor = conn<Array<GlLineRow>>`
      select ${lineColumns(conn)}
        from gl_journals j
        join gl_lines l on l.journal_id = j.journal_id
       where j.txid < ${horizon}::xid8
         ${range.cursor !== undefined ? conn`and j.txid >= ${range.cursor}::xid8` : conn``}
         ${range.from !== undefined ? conn`and j.posted_on >= ${range.from}::text::date` : conn``}
         ${range.to !== undefined ? conn`and j.posted_on <= ${range.to}::text::date` : conn``}
       order by j.posted_on, l.journal_id, l.line`.cursor(2000);
    for await (const rows of cursor) {
      let chunk = "";
      for (const r of rows) {
        count++;
        debit += BigInt(r.debit);
        credit += BigInt(r.credit);
        chunk += format === "csv" ? `${GL_EXPORT_COLUMNS.map((c) => csvCell(r[c])).join(",")}${CRLF}` : `${JSON.stringify(glLineJson(r))}\n`;
      }
      yield chunk;
    }
    return {
      count,
      debit: moneyJson(String(debit)) as number | string,
      credit: moneyJson(String(credit)) as number | string,
      from: range.from ?? null,
      to: range.to ?? null,
      cursor: range.cursor ?? null,
      nextCursor: horizon,
    };
  } finally {
    await close();
  }
}

/**
 * Where a reader of GET /v1/gl/journal stands: the window of journal transactions it is paging
 * through (`lo` ≤ txid < `hi`; `lo` null: from the first, `hi` null: the horizon of the next page's
 * read) and the last line it has seen in (posted_on, journal_id, line) order (null: none yet).
 */
export interface JournalCursor {
  readonly lo: string | null;
  readonly hi: string | null;
  readonly after: readonly [postedOn: string, journalId: string, line: number] | null;
}

const XID = /^[0-9]{1,19}$/;

/** The cursor as the API hands it out: opaque (base64url of its JSON). */
export const encodeJournalCursor = (c: JournalCursor): string => Buffer.from(JSON.stringify([c.lo, c.hi, c.after])).toString("base64url");

/** A cursor handed out by `encodeJournalCursor`, or null for anything else. */
export function decodeJournalCursor(text: string): JournalCursor | null {
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(text, "base64url").toString("utf8"));
  } catch {
    return null;
  }
  if (!Array.isArray(v) || v.length !== 3) return null;
  const [lo, hi, after] = v as [unknown, unknown, unknown];
  const xid = (x: unknown) => x === null || (typeof x === "string" && XID.test(x));
  if (!xid(lo) || !xid(hi)) return null;
  if (after !== null) {
    if (!Array.isArray(after) || after.length !== 3) return null;
    const [d, j, l] = after as [unknown, unknown, unknown];
    if (typeof d !== "string" || glDate(d) === null || typeof j !== "string" || j.length > 1000) return null;
    if (typeof l !== "number" || !Number.isInteger(l) || l < 1 || l > 32767) return null;
  }
  return { lo: lo as string | null, hi: hi as string | null, after: after as JournalCursor["after"] };
}

export interface JournalPage {
  readonly lines: ReadonlyArray<GlLineRow>;
  /** The next page of this pass; null when this page ended it (every journal final at its horizon is read). */
  readonly nextCursor: JournalCursor | null;
  /** Where to pick up later: the next page, or (after the last) the journals committed since. */
  readonly resumeCursor: JournalCursor;
}

/**
 * One page of journal lines posted between `range.from` and `range.to` (inclusive), keyset-paged on
 * (posted_on, journal_id, line). A keyset alone would skip a journal committed after the reader has
 * passed its key, so a pass pages only through the journals whose transaction is in [lo, hi), below
 * the horizon of its first page (final, as in the export); the pass's last page hands on a cursor to
 * the next pass, [hi, the horizon then). Pages resumed one after the other hold every journal line
 * exactly once, however many posters commit meanwhile.
 */
export async function readJournalPage(
  sql: Sql,
  range: { readonly from?: string | undefined; readonly to?: string | undefined },
  cursor: JournalCursor | null,
  limit: number,
): Promise<JournalPage> {
  const lo = cursor?.lo ?? null;
  // A new snapshot's xmin is never below an earlier one's: every journal below `hi` is visible to the read below.
  const hi = cursor?.hi ?? (await sql<[{ h: string }]>`select pg_snapshot_xmin(pg_current_snapshot())::text as h`)[0].h;
  const after = cursor?.after ?? null;
  const rows = await sql<Array<GlLineRow>>`
    select ${lineColumns(sql)}
      from gl_journals j
      join gl_lines l on l.journal_id = j.journal_id
     where j.txid < ${hi}::xid8
       ${lo !== null ? sql`and j.txid >= ${lo}::xid8` : sql``}
       ${range.from !== undefined ? sql`and j.posted_on >= ${range.from}::text::date` : sql``}
       ${range.to !== undefined ? sql`and j.posted_on <= ${range.to}::text::date` : sql``}
       ${after !== null ? sql`and (j.posted_on, l.journal_id, l.line) > (${after[0]}::text::date, ${after[1]}, ${after[2]}::smallint)` : sql``}
     order by j.posted_on, l.journal_id, l.line
     limit ${limit + 1}`;
  const lines = rows.slice(0, limit);
  const last = lines.at(-1);
  if (rows.length > limit && last) {
    const next: JournalCursor = { lo, hi, after: [last.posted_on, last.journal_id, last.line] };
    return { lines, nextCursor: next, resumeCursor: next };
  }
  return { lines, nextCursor: null, resumeCursor: { lo: hi, hi: null, after: null } };
}
