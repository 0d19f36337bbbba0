import { STATUS_CODES } from "node:http";
import type { FastifyReply, FastifyRequest } from "fastify";

/**
 * Every error reply is an RFC 9457 problem document, `application/problem+json`:
 * `{type, title, status, detail, instance, code, errors?}`. `type` is `/problems/<code with dashes>` (a relative
 * URI reference naming the kind of problem; README lists them), `instance` the request path, `code` the same
 * kind as a machine-readable word (`insufficient_stock`), `errors` the fields the request got wrong.
 */
export const PROBLEM_MEDIA_TYPE = "application/problem+json";
const PROBLEM_TYPE_BASE = "/problems/";

/** An expected failure of a request: its HTTP status, a machine-readable code, a sentence and extension members. */
export class ApiError extends Error {
  override readonly name = "ApiError";
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly extra: Readonly<Record<string, unknown>> = {},
  ) {
    super(message);
  }
}

/** The 400 for one bad field: the detail names it, `errors` carries it. */
export const invalidField = (path: string, detail: string): ApiError =>
  new ApiError(400, "invalid_request", `${path}: ${detail}`, { errors: [{ path, detail }] });

/** The title of each problem code (a code not listed gets its status's reason phrase). */
const TITLES: Readonly<Record<string, string>> = {
  invalid_request: "The request is invalid",
  unauthorized: "A valid bearer token is required",
  forbidden: "This token may not do that",
  not_found: "No such resource",
  unknown_channel: "No such channel",
  unknown_sku: "The ledger has never seen this SKU",
  not_in_catalog: "The item is not in this channel's catalog",
  insufficient_stock: "Not enough stock to hold",
  item_withheld: "The item may not be held in this channel",
  idempotency_conflict: "The idempotency key was used for other content",
  request_in_progress: "The same request is still being decided",
  decision_pending: "The stock actors have not decided yet",
  overloaded: "Holds are being shed: the ledger is behind",
  replay_failed: "The dead letter could not be replayed",
  not_stuck: "The partition is not stuck",
  invalid_transactions: "Every transaction was rejected",
  rate_limited: "Too many write requests",
  payload_too_large: "The body is too large",
  unsupported_media_type: "The body's media type is not accepted",
  unavailable: "A dependency did not answer",
  shutting_down: "This instance is shutting down",
};

const titleOf = (code: string, status: number): string => {
  const reservation = /^reservation_([a-z_]+)$/.exec(code);
  if (reservation) return `The reservation is ${reservation[1]!.replaceAll("_", " ")}`;
  return TITLES[code] ?? STATUS_CODES[status] ?? "Error";
};

/** The problem document of a failure of the request to `instance` (its path, without the query). */
export function problem(status: number, code: string, detail: string, instance: string, extra: Readonly<Record<string, unknown>> = {}) {
  return { type: `${PROBLEM_TYPE_BASE}${code.replaceAll("_", "-")}`, title: titleOf(code, status), status, detail, instance, code, ...extra };
}

/**
 * Replies whose 5xx is a deliberate answer, not a failure (a hold shed under overload): logged at debug,
 * not as an error (shedding thousands a second must not flood the log when the process is busiest).
 */
export const deliberate5xx = new WeakSet<FastifyReply>();

/** The path a problem happened at (`instance`): the request's URL without its query. */
export const instanceOf = (req: FastifyRequest): string => req.url.split("?")[0]!;

/** Answers the request with a problem document. */
export function sendProblem(
  req: FastifyRequest,
  reply: FastifyReply,
  status: number,
  code: string,
  detail: string,
  extra?: Readonly<Record<string, unknown>>,
): FastifyReply {
  return reply
    .code(status)
    .type(PROBLEM_MEDIA_TYPE)
    .send(problem(status, code, detail, instanceOf(req), extra));
}

/** One wrong field of a problem (the `errors` member). */
export const FieldErrorSchema = {
  $id: "FieldError",
  type: "object",
  description: "a field the request got wrong",
  required: ["path", "detail"],
  properties: {
    path: { type: "string", description: "where: querystring.skus, body.lines[0].qty, headers.idempotency-key, params.sku …" },
    detail: { type: "string", description: "what is wrong with it" },
  },
} as const;

/** The members every problem document has (RFC 9457 plus `code` and `errors`). */
export const problemProperties = {
  type: { type: "string", description: "a URI reference naming the kind of problem: /problems/<code with dashes>" },
  title: { type: "string", description: "a short summary of the kind of problem (the same for every occurrence)" },
  status: { type: "integer", description: "the HTTP status" },
  detail: { type: "string", description: "what went wrong this time, naming the field when a field is at fault" },
  instance: { type: "string", description: "the request path" },
  code: {
    type: "string",
    description:
      "machine-readable kind: invalid_request, unauthorized, forbidden, not_found, unknown_channel, unknown_sku, insufficient_stock, item_withheld, " +
      "reservation_<status>, idempotency_conflict, request_in_progress, decision_pending, overloaded, rate_limited, payload_too_large, " +
      "unsupported_media_type, unavailable, shutting_down …",
  },
  errors: { type: "array", items: { $ref: "FieldError#" }, description: "the fields the request got wrong, when it is at fault" },
} as const;

const problemRequired = ["type", "title", "status", "detail", "instance", "code"] as const;

/** The body of every error reply. */
export const ProblemSchema = {
  $id: "Problem",
  type: "object",
  description: "An RFC 9457 problem document (application/problem+json)",
  required: problemRequired,
  properties: problemProperties,
  additionalProperties: true,
} as const;

/** A problem with extension members of its own, as a named component schema. */
export const problemWith = (id: string, description: string, properties: Readonly<Record<string, unknown>>) =>
  ({
    $id: id,
    type: "object",
    description,
    required: problemRequired,
    properties: { ...problemProperties, ...properties },
    additionalProperties: true,
  }) as const;

/** A response given as a problem document of the named schema. */
export const problemResponse = (status: number, schema = "Problem") => ({
  description: STATUS_CODES[status] ?? "Error",
  content: { [PROBLEM_MEDIA_TYPE]: { schema: { $ref: `${schema}#` } } },
});

/** Error replies a route may give, for its response schema. */
export const errors = (...statuses: ReadonlyArray<number>) => Object.fromEntries(statuses.map((s) => [s, problemResponse(s)]));
