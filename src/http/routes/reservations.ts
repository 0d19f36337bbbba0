import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { MappingError } from "../../contract/index.ts";
import { ID_JSON_PATTERN, RESOLVE_PROBE_COMMAND_ID } from "../../contract/index.ts";
import type { ApiContext } from "../context.ts";
import { ApiError, deliberate5xx, errors, invalidField, problemResponse, problemWith, sendProblem } from "../errors.ts";
import { RESERVATION_STATUSES, ReservationError, type Decision, type LineRequest } from "../../reservations/index.ts";

/** The one id grammar of SKUs and locations (see src/contract/command.ts): a colon never reaches a command. */
const SKU = ID_JSON_PATTERN;
const LOCATION = ID_JSON_PATTERN;
const MAX_LINES = 100;
const Qty = { type: "integer", minimum: 1, maximum: 1_000_000_000 } as const;

const Line = {
  $id: "ReservationLineRequest",
  type: "object",
  required: ["sku", "qty"],
  additionalProperties: false,
  properties: { sku: { type: "string", pattern: SKU }, qty: Qty, location: { type: "string", pattern: LOCATION } },
} as const;

const CreateBody = {
  $id: "ReservationRequest",
  type: "object",
  additionalProperties: false,
  properties: {
    sku: { type: "string", pattern: SKU, description: "a one-line reservation (or give lines)" },
    qty: Qty,
    lines: {
      type: "array",
      minItems: 1,
      maxItems: MAX_LINES,
      items: { $ref: "ReservationLineRequest#" },
      description: "a cart: held all together or not at all",
    },
    location: { type: "string", pattern: LOCATION, description: "hold at this location (default for every line)" },
    channel: { type: "string", description: "or: pick, per line, the channel's location that can hold it (default: the token's channel)" },
    ttlSeconds: { type: "integer", minimum: 1, maximum: 7 * 24 * 3600, default: 900 },
  },
} as const;

/** One line of a reservation as a response shows it. */
const LineView = {
  line: { type: "integer" },
  sku: { type: "string" },
  qty: { type: "integer" },
  location: { type: ["string", "null"] },
  state: { type: "string" },
} as const;

const ReservationView = {
  $id: "Reservation",
  type: "object",
  required: ["id", "status"],
  properties: {
    id: { type: "string" },
    status: { type: "string", enum: [...RESERVATION_STATUSES] },
    channel: { type: ["string", "null"] },
    expiresAt: { type: ["string", "null"], format: "date-time" },
    createdAt: { type: "string", format: "date-time" },
    lines: { type: "array", items: { $ref: "ReservationLine#" } },
  },
} as const;

const Insufficient = problemWith(
  "ReservationProblem",
  "A reservation refused: insufficient_stock (with what each line could have held), item_withheld (a line's item, or a component of its " +
    "bundle, is blocked, or discontinued and the channel does not sell remaining stock: nothing held, nothing recorded), or " +
    "reservation_<status> for a state that forbids the action",
  {
    id: { type: "string", description: "the reservation" },
    available: { type: "integer", description: "one-line reservations: what could have been held" },
    lines: { type: "array", items: { $ref: "ReservationLineRefused#" } },
    channel: {
      type: ["string", "null"],
      description: "item_withheld: the channel whose status policy refused (null: none given, the default policy)",
    },
    reason: {
      type: "string",
      enum: ["blocked", "discontinued"],
      description: "item_withheld: why (blocked when any line is blocked); the same word availability's `reason` shows",
    },
    withheld: {
      type: "array",
      description: "item_withheld: each refused field, the item withheld (the line's SKU or its bundle's component) and why",
      items: {
        type: "object",
        required: ["path", "sku", "reason"],
        properties: { path: { type: "string" }, sku: { type: "string" }, reason: { type: "string", enum: ["blocked", "discontinued"] } },
      },
    },
  },
);

/** The named component schemas of these routes. */
export const reservationSchemas = [
  Line,
  CreateBody,
  { $id: "ReservationLine", type: "object", properties: LineView },
  { $id: "ReservationLineRefused", type: "object", properties: { ...LineView, available: { type: ["integer", "null"] } } },
  ReservationView,
  Insufficient,
] as const;

const IdParams = { type: "object", required: ["id"], properties: { id: { type: "string", pattern: "^r_[0-9a-f]{32}$" } } } as const;

