import type { FastifyInstance } from "fastify";
import type { ApiContext } from "../context.ts";
import { ApiError, errors, invalidField } from "../errors.ts";
import { sendExport } from "../exportStream.ts";
import { EXPORT_CURSOR_PATTERN, entryJson, openExport, type EntryRow } from "../../../ledger/index.ts";

const Entry = {
  $id: "LedgerEntry",
  type: "object",
  description: "One leg of a committed command: a bucket's delta and its balance after, hash-chained per SKU",
  properties: {
    entryId: { type: "integer" },
    commandId: { type: "string" },
    leg: { type: "integer" },
    sku: { type: "string" },
    location: { type: "string" },
    bucket: { type: "string" },
    delta: { type: "integer" },
    balanceAfter: { type: "integer" },
    movement: { type: "string" },
    sourceSystem: { type: "string" },
    sourceRef: { type: "string" },
    occurredAt: { type: "string", format: "date-time" },
    recordedAt: { type: "string", format: "date-time" },
    skuSeq: { type: "integer" },
    value: {
      type: ["integer", "string", "null"],
      description: "signed value in minor units (past 2^53, a decimal string); null: not an on_hand leg, or recorded before valuation",
    },
    unitCost: { type: ["integer", "string", "null"], description: "the unit cost it was valued at, minor units; null where value is" },
    valuationFlag: { type: ["string", "null"], enum: ["no_cost", "negative_stock", null], description: "why the value is uncertain, or null" },
    prevHash: { type: "string" },
    hash: { type: "string" },
  },
} as const;

/** The named component schemas of these routes. */
export const ledgerSchemas = [
  Entry,
  {
    $id: "LedgerPage",
    type: "object",
    required: ["entries", "nextCursor"],
    properties: {
      entries: { type: "array", items: { $ref: "LedgerEntry#" } },
      nextCursor: { type: ["string", "null"], description: "pass as cursor for the next page; null on the last page" },
    },
  },
] as const;

const MOVEMENTS = [
  "receive",
  "sell",
  "return",
  "return_damaged",
  "reserve",
  "release",
  "fulfill",
  "adjust",
  "count_variance",
  "transfer_out",
  "transfer_in",
];

interface EntriesQuery {
  sku?: string;
  location?: string;
  from?: string;
  to?: string;
  type?: string;
  cursor?: string;
  limit: number;
}

const date = (name: string, v: string | undefined): Date | undefined => {
  if (v === undefined) return undefined;
  const d = new Date(v);
  // Years 0001–9999 only: Postgres has no year 0, and a bound outside that range means nothing to a ledger.
  if (Number.isNaN(d.getTime()) || !/^\d{4}-\d{2}-\d{2}/.test(v) || d.getUTCFullYear() < 1 || d.getUTCFullYear() > 9999)
    throw invalidField(
      `querystring.${name}`,
      `expected an ISO-8601 date or date-time in the years 0001 to 9999, got ${JSON.stringify(v.slice(0, 40))}`,
    );
  return d;
};

/** Ledger entries for finance: paged (keyset on entry id) and a streamed export. */
export async function ledgerRoutes(app: FastifyInstance, { ctx }: { ctx: ApiContext }): Promise<void> {
  entriesRoute(app, ctx);
  exportRoute(app, ctx);
}

const config = { scope: "ledger:read" as const };

