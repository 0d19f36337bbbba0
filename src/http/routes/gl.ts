import type { FastifyInstance, FastifyRequest } from "fastify";
import type { ApiContext } from "../context.ts";
import { ApiError, errors, invalidField } from "../errors.ts";
import {
  GL_EXPORT_CURSOR_PATTERN,
  decodeJournalCursor,
  encodeJournalCursor,
  glDate,
  glLineJson,
  openGlExport,
  readJournalPage,
  businessDate,
  trialBalance,
} from "../../../ledger/index.ts";
import { sendExport } from "../exportStream.ts";

const amount = (description: string) => ({ type: ["integer", "string"], description: `${description}, minor units (past 2^53, a decimal string)` });
const optionalText = { type: ["string", "null"] };

/** The named component schemas of these routes. */
export const glSchemas = [
  {
    $id: "GlJournalLine",
    type: "object",
    description: "One line of a balanced GL journal, with its journal's dates, currency and source",
    required: ["journalId", "line", "postedOn", "businessDate", "period", "account", "costCenter", "debit", "credit", "currency", "qty"],
    properties: {
      journalId: { type: "string", description: "the command id (inventory journals) or 'money:' + the POS transaction's key" },
      line: { type: "integer" },
      postedOn: { type: "string", format: "date", description: "the date it posts on: the business date, or the first day of the next open period" },
      businessDate: { type: "string", format: "date" },
      period: { type: "string", description: "YYYY-MM of postedOn" },
      account: { type: "string" },
      costCenter: { type: "string" },
      debit: amount("the debit (0 on a credit line)"),
      credit: amount("the credit (0 on a debit line)"),
      currency: { type: "string" },
      sku: optionalText,
      qty: { type: ["integer", "string"], description: "base units the line moves (past 2^53, a decimal string); 0 on money lines" },
      unit: optionalText,
      commandId: { ...optionalText, description: "the command behind the journal (null for a POS transaction's money)" },
      movement: { type: "string" },
      sourceSystem: { type: "string" },
      sourceRef: { type: "string" },
      memo: optionalText,
    },
  },
  {
    $id: "GlJournalPage",
    type: "object",
    required: ["lines", "nextCursor", "resumeCursor"],
    properties: {
      lines: { type: "array", items: { $ref: "GlJournalLine#" } },
      nextCursor: { type: ["string", "null"], description: "pass as cursor for the next page; null on the last page" },
      resumeCursor: {
        type: "string",
        description: "pass as cursor later to continue where this page ends: the next page, or the journals committed since",
      },
    },
  },
  {
    $id: "TrialBalanceAccount",
    type: "object",
    required: ["account", "debit", "credit", "balance"],
    properties: {
      account: { type: "string" },
      debit: amount("Σ debits"),
      credit: amount("Σ credits"),
      balance: amount("debit − credit"),
    },
  },
  {
    $id: "TrialBalance",
    type: "object",
    required: ["accounts", "debit", "credit"],
    properties: {
      accounts: { type: "array", items: { $ref: "TrialBalanceAccount#" }, description: "sorted by account" },
      debit: amount("Σ debits of every account"),
      credit: amount("Σ credits of every account (equal to debit)"),
    },
  },
] as const;

const DATE = "^[0-9]{4}-[0-9]{2}-[0-9]{2}$";

/** A query date: YYYY-MM-DD, a day that exists. */
function day(name: string, v: string | undefined): string | undefined {
  if (v === undefined) return undefined;
  if (glDate(v) === null)
    throw invalidField(`querystring.${name}`, `expected a date YYYY-MM-DD (years 0001 to 9999), got ${JSON.stringify(v.slice(0, 40))}`);
  return v;
}

const config = { scope: "ledger:read" as const };

/** The GL journal for finance: paged lines and the trial balance. */
export async function glRoutes(app: FastifyInstance, { ctx }: { ctx: ApiContext }): Promise<void> {
  journalRoute(app, ctx);
  exportRoute(app, ctx);
  trialBalanceRoute(app, ctx);
}

/** A channel's token reads its locations' stock; the books are the whole company's. */
function refuseChannelToken(req: FastifyRequest): void {
  if (req.principal?.channel) throw new ApiError(403, "forbidden", "a channel-scoped token cannot read the GL journal (it is the whole company's)");
}

