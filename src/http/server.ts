import Fastify, { LogController, type FastifyBaseLogger, type FastifyError, type FastifyInstance, type FastifyReply } from "fastify";
import rateLimit from "@fastify/rate-limit";
import swagger from "@fastify/swagger";
import swaggerUi from "@fastify/swagger-ui";
import { knownStores } from "../platform/index.ts";
import { jsonDepthExceeds, MAX_JSON_DEPTH } from "../platform/index.ts";
import { PosIngest } from "../ingest/index.ts";
import { PosSubscriber } from "../ingest/index.ts";
import { CatalogAckSubscriber } from "../../cdc/index.ts";
import { authenticate, StreamTokens, TokenVerifier, type Principal, type Scope } from "./auth.ts";
import { allowOrigins } from "./cors.ts";
import {
  ApiError,
  deliberate5xx,
  FieldErrorSchema,
  instanceOf,
  invalidField,
  PROBLEM_MEDIA_TYPE,
  problem,
  problemResponse,
  ProblemSchema,
  sendProblem,
} from "./errors.ts";
import { ApiMetrics } from "./metrics.ts";
import { OutcomeWaiter } from "../wire/index.ts";
import { Reservations, ReservationSweeper } from "../reservations/index.ts";
import { availabilityRoutes, availabilitySchemas } from "./routes/availability.ts";
import { catalogRoutes, catalogSchemas } from "./routes/catalog.ts";
import { productRoutes, productSchemas } from "./routes/products.ts";
import { healthRoutes, healthSchemas } from "./routes/health.ts";
import { ledgerRoutes, ledgerSchemas } from "./routes/ledger.ts";
import { glRoutes, glSchemas } from "./routes/gl.ts";
import { operatorRoutes, operatorSchemas } from "./routes/operators.ts";
import { DashboardHub, dashboardRoutes } from "./dashboard.ts";
import { posRoutes, posSchemas } from "./routes/pos.ts";
import { reservationRoutes, reservationSchemas } from "./routes/reservations.ts";
import type { ApiContext, ApiDeps, ApiOptions } from "./context.ts";

export type { ApiDeps, ApiOptions };

declare module "fastify" {
  interface FastifyRequest {
    /** The caller, set by the auth hook on every route that declares a scope. */
    principal: Principal | null;
  }
  interface FastifyContextConfig {
    /** The scope a route needs; routes without one are public (health, metrics, docs). */
    scope?: Scope;
  }
}

/**
 * Builds the HTTP API (fastify plugins, JSON schemas on every route, OpenAPI at /docs) without
 * listening; `app.close()` stops its subscriptions and timers. Tests call `app.inject()`.
 */
export async function buildApp(deps: ApiDeps): Promise<FastifyInstance> {
  const opts = resolveOptions(deps);
  const log = deps.log.child({ role: "api" });
  const app = createFastify(log, opts);
  documentErrorStatuses(app);
  limitJsonDepth(app, opts.maxJsonDepth);
  await allowOrigins(app, deps.settings.corsOrigins);
  const streams = new Set<() => void>();
  installDrain(app, streams);
  const verifier = new TokenVerifier(deps.tokens);
  if (verifier.size === 0) log.warn("no API tokens configured (TALLY_API_TOKENS / TALLY_API_TOKENS_FILE): every authenticated route answers 401");

  const ctx = await startContext(app, deps, log, opts, streams);
  app.addHook("preClose", async () => {
    for (const close of ctx.streams) close();
  });
  app.decorateRequest("principal", null);
  for (const schema of [FieldErrorSchema, ProblemSchema, ...componentSchemas, ...glSchemas]) app.addSchema(schema);
  installErrorHandlers(app, opts);
  installAuth(app, verifier, new StreamTokens(deps.settings.streamTokenSecret));
  installRequestBudget(app, opts);
  installRequestLog(app, ctx.metrics);
  await registerPlugins(app, ctx, opts);
  await app.ready();
  return app;
}

/** The shared schemas of the routes: each a named component of the OpenAPI document (its `$id`). */
const componentSchemas = [
  ...healthSchemas,
  ...posSchemas,
  ...availabilitySchemas,
  ...reservationSchemas,
  ...ledgerSchemas,
  ...operatorSchemas,
  ...catalogSchemas,
  ...productSchemas,
];