/** GET /v1/ledger/entries: paged entries. */
function entriesRoute(app: FastifyInstance, ctx: ApiContext): void {
  app.get<{ Querystring: EntriesQuery }>(
    "/v1/ledger/entries",
    {
      config,
      schema: {
        operationId: "listLedgerEntries",
        tags: ["ledger"],
        summary: "Ledger entries in entry order, paged: pass nextCursor as cursor for the next page",
        querystring: {
          type: "object",
          properties: {
            sku: { type: "string", maxLength: 200 },
            location: { type: "string", maxLength: 200 },
            from: { type: "string", description: "recorded at or after (ISO-8601)" },
            to: { type: "string", description: "recorded before (ISO-8601)" },
            type: { type: "string", enum: MOVEMENTS, description: "the movement" },
            cursor: { type: "string", pattern: "^[0-9]{1,18}$", description: "opaque: the nextCursor of the previous page" },
            limit: { type: "integer", minimum: 1, maximum: 1000, default: 100 },
          },
        },
        response: { 200: { $ref: "LedgerPage#" }, ...errors(400, 401, 403) },
      },
    },
    async (req) => {
      const q = req.query;
      const from = date("from", q.from);
      const to = date("to", q.to);
      const only = ctx.locationsFor(req);
      if (only && q.location !== undefined && !only.has(q.location))
        throw new ApiError(403, "forbidden", `this token may only read the locations of channel ${req.principal!.channel}`);
      const { sql } = ctx;
      const after = q.cursor !== undefined ? Number(q.cursor) : 0;
      // One SKU is read through its chain index (sku, sku_seq), in chain order, which is its entry order
      // (`tally ledger verify` checks that they agree): the next page starts after the cursor's sequence.
      // A cursor that is not an entry of the SKU (or no longer in the ledger) is a filter on entry ids.
      const [cursorSeq] =
        q.sku !== undefined && after > 0
          ? await sql<Array<{ sku_seq: number }>>`select sku_seq from ledger_entries where entry_id = ${after} and sku = ${q.sku}`
          : [];
      const rows = await sql<Array<EntryRow>>`
        select entry_id, command_id, leg, sku, location, bucket, delta, balance_after, movement, source_system, source_ref,
               occurred_at, recorded_at, sku_seq, value, unit_cost, valuation_flag, prev_hash, hash
          from ledger_entries
         where ${
           q.sku === undefined
             ? sql`entry_id > ${after}`
             : cursorSeq !== undefined
               ? sql`sku = ${q.sku} and sku_seq > ${cursorSeq.sku_seq}`
               : sql`sku = ${q.sku} and entry_id > ${after}`
         }
           ${q.location !== undefined ? sql`and location = ${q.location}` : sql``}
           ${only ? sql`and location = any(${sql.array([...only])}::text[])` : sql``}
           ${q.type !== undefined ? sql`and movement = ${q.type}` : sql``}
           ${from ? sql`and recorded_at >= ${from}` : sql``}
           ${to ? sql`and recorded_at < ${to}` : sql``}
         order by ${q.sku !== undefined ? sql`sku_seq` : sql`entry_id`}
         limit ${q.limit + 1}`;
      const page = rows.slice(0, q.limit);
      return {
        entries: page.map((r) => entryJson(r)),
        nextCursor: rows.length > q.limit ? String(page[page.length - 1]!.entry_id) : null,
      };
    },
  );
}

/** GET /v1/ledger/export: the streamed incremental export. */
function exportRoute(app: FastifyInstance, ctx: ApiContext): void {
  app.get<{ Querystring: { cursor?: string; from?: string; to?: string; format: "csv" | "ndjson" } }>(
    "/v1/ledger/export",
    {
      config,
      schema: {
        operationId: "exportLedger",
        tags: ["ledger"],
        summary: "Every committed entry after `cursor` (all, without one), streamed; the next cursor in a header, the summary in a trailer",
        description:
          "CSV (RFC 4180: one header row, one row per entry, CRLF) or NDJSON (one entry per line). Every row carries its unit " +
          "(the item's base unit; empty for a SKU no item master defines). The `Tally-Export-Cursor` response header is the cursor " +
          "to pass next time: pulled one after the other, exports contain every committed entry exactly once, however many writers. " +
          "The summary (count, sums of deltas per unit and bucket, last hash, cursors) comes as the HTTP trailer " +
          "`Tally-Export-Summary` (JSON), after the last row. `from`/`to` filter on recorded_at (a report, not an increment). " +
          "A channel-scoped token cannot export (the export is the whole ledger).",
        querystring: {
          type: "object",
          properties: {
            cursor: { type: "string", pattern: EXPORT_CURSOR_PATTERN.source, description: "the Tally-Export-Cursor of the previous export" },
            from: { type: "string" },
            to: { type: "string" },
            format: { type: "string", enum: ["csv", "ndjson"], default: "csv" },
          },
        },
        response: {
          200: {
            description: "the entries (format=csv: text/csv; format=ndjson: application/x-ndjson), then the summary trailer",
            content: {
              "text/csv": { schema: { type: "string", description: "RFC 4180 CSV: a header row, then one row per entry" } },
              "application/x-ndjson": { schema: { type: "string", description: "one LedgerEntry JSON object per line" } },
            },
          },
          ...errors(400, 401, 403),
        },
      },
    },
    async (req, reply) => {
      if (req.principal?.channel) throw new ApiError(403, "forbidden", "a channel-scoped token cannot export the whole ledger");
      const from = date("from", req.query.from);
      const to = date("to", req.query.to);
      const { format, cursor } = req.query;
      const exp = await openExport(ctx.sql, format, { cursor, from, to });
      return sendExport(reply, exp, format, `ledger-${cursor ?? "0"}-${exp.nextCursor}`);
    },
  );
}
