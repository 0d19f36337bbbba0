import { Cause, Effect, ExecutionStrategy, Exit, Scope } from "effect";
import type { NatsConnection } from "@nats-io/transport-node";
import type { FastifyInstance } from "fastify";
import { Worker, type ChannelView } from "../../actors/index.ts";
import { activeLayout, assertEnvironment, ensureLedgerPartitions, instanceId, JournalPoster, recordValuationMethod } from "../../ledger/index.ts";
import { CatalogPublisher, Reconciler, SourceReader, WriteBack, configuredSources, writeBackSecret } from "../../cdc/index.ts";
import type { NatsAccess, Settings } from "../platform/index.ts";
import { requireDatabaseUrl } from "../platform/index.ts";
import type { TallyConfig } from "../platform/index.ts";
import { connectPostgres, type Sql } from "../platform/index.ts";
import { createLogger, type Logger } from "../platform/index.ts";
import type { LongRunningService } from "../platform/index.ts";
import { connectNats, ensureTopology, isClustered, topologyOptions, type NatsHandles, type UnderReplicated } from "../wire/index.ts";
import { OutboxRelay } from "../channels/index.ts";
import { AnchorPublisher } from "../channels/index.ts";
import { WebhookDispatcher, webhookTargets, type WebhookFeed } from "../channels/index.ts";
import { ResizeFinisher } from "../operations/index.ts";
import { topology, type Topology } from "../wire/index.ts";
import type { Server } from "node:http";
import { ProcessMetrics, serveMetrics, type MetricsSource } from "./processMetrics.ts";
import { Pruner } from "./pruner.ts";
import { WORKER_CHILD_ENV, answerMetricsRequests } from "./workerProcess.ts";

export type Role = "worker" | "relay" | "cdc" | "api";
export const ROLES: ReadonlyArray<Role> = ["worker", "relay", "cdc", "api"];

/** What a running Tally process holds; everything is released when its scope closes. */
export interface Running {
  readonly settings: Settings;
  readonly topology: Topology;
  readonly sql: Sql;
  readonly nats: NatsHandles;
  readonly log: Logger;
  readonly worker: Worker | null;
  /** Applies the retention horizons in bounded batches (role `worker`; one at a time across processes). */
  readonly pruner: Pruner | null;
  /** Posts the ledger's movements to the GL journal (role `worker`; one at a time across processes). */
  readonly poster: JournalPoster | null;
  readonly relay: OutboxRelay | null;
  /** Publishes hash-chain heads to the anchors stream (role `relay`). */
  readonly anchors: AnchorPublisher | null;
  /** One sender per channel with a webhook (role `relay`). */
  readonly webhooks: ReadonlyArray<WebhookDispatcher>;
  /** The channels' catalog webhook senders (role `relay`; a webhook with `catalog: false` has none). */
  readonly catalogWebhooks: ReadonlyArray<WebhookDispatcher>;
  /** One CDC reader per configured source whose URL is set. */
  readonly readers: ReadonlyArray<SourceReader>;
  /** One reconciler per reader whose source declares `onHand` (role `cdc`). */
  readonly reconcilers: ReadonlyArray<Reconciler>;
  /** Publishes catalog versions to the catalog KV bucket and subjects, and runs the durable price scheduler (role `cdc`). */
  readonly catalog: CatalogPublisher | null;
  /** One write-back per configured source with `writeBack` (role `cdc`). */
  readonly writeBacks: ReadonlyArray<WriteBack>;
  /** The HTTP API (role `api`), listening on TALLY_HTTP_HOST:TALLY_HTTP_PORT. */
  readonly api: FastifyInstance | null;
  /** This process's Prometheus metrics: on the API's /metrics, else on TALLY_METRICS_HOST:TALLY_METRICS_PORT. */
  readonly metrics: ProcessMetrics;
  /** The /metrics server of a process without the api role (null with the api role, and in the worker child). */
  readonly metricsServer: Server | null;
}

export const channelViews = (config: TallyConfig): ReadonlyArray<ChannelView> =>
  Object.entries(config.channels).map(([name, c]) => ({ name, locations: c.locations, buffer: c.buffer }));

/**
 * A promise as an Effect that fails with the promise's own rejection (not an UnknownException around
 * it), so that `Cause.squash` of a failed program is the original error.
 */
export const fromPromise = <A>(f: () => Promise<A>): Effect.Effect<A, unknown> => Effect.tryPromise({ try: f, catch: (error) => error });