/** The options with their defaults filled in. */
function resolveOptions(deps: ApiDeps): Required<ApiOptions> {
  return {
    rateLimitPerMinute: deps.options?.rateLimitPerMinute ?? deps.settings.apiRateLimit,
    decisionTimeoutMs: deps.options?.decisionTimeoutMs ?? 10_000,
    sweepIntervalMs: deps.options?.sweepIntervalMs ?? 1000,
    background: deps.options?.background ?? true,
    bodyLimit: deps.options?.bodyLimit ?? 256 * 1024,
    posBodyLimit: deps.options?.posBodyLimit ?? 1024 * 1024,
    maxJsonDepth: deps.options?.maxJsonDepth ?? MAX_JSON_DEPTH,
    requestTimeoutMs: deps.options?.requestTimeoutMs ?? deps.settings.requestTimeoutMs,
    reservationShedLagMs: deps.options?.reservationShedLagMs ?? deps.settings.reservationShedLagMs,
  };
}

function createFastify(log: ApiDeps["log"], opts: Required<ApiOptions>): FastifyInstance {
  return Fastify({
    loggerInstance: log as unknown as FastifyBaseLogger,
    bodyLimit: opts.bodyLimit,
    ajv: { customOptions: { allErrors: true, coerceTypes: "array", removeAdditional: false } },
    // Closing is preceded by a drain (drainApp) that answers new requests 503 with Retry-After itself.
    return503OnClosing: false,
    // One line per request at debug (errors at warn/error), not two at info: a busy POS feed would drown the log.
    logController: new LogController({ disableRequestLogging: true }),
    // The router's own refusals (a path parameter over maxParamLength, a malformed URL) in the error format, as 400s.
    frameworkErrors: (error, req, reply) =>
      sendProblem(req, reply as unknown as FastifyReply, 400, "invalid_request", `params: ${error.message}`, {
        errors: [{ path: "params", detail: error.message }],
      }),
  }) as unknown as FastifyInstance;
}

/**
 * Every route documents the errors the app's own machinery may give it (validation, auth, body parsing, rate
 * limits, a dependency down), so the OpenAPI document lists every status a client can get.
 */
function documentErrorStatuses(app: FastifyInstance): void {
  app.addHook("onRoute", (route) => {
    const schema = route.schema as ({ hide?: boolean; response?: Record<string, unknown> } & Record<string, unknown>) | undefined;
    if (!schema || schema.hide) return;
    const response = (schema.response ??= {});
    const add = (status: number) => (response[status] ??= problemResponse(status));
    const scoped = route.config?.scope !== undefined;
    const withBody = ["POST", "PUT", "PATCH", "DELETE"].includes(String(route.method));
    if (scoped || withBody || schema.params || schema.querystring || schema.headers) add(400);
    if (scoped) [401, 403, 503].forEach(add);
    if (withBody) [413, 415].forEach(add);
    if ((route.config as { rateLimit?: unknown } | undefined)?.rateLimit) add(429);
  });
}

/**
 * JSON bodies are checked for nesting before they are parsed (a body nested thousands deep parses, but any
 * recursive walk of it afterwards overflows the stack): too deep is the client's 400, naming the body.
 */
function limitJsonDepth(app: FastifyInstance, maxJsonDepth: number): void {
  const parseJson = app.getDefaultJsonParser("error", "error");
  app.removeContentTypeParser("application/json");
  app.addContentTypeParser("application/json", { parseAs: "string" }, (req, body, done) => {
    if (jsonDepthExceeds(body as string, maxJsonDepth)) {
      return done(invalidField("body", `JSON nested deeper than ${maxJsonDepth} levels`), undefined);
    }
    parseJson(req, body as string, done);
  });
}

