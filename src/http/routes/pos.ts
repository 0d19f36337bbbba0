import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { InvalidBatch } from "../../ingest/index.ts";
import { JsonTextError, parseJsonText } from "../../platform/index.ts";
import { MAX_AMOUNT, MAX_BATCH_LINES, MAX_LINES, MAX_TRANSACTIONS } from "../../ingest/index.ts";
import type { ApiContext } from "../context.ts";
import { ApiError, errors, problemResponse, problemWith, sendProblem } from "../errors.ts";

const Issue = {
  $id: "PosIssue",
  type: "object",
  description: "a bad field of one transaction (path from the body: transactions[0].lines[1].qty)",
  required: ["path", "message"],
  properties: { path: { type: "string" }, message: { type: "string" } },
} as const;

/** The POS transaction format (documentation: the route decodes bodies itself, to name every bad field and dead-letter it). */
const PosLineSchema = {
  $id: "PosLine",
  type: "object",
  required: ["type"],
  properties: {
    line: { type: "integer", minimum: 1, description: "line number on the receipt (default: position, 1-based)" },
    type: { type: "string", enum: ["sale", "return", "void"] },
    barcode: { type: "string" },
    plu: { type: "string" },
    sku: { type: "string" },
    qty: { type: "integer", minimum: 1, description: "a count, in the unit the identifier implies (a case barcode: cases)" },
    weight: {
      type: "object",
      required: ["value", "unit"],
      properties: {
        value: { anyOf: [{ type: "string" }, { type: "number" }], description: 'exact decimal, e.g. "1.25"' },
        unit: { type: "string", description: "e.g. kg, g" },
      },
    },
    restockable: { type: "boolean", description: "returns only; false sends the goods to damaged (default true)" },
    voids: { type: "integer", minimum: 1, description: "void lines: the earlier line they cancel (whole, or qty of it)" },
    unitPrice: {
      type: "integer",
      minimum: 0,
      maximum: MAX_AMOUNT,
      description:
        "price of one unit as rung, in integer minor units of the transaction's currency (a case barcode: a case; a weighed line: " +
        "one weight unit, the line's amount rounded half up to a minor unit). Required on every sale and return line of a " +
        "transaction with amounts; never on a void",
    },
    discount: { type: "integer", minimum: 0, maximum: MAX_AMOUNT, description: "the line's total discount, minor units (default 0)" },
    tax: { type: "integer", minimum: 0, maximum: MAX_AMOUNT, description: "the line's total sales tax, minor units (default 0)" },
  },
} as const;

const PosTenderSchema = {
  $id: "PosTender",
  type: "object",
  required: ["type", "amount"],
  description: "how the customer paid, or was paid back",
  properties: {
    type: { type: "string", enum: ["cash", "card", "gift_card"] },
    amount: {
      type: "integer",
      minimum: -MAX_AMOUNT,
      maximum: MAX_AMOUNT,
      not: { const: 0 },
      description: "minor units, net of change: positive when the customer pays, negative for a refund",
    },
    giftCardId: { type: "string", description: "gift_card tenders only (required there): the card redeemed or refunded onto" },
  },
} as const;

const PosGiftCardSaleSchema = {
  $id: "PosGiftCardSale",
  type: "object",
  required: ["id", "amount"],
  description: "a gift card sold (loaded) in the transaction: not stock and not revenue, a liability",
  properties: {
    id: { type: "string" },
    amount: { type: "integer", minimum: 1, maximum: MAX_AMOUNT, description: "minor units loaded onto the card" },
  },
} as const;

const PosBatchSchema = {
  $id: "PosBatch",
  type: "object",
  required: ["transactions"],
  properties: {
    transactions: {
      type: "array",
      minItems: 1,
      maxItems: MAX_TRANSACTIONS,
      items: {
        type: "object",
        required: ["store", "terminal", "id", "occurredAt", "lines"],
        properties: {
          store: { type: "string", description: "the store's location id: a location of a configured channel, or in the config's stores" },
          terminal: { type: "string" },
          id: { type: "string", description: "the POS transaction id: idempotent per store + terminal + id" },
          occurredAt: { type: "string", format: "date-time" },
          lines: {
            type: "array",
            maxItems: MAX_LINES,
            items: { $ref: "PosLine#" },
            description: "at least one line, unless the transaction only sells gift cards",
          },
          currency: {
            type: "string",
            pattern: "^[A-Z]{3}$",
            description: "ISO 4217; required when the transaction carries amounts, and must be the company's (finance.currency)",
          },
          tenders: {
            type: "array",
            items: { $ref: "PosTender#" },
            description: "they must add up to Σ(qty × unitPrice − discount + tax) over sale lines, less that over return lines, plus gift cards sold",
          },
          giftCards: { type: "array", items: { $ref: "PosGiftCardSale#" } },
        },
      },
    },
  },
} as const;

const TransactionResult = {
  $id: "PosTransactionResult",
  type: "object",
  required: ["index", "status"],
  properties: {
    index: { type: "integer" },
    status: { type: "string", enum: ["accepted", "rejected"] },
    store: { type: "string" },
    terminal: { type: "string" },
    id: { type: "string" },
    lines: {
      type: "array",
      items: {
        type: "object",
        properties: {
          line: { type: "integer" },
          commands: { type: "array", items: { type: "string" } },
          voided: { type: "integer" },
          skipped: { type: "string", enum: ["non_inventory", "voided"] },
        },
      },
    },
    journal: { type: "string", description: "accepted with amounts: the GL money journal it posted (money:<store>:<terminal>:<id>)" },
    reason: { type: "string", description: "invalid_transaction, unknown_item, unknown_store, idempotency_conflict" },
    errors: { type: "array", items: { $ref: "PosIssue#" } },
  },
} as const;