/** A Postgres pool, ended on release. */
export const postgresResource = (url: string, application: string, max?: number) =>
  Effect.acquireRelease(
    Effect.sync(() => connectPostgres(url, { application, ...(max !== undefined ? { max } : {}) })),
    (sql) => Effect.promise(() => sql.end({ timeout: 5 })),
  );

/** A NATS connection, drained on release. */
export const natsResource = (url: string, name: string, access: NatsAccess = {}) =>
  Effect.acquireRelease(
    fromPromise(() => connectNats(url, name, access)),
    // A connection that cannot drain (already closed, or the server is gone) is closed instead: nothing is left to flush.
    (nc: NatsConnection) => Effect.promise(() => nc.drain().catch(() => nc.close())),
  );

/** How long closing a scope waits for one service's loop to end. */
const SERVICE_STOP_BOUND_MS = 15_000;

/**
 * A long-running service started now and stopped when the current scope closes. A loop that has not
 * ended within SERVICE_STOP_BOUND_MS (stuck on something its signal does not reach) is named in a
 * warning and left to end in the background, so one stuck loop cannot hold a shutdown forever.
 */
const serviceResource = <S extends LongRunningService>(make: () => S) =>
  Effect.acquireRelease(
    Effect.sync(() => make().start()),
    (service) =>
      Effect.promise(async () => {
        if (!(await service.stop(SERVICE_STOP_BOUND_MS)))
          process.emitWarning(`${service.constructor.name} did not stop within ${SERVICE_STOP_BOUND_MS} ms; left to end in the background`);
      }),
  );

/** What every role is started with. */
interface RoleContext {
  readonly settings: Settings;
  readonly config: TallyConfig;
  readonly log: Logger;
  readonly topology: Topology;
  readonly sql: Sql;
  readonly nc: NatsConnection;
  readonly nats: NatsHandles;
  readonly metrics: ProcessMetrics;
  /** The roles stop side by side when it closes. */
  readonly rolesScope: Scope.CloseableScope;
}

/** A stream found with fewer replicas than TALLY_NATS_REPLICAS, in the process's log: an error when it could not be raised. */
const replicaWarning = (log: Logger) => (message: string, detail: UnderReplicated) =>
  detail.raised ? log.warn({ nats: detail }, message) : log.error({ nats: detail }, message);

const ensureTopologyOf = (ctx: RoleContext) => () => ensureTopology(ctx.nc, ctx.topology, topologyOptions(ctx.settings, replicaWarning(ctx.log)));

const startWorker = (ctx: RoleContext, workerSql: Sql) =>
  Effect.gen(function* () {
    // Refused before any lease is taken: the ledger's values were computed by the recorded method.
    yield* fromPromise(() => recordValuationMethod(workerSql, ctx.config.finance.method));
    // This month's ledger partition and the next two exist (an entry never waits for one).
    yield* fromPromise(() => ensureLedgerPartitions(workerSql));
    return yield* startWorkerService(ctx, workerSql);
  });

const startWorkerService = (ctx: RoleContext, workerSql: Sql) =>
  serviceResource(() => {
    const { settings, nats, topology: t, config, log } = ctx;
    return new Worker({
      sql: workerSql,
      nats,
      topology: t,
      channels: channelViews(config),
      log: log.child({ role: "worker" }),
      leaseTtlMs: settings.leaseTtlMs,
      maxActors: settings.maxActors,
      batchMax: settings.batchMax,
      applyConcurrency: settings.applyConcurrency,
      restoreTopology: async () => {
        await ensureTopologyOf(ctx)();
      },
      onOutcomes: (batch) => ctx.metrics.observeBatch(batch),
      valuation: { method: config.finance.method, currency: config.finance.currency },
    });
  }).pipe(Scope.extend(ctx.rolesScope));

/** Finishes a partition resize whose command stopped, once the old layout has drained (within a lease TTL). */
const startResizeFinisher = ({ settings, sql, nats, topology: t, log, rolesScope }: RoleContext) =>
  serviceResource(
    () =>
      new ResizeFinisher({ sql, jsm: nats.jsm, topology: t, intervalMs: settings.leaseTtlMs, log: log.child({ role: "worker", part: "resize" }) }),
  ).pipe(Scope.extend(rolesScope));

/** The GL poster: follows the ledger and writes each command's inventory journal exactly once. */
const startPoster = ({ sql, config, log, rolesScope }: RoleContext) =>
  serviceResource(() => new JournalPoster({ sql, finance: config.finance, log: log.child({ role: "worker", part: "gl" }) })).pipe(
    Scope.extend(rolesScope),
  );