interface CreateBodyT {
  sku?: string;
  qty?: number;
  lines?: Array<{ sku: string; qty: number; location?: string }>;
  location?: string;
  channel?: string;
  ttlSeconds: number;
}

/** The HTTP status of each decision of a reservation request. */
const DECISION_STATUS: Readonly<Record<Decision, number>> = { held: 201, insufficient: 409, invalid: 400, undecided: 503 };

/**
 * The HTTP form of what the reservation service refuses; `fieldOf` names the request field a line
 * (by its position, bundles expanded) came from.
 */
export function reservationHttpError(error: ReservationError, fieldOf: (index: number) => string = (i) => `body.lines[${i}]`): ApiError {
  const problem = error.problem;
  switch (problem.code) {
    case "not_found":
      return new ApiError(404, "not_found", error.message);
    case "idempotency_conflict":
      return new ApiError(422, "idempotency_conflict", error.message, { id: problem.id });
    case "in_progress":
      return new ApiError(409, "request_in_progress", error.message, { id: problem.id });
    case "wrong_status":
      return new ApiError(409, `reservation_${problem.status}`, error.message);
    case "overloaded":
      return new ApiError(503, "overloaded", error.message, { lagMs: problem.lagMs, limitMs: problem.limitMs });
    case "item_withheld": {
      const refusals = problem.lines.map((l) => {
        const path = `${fieldOf(l.index)}.sku`;
        const rule = l.reason === "blocked" ? "no channel may hold it" : `channel ${problem.channel ?? "(none)"} does not sell remaining stock`;
        return { path, sku: l.sku, reason: l.reason, detail: `${l.sku} is ${l.reason}: ${rule}` };
      });
      // One field per asked line (a bundle's components name the bundle's field once).
      const seen = new Set<string>();
      const fields = refusals.filter((r) => !seen.has(r.path) && seen.add(r.path));
      return new ApiError(409, "item_withheld", fields.map((f) => `${f.path}: ${f.detail}`).join("; "), {
        channel: problem.channel,
        reason: refusals.some((r) => r.reason === "blocked") ? "blocked" : "discontinued",
        errors: fields.map(({ path, detail }) => ({ path, detail })),
        withheld: fields.map(({ path, sku, reason }) => ({ path, sku, reason })),
      });
    }
    default: {
      const unreachable: never = problem;
      throw new Error(`unknown reservation problem ${JSON.stringify(unreachable)}`);
    }
  }
}

/**
 * The reply to a reservation request: the reservation when held (201), else the stored refusal as a problem
 * (stored bodies carry `error`, `message` and `issues`; replays of an Idempotency-Key answer the same).
 */
function sendDecision(req: FastifyRequest, reply: FastifyReply, decision: Decision, body: Record<string, unknown>) {
  if (decision === "held") return reply.code(201).send(body);
  const { error, message, issues, ...rest } = body as { error?: string; message?: string; issues?: Array<{ path: string; message: string }> };
  const fields = issues ? { errors: issues.map((i) => ({ path: i.path, detail: i.message })) } : {};
  return sendProblem(req, reply, DECISION_STATUS[decision], error ?? "invalid_request", message ?? decision, { ...rest, ...fields });
}

/** Runs a call of the reservation service, its domain errors turned into HTTP ones. */
async function domain<T>(run: () => Promise<T>, fieldOf?: (index: number) => string): Promise<T> {
  try {
    return await run();
  } catch (error) {
    if (error instanceof ReservationError) throw reservationHttpError(error, fieldOf);
    throw error;
  }
}

type WriteConfig = { readonly scope: "reservations:write"; readonly rateLimit: { readonly max: number; readonly timeWindow: number } };

/** A channel token touches only its channel's reservations. */
const mayTouch = (req: FastifyRequest) => (row: { channel: string | null; id: string; lines?: unknown }) => {
  const c = req.principal?.channel;
  if (c && row.channel !== c) throw new ApiError(403, "forbidden", `reservation ${row.id} is not of channel ${c}`);
};