/** GET /v1/gl/journal: journal lines between two posting dates, paged. */
function journalRoute(app: FastifyInstance, ctx: ApiContext): void {
  app.get<{ Querystring: { from?: string; to?: string; cursor?: string; limit: number } }>(
    "/v1/gl/journal",
    {
      config,
      schema: {
        operationId: "listGlJournalLines",
        tags: ["ledger"],
        summary: "GL journal lines posted between two dates, in (postedOn, journalId, line) order, paged: pass nextCursor as cursor",
        description:
          "Pages resumed one after the other (nextCursor, then resumeCursor once nextCursor is null) hold every journal line exactly " +
          "once, including the lines of journals committed while you page. The same rows as `tally gl export`.",
        querystring: {
          type: "object",
          properties: {
            from: { type: "string", pattern: DATE, description: "posted on or after (YYYY-MM-DD)" },
            to: { type: "string", pattern: DATE, description: "posted on or before (YYYY-MM-DD)" },
            cursor: { type: "string", maxLength: 2000, description: "opaque: the nextCursor or resumeCursor of a previous page" },
            limit: { type: "integer", minimum: 1, maximum: 1000, default: 100 },
          },
        },
        response: { 200: { $ref: "GlJournalPage#" }, ...errors(400, 401, 403) },
      },
    },
    async (req) => {
      refuseChannelToken(req);
      const q = req.query;
      const { from, to } = range(q);
      const cursor = q.cursor === undefined ? null : decodeJournalCursor(q.cursor);
      if (cursor === null && q.cursor !== undefined)
        throw invalidField("querystring.cursor", "expected the nextCursor or resumeCursor of a previous page");
      const page = await readJournalPage(ctx.sql, { from, to }, cursor, q.limit);
      return {
        lines: page.lines.map(glLineJson),
        nextCursor: page.nextCursor && encodeJournalCursor(page.nextCursor),
        resumeCursor: encodeJournalCursor(page.resumeCursor),
      };
    },
  );
}

/** The from/to range of a query: days that exist, in order. */
function range(q: { from?: string; to?: string }): { from?: string; to?: string } {
  const from = day("from", q.from);
  const to = day("to", q.to);
  if (from !== undefined && to !== undefined && to < from) throw invalidField("querystring.to", `${to} is before from (${from})`);
  return { from, to };
}

/** GET /v1/gl/export: the journal lines streamed as one file (what `tally gl export` writes), resumable by cursor. */
function exportRoute(app: FastifyInstance, ctx: ApiContext): void {
  app.get<{ Querystring: { from?: string; to?: string; cursor?: string; format: "csv" | "ndjson" } }>(
    "/v1/gl/export",
    {
      config,
      schema: {
        operationId: "exportGlJournal",
        tags: ["ledger"],
        summary: "GL journal lines posted between two dates, streamed as CSV or NDJSON; the next cursor in a header, the summary in a trailer",
        description:
          "The same rows and columns as `tally gl export` (CSV: RFC 4180, one header row, CRLF; NDJSON: one GlJournalLine per line), " +
          "read in one snapshot and streamed as they are read. The `Tally-Export-Cursor` response header is the cursor to pass next " +
          "time: exports pulled one after the other hold the lines of every journal committed exactly once. The summary (count, " +
          "debit and credit totals, cursors) comes as the HTTP trailer `Tally-Export-Summary` (JSON) after the last row.",
        querystring: {
          type: "object",
          properties: {
            from: { type: "string", pattern: DATE, description: "posted on or after (YYYY-MM-DD)" },
            to: { type: "string", pattern: DATE, description: "posted on or before (YYYY-MM-DD)" },
            cursor: { type: "string", pattern: GL_EXPORT_CURSOR_PATTERN.source, description: "the Tally-Export-Cursor of the previous export" },
            format: { type: "string", enum: ["csv", "ndjson"], default: "csv" },
          },
        },
        response: {
          200: {
            description: "the lines (format=csv: text/csv; format=ndjson: application/x-ndjson), then the summary trailer",
            content: {
              "text/csv": { schema: { type: "string", description: "RFC 4180 CSV: a header row, then one row per journal line" } },
              "application/x-ndjson": { schema: { type: "string", description: "one GlJournalLine JSON object per line" } },
            },
          },
          ...errors(400, 401, 403),
        },
      },
    },
    async (req, reply) => {
      refuseChannelToken(req);
      const { format, cursor } = req.query;
      const exp = await openGlExport(ctx.sql, format, { ...range(req.query), cursor });
      return sendExport(reply, exp, format, `gl-journal-${cursor ?? "0"}-${exp.nextCursor}`);
    },
  );
}

/** GET /v1/gl/trial-balance: each account's balance at a date. */
function trialBalanceRoute(app: FastifyInstance, ctx: ApiContext): void {
  app.get<{ Querystring: { at?: string } }>(
    "/v1/gl/trial-balance",
    {
      config,
      schema: {
        operationId: "getGlTrialBalance",
        tags: ["ledger"],
        summary: "Debit, credit and balance (debit − credit) of each account over the journal lines posted on or before `at`",
        querystring: {
          type: "object",
          properties: { at: { type: "string", pattern: DATE, description: "YYYY-MM-DD; default today in the finance time zone" } },
        },
        response: { 200: { $ref: "TrialBalance#" }, ...errors(400, 401, 403) },
      },
    },
    async (req) => {
      refuseChannelToken(req);
      const at = day("at", req.query.at) ?? businessDate(new Date(), ctx.config.finance.timeZone);
      return trialBalance(ctx.sql, at);
    },
  );
}