/** The pruning job: every TALLY_PRUNE_INTERVAL_MS, each retention horizon (src/app/pruner.ts). */
const startPruner = ({ settings, sql, nats, topology: t, log, rolesScope }: RoleContext) =>
  serviceResource(
    () =>
      new Pruner({
        sql,
        nats,
        topology: t,
        duplicateWindowMs: settings.duplicateWindowMs,
        retention: settings.retention,
        log: log.child({ role: "worker", part: "prune" }),
      }),
  ).pipe(Scope.extend(rolesScope));

const startRelay = (ctx: RoleContext) =>
  Effect.gen(function* () {
    const { settings, sql, nats, log, metrics } = ctx;
    const id = yield* fromPromise(() => instanceId(sql));
    return yield* serviceResource(
      () =>
        new OutboxRelay({
          sql,
          nats,
          log: log.child({ role: "relay" }),
          instanceId: id,
          topology: ctx.topology,
          channels: Object.keys(ctx.config.channels),
          sellsDiscontinued: Object.entries(ctx.config.channels).flatMap(([name, c]) => (c.sellsDiscontinued ? [name] : [])),
          env: settings.env,
          leaseTtlMs: settings.leaseTtlMs,
          owner: `relay-${process.pid}-${Math.random().toString(36).slice(2, 8)}`,
          onRound: (round) => metrics.observeRelay(round),
        }),
    ).pipe(Scope.extend(ctx.rolesScope));
  });

const startAnchors = ({ settings, sql, nats, topology: t, log }: RoleContext) =>
  serviceResource(() => new AnchorPublisher({ sql, nats, topology: t, log: log.child({ role: "relay" }), intervalMs: settings.anchorIntervalMs }));

const startWebhooks = (ctx: RoleContext, feed: WebhookFeed = "availability") =>
  Effect.gen(function* () {
    const { settings, config, nats, topology: t, log } = ctx;
    const webhooks: Array<WebhookDispatcher> = [];
    for (const target of yield* Effect.try({ try: () => webhookTargets(config), catch: (error) => error }))
      if (feed === "availability" || target.catalog)
        webhooks.push(
          yield* serviceResource(
            () =>
              new WebhookDispatcher({
                target,
                nats,
                sql: ctx.sql,
                topology: t,
                log: log.child({ role: "relay", channel: target.channel, feed }),
                owner: `webhook-${process.pid}-${Math.random().toString(36).slice(2, 8)}`,
                leaseTtlMs: settings.leaseTtlMs,
                feed,
              }),
          ).pipe(Scope.extend(ctx.rolesScope)),
        );
    return webhooks;
  });

const startReaders = (ctx: RoleContext) =>
  Effect.gen(function* () {
    const { settings, config, sql, nats, topology: t, log } = ctx;
    const readers: Array<SourceReader> = [];
    const sources = configuredSources(config, settings.env);
    if (sources.length === 0) log.warn("cdc role: no source has its TALLY_SOURCE_<NAME>_URL set; nothing to capture");
    for (const source of sources)
      readers.push(
        yield* serviceResource(
          () =>
            new SourceReader({
              source,
              sql,
              js: nats.js,
              nc: nats.nc,
              topology: t,
              log: log.child({ role: "cdc", source: source.name }),
            }),
        ).pipe(Scope.extend(ctx.rolesScope)),
      );
    return readers;
  });

/**
 * A reconciler per source with an `onHand` declaration, running while this process's reader streams it.
 * A source with `writeBack` has its corrections (where Tally is the system of record) written into
 * the ERP's inbound interface, and write-back still in flight is no drift (runReconciliation's
 * hooks); without one, Tally-wins pairs are reported "to write back".
 */
const startReconcilers = (ctx: RoleContext, readers: ReadonlyArray<SourceReader>) =>
  Effect.gen(function* () {
    const { sql, nats, topology: t, log } = ctx;
    const reconcilers: Array<Reconciler> = [];
    for (const reader of readers.filter((r) => r.opts.source.onHand !== undefined))
      reconcilers.push(
        yield* serviceResource(
          () =>
            new Reconciler({
              source: reader.opts.source,
              ledger: sql,
              js: nats.js,
              jsm: nats.jsm,
              topology: t,
              log: log.child({ role: "cdc", source: reader.name, part: "reconcile" }),
              active: () => reader.streaming,
            }),
        ).pipe(Scope.extend(ctx.rolesScope)),
      );
    return reconcilers;
  });
