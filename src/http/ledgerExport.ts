import type { Sql } from "postgres";
import { quantityJson } from "../../ledger/index.ts";

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
  /** recorded_at ≥ from (inclusive); default: the beginning. */
  readonly from?: Date | undefined;
  /** recorded_at < to (exclusive); default: now and beyond. */
  readonly to?: Date | undefined;
}

/** What finance checks an export against: how many entries, the sum of deltas per bucket, the last hash. */
export interface ExportSummary {
  readonly count: number;
  /** Exact: a number, or a decimal string past 2^53 (as every quantity in JSON). */
  readonly deltas: Record<string, number | string>;
  readonly firstEntryId: number | null;
  readonly lastEntryId: number | null;
  readonly lastHash: string | null;
  readonly from: string | null;
  readonly to: string | null;
}

interface EntryRow {
  entry_id: number;
  command_id: string;
  leg: number;
  sku: string;
  location: string;
  bucket: string;
  delta: number | bigint;
  balance_after: number | bigint;
  movement: string;
  source_system: string;
  source_ref: string;
  occurred_at: Date;
  recorded_at: Date;
  sku_seq: number;
  prev_hash: string;
  hash: string;
}

const csvCell = (v: unknown): string => {
  const s = v instanceof Date ? v.toISOString() : String(v);
  return /[",\r\n]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s;
};

const jsonRow = (r: EntryRow) =>
  JSON.stringify(
    {
      entryId: r.entry_id,
      commandId: r.command_id,
      leg: r.leg,
      sku: r.sku,
      location: r.location,
      bucket: r.bucket,
      delta: r.delta,
      balanceAfter: r.balance_after,
      movement: r.movement,
      sourceSystem: r.source_system,
      sourceRef: r.source_ref,
      occurredAt: r.occurred_at.toISOString(),
      recordedAt: r.recorded_at.toISOString(),
      skuSeq: r.sku_seq,
      prevHash: r.prev_hash,
      hash: r.hash,
    },
    quantityJson,
  );

/**
 * Streams every ledger entry recorded in the range, in entry order, as CSV (header row, then one row
 * per entry, then a `# summary {…}` line) or NDJSON (one entry per line, then `{"summary": {…}}`).
 * Rows come through a server-side cursor, a batch at a time, and the next batch is read only when
 * the consumer has taken the last one, so memory stays flat however large the ledger.
 */
export async function* exportLedger(
  sql: Sql,
  format: "csv" | "ndjson",
  range: ExportRange = {},
  onProgress?: (summary: ExportSummary) => void,
): AsyncGenerator<string, ExportSummary> {
  let count = 0;
  // Summed exactly: over a whole ledger a bucket's deltas may pass 2^53.
  const deltas: Record<string, bigint> = { on_hand: 0n, reserved: 0n, in_transit: 0n, damaged: 0n };
  let firstEntryId: number | null = null;
  let lastEntryId: number | null = null;
  let lastHash: string | null = null;
  const summary = (): ExportSummary => ({
    count,
    deltas: Object.fromEntries(Object.entries(deltas).map(([bucket, sum]) => [bucket, quantityJson(bucket, sum) as number | string])),
    firstEntryId,
    lastEntryId,
    lastHash,
    from: range.from?.toISOString() ?? null,
    to: range.to?.toISOString() ?? null,
  });
  if (format === "csv") yield `${EXPORT_COLUMNS.join(",")}\n`;
  const cursor = sql<Array<EntryRow>>`
    select entry_id, command_id, leg, sku, location, bucket, delta, balance_after, movement, source_system, source_ref,
           occurred_at, recorded_at, sku_seq, prev_hash, hash
      from ledger_entries
     where true
       ${range.from ? sql`and recorded_at >= ${range.from}` : sql``}
       ${range.to ? sql`and recorded_at < ${range.to}` : sql``}
     order by entry_id`.cursor(2000);
  for await (const rows of cursor) {
    let chunk = "";
    for (const r of rows) {
      count++;
      deltas[r.bucket] = (deltas[r.bucket] ?? 0n) + BigInt(r.delta);
      firstEntryId ??= r.entry_id;
      lastEntryId = r.entry_id;
      lastHash = r.hash;
      chunk += format === "csv" ? `${EXPORT_COLUMNS.map((c) => csvCell(r[c])).join(",")}\n` : `${jsonRow(r)}\n`;
    }
    yield chunk;
    onProgress?.(summary());
  }
  const s = summary();
  yield format === "csv" ? `# summary ${JSON.stringify(s)}\n` : `${JSON.stringify({ summary: s })}\n`;
  return s;
}

/** Parses the summary line an export ends with (CSV or NDJSON). */
export function parseExportSummary(lastLine: string): ExportSummary | null {
  const line = lastLine.trim();
  try {
    if (line.startsWith("# summary ")) return JSON.parse(line.slice("# summary ".length)) as ExportSummary;
    const o = JSON.parse(line) as { summary?: ExportSummary };
    return o.summary ?? null;
  } catch {
    return null;
  }
}