/** Starts the services the routes share (metrics, outcome waiter, POS ingest, reservations), stopped when the app closes. */
async function startContext(
  app: FastifyInstance,
  deps: ApiDeps,
  log: ApiDeps["log"],
  opts: Required<ApiOptions>,
  streams: Set<() => void>,
): Promise<ApiContext> {
  const metrics = new ApiMetrics(deps);
  const outcomes = new OutcomeWaiter(deps.sql, deps.nats.nc, deps.topology.env);
  outcomes.start();
  const pos = new PosIngest({
    stores: knownStores(deps.config),
    finance: deps.config.finance,
    sql: deps.sql,
    nats: deps.nats,
    topology: deps.topology,
    log,
    onCommands: (cs) => {
      for (const c of cs) metrics.commandsIn.inc({ type: c.type, source: c.source.system });
    },
    onTransaction: (outcome, via) => metrics.posTransactions.inc({ outcome, via }),
  });
  await pos.start();
  const channels = deps.config.channels;
  const reservations = new Reservations({
    sql: deps.sql,
    nats: deps.nats,
    topology: deps.topology,
    log,
    outcomes,
    metrics: metrics.forReservations(),
    channels,
    decisionTimeoutMs: opts.decisionTimeoutMs,
    requestTimeoutMs: opts.requestTimeoutMs,
    shedLagMs: opts.reservationShedLagMs,
  });
  const posSubscriber = opts.background
    ? new PosSubscriber({ nc: deps.nats.nc, topology: deps.topology, ingest: pos, log, requestTimeoutMs: opts.requestTimeoutMs })
    : null;
  posSubscriber?.start();
  const catalogAcks = opts.background
    ? new CatalogAckSubscriber({ nc: deps.nats.nc, sql: deps.sql, topology: deps.topology, channels: new Set(Object.keys(channels)), log })
    : null;
  catalogAcks?.start();
  const sweeper = opts.background ? new ReservationSweeper({ reservations, intervalMs: opts.sweepIntervalMs, log }).start() : null;
  app.addHook("onClose", async () => {
    await posSubscriber?.stop();
    await catalogAcks?.stop();
    await sweeper?.stop();
    await outcomes.stop();
    await pos.stop();
  });
  return {
    ...deps,
    metrics,
    outcomes,
    pos,
    reservations,
    opts,
    streams,
    channelFor(req, asked) {
      const p = req.principal;
      const channel = asked ?? p?.channel ?? undefined;
      if (channel === undefined) throw invalidField("querystring.channel", "is missing (name a channel)");
      if (p?.channel && p.channel !== channel) throw new ApiError(403, "forbidden", `this token may only see channel ${p.channel}`);
      if (!Object.hasOwn(channels, channel))
        throw new ApiError(404, "unknown_channel", `no channel ${JSON.stringify(channel)} (configured: ${Object.keys(channels).join(", ")})`);
      return channel;
    },
    locationsFor(req) {
      const c = req.principal?.channel;
      if (!c) return null;
      return new Set(channels[c]?.locations ?? []);
    },
  };
}

/** Retry-After for a dependency's failure: the request budget, in whole seconds. */
const retryAfter = (opts: Required<ApiOptions>): string => String(Math.max(1, Math.ceil(opts.requestTimeoutMs / 1000)));

/** A schema validation failure as its fields: `querystring.skus`, `body.lines[0].qty`, each with what is wrong. */
function validationErrors(error: FastifyError): Array<{ path: string; detail: string }> {
  return (error.validation ?? []).map((v) => {
    const missing = (v.params as { missingProperty?: string }).missingProperty;
    const path = [error.validationContext, ...v.instancePath.split("/").filter(Boolean), ...(missing ? [missing] : [])]
      .join(".")
      .replace(/\.(\d+)(?=\.|$)/g, "[$1]");
    return { path, detail: missing ? "is missing" : (v.message ?? "is invalid") };
  });
}

/**
 * Every failure answered as a problem document (application/problem+json): ours, validation, body parsing, rate
 * limits, Postgres range errors, then 503; and the 404 of a path no route serves.
 */
function installErrorHandlers(app: FastifyInstance, opts: Required<ApiOptions>): void {
  app.setErrorHandler((error: FastifyError, req, reply) => {
    if (error instanceof ApiError) return sendProblem(req, reply, error.status, error.code, error.message, error.extra);
    if (error.validation) {
      const errors = validationErrors(error);
      return sendProblem(req, reply, 400, "invalid_request", errors.map((e) => `${e.path}: ${e.detail}`).join("; "), { errors });
    }
    const status = error.statusCode ?? 500;
    if (status === 429) return sendProblem(req, reply, 429, "rate_limited", error.message);
    if (status === 413) return sendProblem(req, reply, 413, "payload_too_large", `body: ${error.message}`);
    if (status === 415)
      return sendProblem(req, reply, 415, "unsupported_media_type", `headers.content-type: ${error.message} (send application/json)`);
    if (status >= 400 && status < 500)
      return sendProblem(req, reply, status, "invalid_request", error.code?.startsWith("FST_ERR_CTP_") ? `body: ${error.message}` : error.message);
    // A value Postgres cannot take (a date out of its range, a number too big: SQLSTATE class 22) came from the
    // request; the routes validate their fields first, so this is a safety net that still answers the client's 400.
    const sqlState = (error as { code?: unknown }).code;
    if (typeof sqlState === "string" && /^22[0-9A-Z]{3}$/.test(sqlState) && (error as { severity?: unknown }).severity !== undefined) {
      req.log.warn({ err: error, url: req.url }, "request carried a value Postgres refused");
      return sendProblem(req, reply, 400, "invalid_request", `a value in the request is out of range: ${error.message}`);
    }
    req.log.error({ err: error, url: req.url }, "request failed");
    reply.header("retry-after", retryAfter(opts));
    return sendProblem(req, reply, 503, "unavailable", "a dependency failed; retry shortly");
  });
  app.setNotFoundHandler((req, reply) => sendProblem(req, reply, 404, "not_found", `no route ${req.method} ${req.url.split("?")[0]}`));
}