const startCatalog = ({ sql, nats, topology: t, log, rolesScope, settings }: RoleContext) =>
  serviceResource(
    () =>
      new CatalogPublisher({
        sql,
        js: nats.js,
        jsm: nats.jsm,
        topology: t,
        log: log.child({ role: "cdc", part: "catalog" }),
        replicas: { replicas: settings.natsReplicas, clustered: isClustered(nats.nc), warn: replicaWarning(log) },
        maxAgeMs: settings.retention.catalogMaxAgeMs,
      }),
  ).pipe(Scope.extend(rolesScope));
/** Write-back to each configured source that declares `writeBack` (role `cdc`). */
const startWriteBacks = (ctx: RoleContext) =>
  Effect.gen(function* () {
    const { settings, config, sql, nats, topology: t, log } = ctx;
    const writeBacks: Array<WriteBack> = [];
    const sources = configuredSources(config, settings.env).filter((s) => s.writeBack);
    // A missing signing secret fails the start, naming the variable (not a writer retrying forever).
    yield* Effect.try({
      try: () => {
        for (const s of sources) writeBackSecret(s);
      },
      catch: (error) => error,
    });
    for (const source of sources)
      writeBacks.push(
        yield* serviceResource(
          () =>
            new WriteBack({
              source,
              sql,
              currency: config.finance.currency,
              js: nats.js,
              jsm: nats.jsm,
              nc: nats.nc,
              topology: t,
              log: log.child({ role: "cdc", source: source.name, part: "writeback" }),
            }),
        ).pipe(Scope.extend(ctx.rolesScope)),
      );
    return writeBacks;
  });

/** The HTTP API, listening; drained, then closed, when the scope closes. */
const startApi = (
  { settings, config, topology: t, nats, log, metrics }: RoleContext,
  apiSql: Sql,
  parts: { worker: Worker | null; readers: ReadonlyArray<SourceReader>; webhooks: ReadonlyArray<WebhookDispatcher> },
) =>
  Effect.acquireRelease(
    fromPromise(async () => {
      // Loaded only by processes that serve HTTP.
      const { buildApp, drainApp } = await import("../http/index.ts");
      const { loadTokens } = await import("../http/index.ts");
      const app = await buildApp({
        settings,
        config,
        topology: t,
        sql: apiSql,
        nats,
        log,
        tokens: await loadTokens(settings),
        worker: parts.worker,
        readers: parts.readers,
        webhooks: parts.webhooks,
        registry: metrics.registry,
      });
      try {
        await app.listen({ port: settings.httpPort, host: settings.httpHost });
      } catch (error) {
        await app.close();
        throw error;
      }
      return { app, drainApp };
    }),
    // Drain first (requests in flight are answered, new ones get 503 + Retry-After), then close.
    ({ app, drainApp }) => Effect.promise(() => drainApp(app).then(() => app.close())),
  );

/**
 * Where a process without the api role exposes its metrics: the worker child answers its parent over IPC
 * (the parent's API serves them, labelled process="worker"); any other process listens on
 * TALLY_METRICS_HOST:TALLY_METRICS_PORT. Released when the scope closes.
 */
const exposeMetrics = (settings: Settings, metrics: ProcessMetrics) =>
  process.env[WORKER_CHILD_ENV] === "1" && process.send
    ? Effect.acquireRelease(
        Effect.sync(() => answerMetricsRequests(metrics.registry)),
        (stop) => Effect.sync(stop),
      ).pipe(Effect.as(null))
    : Effect.acquireRelease(
        fromPromise(() => serveMetrics(metrics.registry, settings.metricsHost, settings.metricsPort)),
        // A scraper's kept-alive connection must not hold the stop up.
        (server) =>
          Effect.promise(
            () =>
              new Promise<void>((resolve) => {
                server.close(() => resolve());
                server.closeAllConnections();
              }),
          ),
      );

/**
 * Acquires the connections and starts the requested roles inside the current scope: closing the
 * scope stops the roles (finishing batches in flight, releasing leases) and then the connections.
 */