const batchProperties = {
  accepted: { type: "integer" },
  rejected: { type: "integer" },
  results: { type: "array", items: { $ref: "PosTransactionResult#" } },
} as const;

/** The named component schemas of this route. */
export const posSchemas = [
  Issue,
  PosLineSchema,
  PosTenderSchema,
  PosGiftCardSaleSchema,
  PosBatchSchema,
  TransactionResult,
  { $id: "PosBatchResult", type: "object", required: ["accepted", "rejected", "results"], properties: batchProperties },
  problemWith("PosBatchProblem", "A batch of which no transaction was accepted: the problem, and each transaction's result", batchProperties),
] as const;

interface Batch {
  readonly accepted: number;
  readonly rejected: number;
  readonly results: ReadonlyArray<unknown>;
  readonly error?: string;
  readonly message?: string;
  readonly errors?: ReadonlyArray<{ readonly path: string; readonly message: string }>;
}

/** The reply to a batch: 200 when any transaction was accepted, else a problem (409 when every id was taken by other content). */
function sendBatch(req: FastifyRequest, reply: FastifyReply, result: Batch) {
  const { error, message, errors, ...batch } = result;
  if (batch.accepted > 0) return reply.code(200).send(batch);
  const rejected = batch.results.flatMap((r) => (r as { errors?: ReadonlyArray<{ path: string; message: string }> }).errors ?? []);
  const fields = [...(errors ?? []), ...rejected].map((i) => ({ path: i.path ? `body.${i.path}` : "body", detail: i.message }));
  const status = error === "idempotency_conflict" ? 409 : 400;
  return sendProblem(req, reply, status, error ?? "invalid_transactions", message ?? "no transaction was accepted", { ...batch, errors: fields });
}

/** `POST /v1/pos/transactions`: a batch of POS transactions. */
export async function posRoutes(app: FastifyInstance, { ctx }: { ctx: ApiContext }): Promise<void> {
  // Bodies are decoded by the ingest (each bad field named, every rejection dead-lettered), so the raw text
  // comes through: even a body that is not JSON is kept in the dead-letter stream.
  app.removeContentTypeParser("application/json");
  app.addContentTypeParser("application/json", { parseAs: "string", bodyLimit: ctx.opts.posBodyLimit }, (_req, body, done) => done(null, body));

  app.post<{ Body: string }>(
    "/v1/pos/transactions",
    {
      config: { scope: "pos:write", rateLimit: { max: ctx.opts.rateLimitPerMinute, timeWindow: 60_000 } },
      bodyLimit: ctx.opts.posBodyLimit,
      // The schema documents the format; validation is the ingest's own (see above).
      validatorCompiler: () => (value) => ({ value }),
      schema: {
        operationId: "postPosTransactions",
        tags: ["pos"],
        summary: "Ingest a batch of POS transactions (idempotent per store + terminal + transaction id)",
        description:
          "Replies after JetStream has acknowledged every command. Each transaction is accepted or rejected whole; a rejected " +
          "one names each bad field and is dead-lettered with its payload. 200 when any was accepted (or re-sent), 409 when " +
          "every one was refused because its id was already taken by other content, 400 otherwise. A body may be at most 1 MiB " +
          `(413 beyond), nest at most 32 deep, and hold at most ${MAX_BATCH_LINES} lines over all its transactions. A transaction ` +
          "may carry its money (currency, unitPrice / discount / tax per line, tenders, gift cards sold; integers in minor units, " +
          "tenders adding up to the lines and gift cards): its GL money journal is then posted once, with its claim.",
        body: { $ref: "PosBatch#" },
        response: {
          200: { $ref: "PosBatchResult#" },
          400: problemResponse(400, "PosBatchProblem"),
          409: problemResponse(409, "PosBatchProblem"),
          ...errors(401, 403, 413, 415, 429, 503),
        },
      },
    },
    async (req, reply) => {
      const text = typeof req.body === "string" ? req.body : "";
      const by = req.principal!.id;
      let payload: unknown;
      try {
        payload = parseJsonText(text, ctx.opts.maxJsonDepth);
      } catch (e) {
        if (!(e instanceof JsonTextError)) throw e;
        const err = await ctx.pos.rejectUnparsable(text, e.problem, { via: "http", by });
        return sendBatch(req, reply, { accepted: 0, rejected: 1, results: [], error: "invalid_request", message: err.message, errors: err.issues });
      }
      const stores = ctx.locationsFor(req);
      if (stores) {
        const list = (payload as { transactions?: unknown })?.transactions;
        const foreign = Array.isArray(list)
          ? list.map((t) => (t as { store?: unknown })?.store).filter((s): s is string => typeof s === "string" && !stores.has(s))
          : [];
        if (foreign.length > 0)
          throw new ApiError(
            403,
            "forbidden",
            `this token may only post for the stores of channel ${req.principal!.channel} (not ${[...new Set(foreign)].join(", ")})`,
          );
      }
      try {
        const result = await ctx.pos.ingest(payload, { via: "http", by, stores, deadline: Date.now() + ctx.opts.requestTimeoutMs });
        return sendBatch(req, reply, result);
      } catch (error) {
        if (error instanceof InvalidBatch)
          return sendBatch(req, reply, {
            accepted: 0,
            rejected: 1,
            results: [],
            error: "invalid_request",
            message: error.message,
            errors: error.issues,
          });
        throw error;
      }
    },
  );
}