/**
 * Routes that declare a scope need a bearer token that has it (or, where the route allows it, a stream token in
 * `?access_token=`: see src/http/auth.ts); the caller becomes `req.principal`.
 */
function installAuth(app: FastifyInstance, verifier: TokenVerifier, streamTokens: StreamTokens): void {
  app.addHook("onRequest", async (req, reply) => {
    const scope = req.routeOptions.config?.scope;
    if (!scope) return;
    const request = {
      authorization: req.headers.authorization,
      accessToken: (req.query as { access_token?: unknown } | undefined)?.access_token,
      streamTokenRoute: req.routeOptions.config?.streamToken === true,
    };
    const outcome = authenticate(request, scope, verifier, streamTokens);
    if ("principal" in outcome) {
      req.principal = outcome.principal;
      return;
    }
    if (outcome.challenge) reply.header("www-authenticate", outcome.challenge);
    return sendProblem(req, reply, outcome.status, outcome.status === 401 ? "unauthorized" : "forbidden", outcome.message);
  });
}

/**
 * A request that waits on a dependency for longer than its budget is answered 503 + Retry-After (the
 * publishes also stop at that deadline); a reservation's budget adds its decision time. An event stream or
 * export has answered once its headers are out, so the guard leaves it alone from then on.
 */
function installRequestBudget(app: FastifyInstance, opts: Required<ApiOptions>): void {
  app.addHook("onRequest", async (req, reply) => {
    if (!req.routeOptions.config?.scope) return;
    const budget = opts.requestTimeoutMs + (req.routeOptions.url?.startsWith("/v1/reservations") ? opts.decisionTimeoutMs : 0);
    const timer = setTimeout(() => {
      if (reply.sent || reply.raw.headersSent) return;
      req.log.warn({ url: req.url, ms: budget }, "request timed out waiting on a dependency");
      reply.header("retry-after", retryAfter(opts));
      void sendProblem(req, reply, 503, "unavailable", `no answer from a dependency within ${budget} ms; retry shortly`);
    }, budget);
    timer.unref();
    reply.raw.once("close", () => clearTimeout(timer));
    reply.raw.once("finish", () => clearTimeout(timer));
  });
}

/** The request-duration histogram, and one log line per request (debug; failures at error). */
function installRequestLog(app: FastifyInstance, metrics: ApiMetrics): void {
  app.addHook("onResponse", async (req, reply) => {
    metrics.httpDuration.observe(
      { method: req.method, route: req.routeOptions.url ?? "unknown", status: String(reply.statusCode) },
      reply.elapsedTime / 1000,
    );
    const line = {
      method: req.method,
      url: req.url,
      status: reply.statusCode,
      ms: Math.round(reply.elapsedTime * 10) / 10,
      token: req.principal?.id,
    };
    if (reply.statusCode >= 500 && !deliberate5xx.has(reply)) req.log.error(line, "request failed");
    else req.log.debug(line, "request");
  });
}

/**
 * The OpenAPI document's frame: every shared schema (addSchema, `$id`) becomes a component of that name, and
 * every error reply is a Problem (application/problem+json).
 */