/** Checkout holds: create (Idempotency-Key), read, commit, fulfill, release. */
export async function reservationRoutes(app: FastifyInstance, { ctx }: { ctx: ApiContext }): Promise<void> {
  const write: WriteConfig = { scope: "reservations:write", rateLimit: { max: ctx.opts.rateLimitPerMinute, timeWindow: 60_000 } };
  createRoute(app, ctx, write);
  readRoute(app, ctx);
  actionRoutes(app, ctx, write);
}

/** A body gives either sku and qty, or lines: the 400 for one that does not. */
function shapeProblem(b: CreateBodyT): ApiError | null {
  if ((b.lines === undefined) === (b.sku === undefined)) return invalidField("body", "expected either sku and qty, or lines");
  if (b.sku !== undefined && b.qty === undefined) return invalidField("body.qty", "is missing");
  if (b.lines !== undefined && b.qty !== undefined) return invalidField("body.qty", "give qty per line");
  return null;
}

/** The channel a reservation is made in: the one asked for, else the token's; null for none. */
function channelOf(ctx: ApiContext, b: CreateBodyT, principal: NonNullable<FastifyRequest["principal"]>): string | null {
  const channel = b.channel ?? principal.channel ?? null;
  if (channel !== null) {
    if (principal.channel && principal.channel !== channel)
      throw new ApiError(403, "forbidden", `this token may only reserve in channel ${principal.channel}`);
    if (!Object.hasOwn(ctx.config.channels, channel)) throw new ApiError(404, "unknown_channel", `no channel ${JSON.stringify(channel)}`);
  }
  return channel;
}

const CreateSchema = {
  operationId: "createReservation",
  tags: ["reservations"],
  summary: "Hold stock for a checkout (all lines or none), decided by each SKU's actor",
  headers: {
    type: "object",
    required: ["idempotency-key"],
    properties: { "idempotency-key": { type: "string", minLength: 1, maxLength: 200, pattern: "^[\\x21-\\x7E]+$" } },
  },
  body: { $ref: "ReservationRequest#" },
  response: {
    201: { description: "held", $ref: "Reservation#" },
    409: problemResponse(409, "ReservationProblem"),
    ...errors(400, 401, 403, 404, 413, 422, 429),
    503: {
      ...problemResponse(503),
      description:
        "Not decided, with Retry-After: `overloaded` when the apply path is behind (this partition's holds take longer than " +
        "TALLY_RESERVATION_SHED_LAG_MS to be decided): answered at once, nothing held, written or published, so a retry (same " +
        "Idempotency-Key or a new one) is a new request; `decision_pending` when the actors did not decide in time (retry with the " +
        "same Idempotency-Key); `unavailable` when a dependency did not answer",
      headers: { "Retry-After": { type: "integer", minimum: 1, description: "seconds to wait before retrying" } },
    },
  },
};