export const startRoles = (
  settings: Settings,
  config: TallyConfig,
  roles: ReadonlyArray<Role>,
  log: Logger,
  opts: { readonly workerMetrics?: MetricsSource } = {},
) =>
  Effect.gen(function* () {
    const url = requireDatabaseUrl(settings);
    const t = topology(settings.env, settings.partitions);
    const sql = yield* postgresResource(url, `tally-${roles.join("+")}`);
    yield* fromPromise(() => assertEnvironment(sql, settings.env));
    const nc = yield* natsResource(settings.natsUrl, `tally-${settings.env}-${roles.join("+")}`, settings.natsAccess);
    const nats = yield* fromPromise(() => ensureTopology(nc, t, topologyOptions(settings, replicaWarning(log))));
    // The worker (the ledger's single writer) and the API (as many requests at once as clients send)
    // each get a pool of their own: a burst of requests queued on a shared pool would hold back the
    // very commits every one of them is waiting for.
    // Sized by the layout workers apply now (after a `tally partitions resize`, not TALLY_PARTITIONS').
    const applied = roles.includes("worker") ? ((yield* fromPromise(() => activeLayout(sql)))?.partitions ?? settings.partitions) : 0;
    const workerSql = roles.includes("worker") ? yield* postgresResource(url, "tally-worker", Math.min(applied, 16) + 2) : sql;
    const apiSql = roles.includes("api") ? yield* postgresResource(url, "tally-api") : sql;
    // The roles stop side by side when the scope closes (after the API has drained, before the
    // connections close): one waiting on a dependency that is down does not hold up the others'
    // flush, and the whole stop fits the shutdown bound more easily.
    const rolesScope = yield* Scope.fork(yield* Effect.scope, ExecutionStrategy.parallel);
    const metrics = new ProcessMetrics({ nats, topology: t, sql });
    if (opts.workerMetrics) metrics.addSource(opts.workerMetrics);
    const ctx: RoleContext = { settings, config, log, topology: t, sql, nc, nats, metrics, rolesScope };
    // Listening before the roles start: a port already in use fails the start before any lease is taken.
    const metricsServer = roles.includes("api") ? null : yield* exposeMetrics(settings, metrics);
    const worker = roles.includes("worker") ? yield* startWorker(ctx, workerSql) : null;
    const poster = roles.includes("worker") ? yield* startPoster(ctx) : null;
    const pruner = roles.includes("worker") ? yield* startPruner(ctx) : null;
    if (roles.includes("worker")) yield* startResizeFinisher(ctx);
    const relay = roles.includes("relay") ? yield* startRelay(ctx) : null;
    const anchors = roles.includes("relay") ? yield* startAnchors(ctx) : null;
    const webhooks = roles.includes("relay") ? yield* startWebhooks(ctx) : [];
    const catalogWebhooks = roles.includes("relay") ? yield* startWebhooks(ctx, "catalog") : [];
    const readers = roles.includes("cdc") ? yield* startReaders(ctx) : [];
    const reconcilers = roles.includes("cdc") ? yield* startReconcilers(ctx, readers) : [];
    const catalog = roles.includes("cdc") ? yield* startCatalog(ctx) : null;
    const writeBacks = roles.includes("cdc") ? yield* startWriteBacks(ctx) : [];
    metrics.add({ worker, relay, webhooks, ...(roles.includes("cdc") ? { readers, reconcilers, writeBacks } : {}) });
    metrics.add({ poster, pruner });
    const tolerances = Object.fromEntries(Object.entries(config.channels).map(([name, c]) => [name, c.catalogLagToleranceSeconds]));
    if (catalog) metrics.add({ catalog: { publisher: catalog, tolerances } });
    if (catalogWebhooks.length > 0) metrics.add({ catalogWebhooks });
    const api = roles.includes("api") ? yield* startApi(ctx, apiSql, { worker, readers, webhooks }) : null;
    return {
      settings,
      topology: t,
      sql,
      nats,
      log,
      worker,
      poster,
      pruner,
      relay,
      anchors,
      webhooks,
      catalogWebhooks,
      readers,
      reconcilers,
      catalog,
      writeBacks,
      api: api?.app ?? null,
      metrics,
      metricsServer,
    } satisfies Running;
  });

/** Runs a (scoped) program; rejects with its original error (`Cause.squash`: the first failure, else the first defect). */
export async function runEffect<A>(program: Effect.Effect<A, unknown>): Promise<A> {
  const exit = await Effect.runPromiseExit(program);
  if (Exit.isSuccess(exit)) return exit.value;
  throw Cause.squash(exit.cause);
}

/** Promise-style handle on `startRoles` for callers outside Effect (tests, the dev stack). */
export async function startTally(
  settings: Settings,
  config: TallyConfig,
  roles: ReadonlyArray<Role>,
  log: Logger = createLogger("tally"),
): Promise<Running & { close(): Promise<void> }> {
  const scope = Effect.runSync(Scope.make());
  const exit = await Effect.runPromiseExit(Scope.extend(startRoles(settings, config, roles, log), scope));
  if (Exit.isSuccess(exit)) return { ...exit.value, close: () => Effect.runPromise(Scope.close(scope, Exit.void)) };
  await Effect.runPromise(Scope.close(scope, Exit.void));
  throw Cause.squash(exit.cause);
}