const OPENAPI = {
  openapi: {
    openapi: "3.0.3",
    info: {
      title: "Tally",
      description:
        "Real-time inventory ledger: POS in, availability and reservations out. Every error is an RFC 9457 problem document " +
        "(application/problem+json) with a machine-readable `code` and, when fields are at fault, `errors`.",
      version: "0.1.0",
      license: { name: "Apache-2.0", url: "https://www.apache.org/licenses/LICENSE-2.0" },
    },
    // Relative: the instance that serves this document (each deployment has its own host; a local `tally start` listens on :8080).
    servers: [{ url: "/", description: "the Tally instance serving this document" }],
    tags: [
      { name: "health", description: "Liveness, readiness and Prometheus metrics (no token)" },
      { name: "pos", description: "Point-of-sale transactions in" },
      { name: "availability", description: "What each channel may sell, and stock per location" },
      { name: "catalog", description: "Item names, statuses and prices per channel, by catalog version" },
      { name: "reservations", description: "Checkout holds: create, read, commit, fulfill, release" },
      { name: "ledger", description: "Ledger entries for finance: paged, and the incremental export" },
      { name: "operators", description: "Dead letters, stuck partitions, CDC sources and the dashboard feed (admin)" },
    ],
    components: { securitySchemes: { bearer: { type: "http" as const, scheme: "bearer" } } },
    security: [{ bearer: [] }],
  },
  refResolver: { buildLocalReference: (json: { $id?: unknown }, _base: unknown, _fragment: string, i: number) => String(json.$id ?? `def-${i}`) },
};

/** Rate limiting, the OpenAPI document and its UI, the routes and the dashboard. */
async function registerPlugins(app: FastifyInstance, ctx: ApiContext, opts: Required<ApiOptions>): Promise<void> {
  await app.register(rateLimit, {
    global: false,
    hook: "preHandler",
    max: opts.rateLimitPerMinute,
    timeWindow: 60_000,
    keyGenerator: (req) => req.principal?.id ?? req.ip,
    errorResponseBuilder: (_req, context) => {
      const e = new Error(`rate limit of ${context.max} write requests per ${context.after} exceeded for this token`) as Error & {
        statusCode: number;
      };
      e.statusCode = 429;
      return e;
    },
  });
  await app.register(swagger, OPENAPI);
  await app.register(swaggerUi, { routePrefix: "/docs" });
  await app.register(healthRoutes, { ctx });
  await app.register(posRoutes, { ctx });
  await app.register(availabilityRoutes, { ctx });
  await app.register(reservationRoutes, { ctx });
  await app.register(catalogRoutes, { ctx });
  await app.register(productRoutes, { ctx });
  await app.register(ledgerRoutes, { ctx });
  await app.register(glRoutes, { ctx });
  await app.register(operatorRoutes, { ctx });
  const hub = new DashboardHub(ctx);
  app.addHook("onClose", async () => hub.stop());
  await app.register(dashboardRoutes, { ctx, hub });
}

/** How long a client is asked to wait before retrying a request refused by a draining instance. */
const DRAIN_RETRY_AFTER_SECONDS = 1;
const drains = new WeakMap<FastifyInstance, () => Promise<void>>();

/**
 * Counts the requests in flight, and once `drainApp` is called answers every new request 503 with
 * `Retry-After` and `Connection: close` (the listener stays open meanwhile, so a load balancer sees
 * 503s, not refused connections). Registered first, so a draining instance answers even before auth.
 */
function installDrain(app: FastifyInstance, streams: Set<() => void>): void {
  let draining = false;
  let inFlight = 0;
  let idle: (() => void) | null = null;
  app.addHook("onRequest", async (req, reply) => {
    if (draining)
      return (
        reply
          .code(503)
          .header("retry-after", String(DRAIN_RETRY_AFTER_SECONDS))
          .header("connection", "close")
          .type(PROBLEM_MEDIA_TYPE)
          // Serialized here: the route's own 503 schema (e.g. readiness) would strip these fields.
          .send(
            JSON.stringify(
              problem(503, "shutting_down", "this instance is shutting down; retry shortly (another instance will answer)", instanceOf(req)),
            ),
          )
      );
    inFlight++;
    // 'close' comes once per response, finished or aborted.
    reply.raw.once("close", () => {
      inFlight--;
      if (inFlight === 0) idle?.();
    });
  });
  drains.set(app, async () => {
    draining = true;
    for (const close of streams) close();
    if (inFlight === 0) return;
    await new Promise<void>((resolve) => (idle = resolve));
  });
}

/**
 * The first half of a graceful stop: from now on new requests get 503 + Retry-After; resolves when
 * the requests in flight have been answered (event streams are ended first). `app.close()` then
 * closes the listener. The caller bounds the wait (TALLY_SHUTDOWN_TIMEOUT_MS for `tally start`).
 */
export async function drainApp(app: FastifyInstance): Promise<void> {
  await drains.get(app)?.();
}