/** POST /v1/reservations: the body checked and its lines resolved (bundles expanded), then decided by the service. */
function createRoute(app: FastifyInstance, ctx: ApiContext, write: WriteConfig): void {
  const channels = ctx.config.channels;
  app.post<{ Body: CreateBodyT; Headers: { "idempotency-key": string } }>(
    "/v1/reservations",
    {
      config: write,
      schema: CreateSchema,
    },
    async (req, reply) => {
      const b = req.body;
      const problem = shapeProblem(b);
      if (problem) throw problem;
      const principal = req.principal!;
      const channel = channelOf(ctx, b, principal);
      const asked = b.lines ?? [{ sku: b.sku!, qty: b.qty!, ...(b.location ? { location: b.location } : {}) }];
      const lines: Array<LineRequest> = [];
      /** The request field each line came from (a bundle's components share theirs). */
      const fields: Array<string> = [];
      const crosswalk = await ctx.pos.crosswalk();
      for (const [i, l] of asked.entries()) {
        const location = l.location ?? b.location ?? null;
        const path = b.lines ? `body.lines[${i}]` : "body";
        if (location === null && channel === null) throw invalidField(`${path}.location`, "is missing (give a location or a channel)");
        if (location !== null && channel !== null && !channels[channel]!.locations.includes(location)) {
          if (principal.channel) throw new ApiError(403, "forbidden", `${path}.location: ${location} does not feed channel ${channel}`);
          throw invalidField(`${path}.location`, `${location} does not feed channel ${channel}`);
        }
        // A bundle is held as its components (all together, like any cart).
        let parts: Array<{ sku: string; qty: number }> = [{ sku: l.sku, qty: l.qty }];
        try {
          const r = crosswalk.resolve(
            {
              type: "reserve",
              item: { system: "sku", id: l.sku },
              location: location ?? "ANY",
              qty: l.qty,
              fields: { reservationId: RESOLVE_PROBE_COMMAND_ID },
            },
            { source: "api", id: RESOLVE_PROBE_COMMAND_ID, ref: "reservation", occurredAt: new Date().toISOString() },
          );
          if (r.kind === "skipped") throw invalidField(`${path}.sku`, `${l.sku} is not an inventory item`);
          parts = r.commands.map((c) => ({ sku: c.sku, qty: (c as { qty: number }).qty }));
        } catch (error) {
          if (!(error instanceof MappingError)) throw error;
          // Not in the crosswalk: the SKU as given.
        }
        const bundle = parts.length !== 1 || parts[0]!.sku !== l.sku ? l.sku : null;
        for (const p of parts) {
          lines.push({ sku: p.sku, qty: p.qty, location, bundle });
          fields.push(path);
        }
      }
      if (lines.length > MAX_LINES) throw invalidField("body.lines", `at most ${MAX_LINES} lines (bundles expanded), got ${lines.length}`);
      const answer = await domain(
        () =>
          ctx.reservations
            .create({
              principal: principal.id,
              idempotencyKey: req.headers["idempotency-key"],
              body: { ...b, channel },
              channel,
              lines,
              ttlSeconds: b.ttlSeconds,
            })
            .catch((error: unknown) => {
              // Shed (the apply path is behind): answered at once, with when to come back.
              if (error instanceof ReservationError && error.problem.code === "overloaded") {
                reply.header("retry-after", String(error.problem.retryAfterSeconds));
                deliberate5xx.add(reply);
              }
              throw error;
            }),
        (i) => fields[i] ?? "body",
      );
      if (answer.replayed) reply.header("idempotent-replayed", "true");
      if (answer.decision === "undecided") reply.header("retry-after", "1");
      return sendDecision(req, reply, answer.decision, answer.body);
    },
  );
}

function readRoute(app: FastifyInstance, ctx: ApiContext): void {
  app.get<{ Params: { id: string } }>(
    "/v1/reservations/:id",
    {
      config: { scope: "reservations:write" },
      schema: {
        operationId: "getReservation",
        tags: ["reservations"],
        summary: "A reservation and its lines",
        params: IdParams,
        response: { 200: { $ref: "Reservation#" }, ...errors(400, 401, 403, 404) },
      },
    },
    async (req) => {
      const found = await ctx.reservations.get(req.params.id);
      if (!found) throw new ApiError(404, "not_found", `no reservation ${req.params.id}`);
      mayTouch(req)(found.row);
      return found.body;
    },
  );
}

/** Commit, fulfil and release: each answers the reservation's view (200), or the lifecycle's refusal. */
function actionRoutes(app: FastifyInstance, ctx: ApiContext, write: WriteConfig): void {
  const action = (
    operationId: string,
    path: string,
    summary: string,
    run: (id: string, may: ReturnType<typeof mayTouch>) => Promise<Record<string, unknown>>,
    method: "POST" | "DELETE" = "POST",
  ) =>
    app.route<{ Params: { id: string } }>({
      method,
      url: path,
      config: write,
      schema: {
        operationId,
        tags: ["reservations"],
        summary,
        params: IdParams,
        response: { 200: { $ref: "Reservation#" }, 409: problemResponse(409, "ReservationProblem"), ...errors(400, 401, 403, 404, 429) },
      },
      handler: async (req, reply) => {
        const view = await domain(() => run(req.params.id, mayTouch(req)));
        return reply.code(200).send(view);
      },
    });
  action("commitReservation", "/v1/reservations/:id/commit", "Order placed: keep the hold (no expiry) until fulfilled or released", (id, may) =>
    ctx.reservations.commit(id, may),
  );
  action("fulfillReservation", "/v1/reservations/:id/fulfill", "Shipped: fulfill every line (reserved and on hand go down)", (id, may) =>
    ctx.reservations.fulfill(id, may),
  );
  action(
    "releaseReservation",
    "/v1/reservations/:id",
    "Release the hold (cancel); idempotent",
    (id, may) => ctx.reservations.release(id, may),
    "DELETE",
  );
}
