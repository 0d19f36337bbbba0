/**
 * Every Tally process's Prometheus metrics: the standard process and Node.js runtime metrics, and the
 * metrics of the roles it runs (worker, relay, cdc; the API adds its own, src/http/metrics.ts). Each
 * process exports only its own work and its own state, so `sum()` over processes never counts a
 * thing twice; cluster-wide state (dead letters waiting, negative stock) is exported by the one
 * process whose relay holds the relay lease (0 elsewhere). docs/metrics.md lists every metric.
 */
import { createServer, type Server } from "node:http";
import { AggregatorRegistry, Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import type { Worker } from "../../actors/index.ts";
import type { JournalPoster } from "../../ledger/index.ts";
import { catalogVersions, type CatalogPublisher, type CatalogVersions, type Reconciler, type SourceReader, type WriteBack } from "../../cdc/index.ts";
import type { OutboxRelay, RelayRound, WebhookDispatcher } from "../channels/index.ts";
import type { Sql } from "../platform/index.ts";
import { PRUNED_TABLES, type Pruner } from "./pruner.ts";
import type { NatsHandles, OutcomeBatch, Topology } from "../wire/index.ts";

/** What a process runs; each part present adds its metrics. */
export interface MetricsParts {
  readonly nats: NatsHandles;
  readonly topology: Topology;
  /** Reads the cluster-wide state the relay leader exports (negative stock). */
  readonly sql?: Sql;
  readonly worker?: Worker | null;
  readonly relay?: OutboxRelay | null;
  readonly readers?: ReadonlyArray<SourceReader>;
  readonly reconcilers?: ReadonlyArray<Reconciler>;
  readonly webhooks?: ReadonlyArray<WebhookDispatcher>;
  /** The channels' catalog webhook senders (role `relay`). */
  readonly catalogWebhooks?: ReadonlyArray<WebhookDispatcher>;
  /** The GL poster (role `worker`). */
  readonly poster?: JournalPoster | null;
  readonly writeBacks?: ReadonlyArray<WriteBack>;
  /** The pruning job (role `worker`). */
  readonly pruner?: Pruner | null;
  /** The catalog publisher (role `cdc`) and each channel's catalog lag tolerance: which version each channel runs. */
  readonly catalog?: { readonly publisher: CatalogPublisher; readonly tolerances: Readonly<Record<string, number>> } | null;
}

type MetricsJson = Awaited<ReturnType<Registry["getMetricsAsJSON"]>>;
/** Another process's metrics (the worker child's), merged into this registry's at scrape; null when it does not answer. */
export type MetricsSource = () => Promise<MetricsJson | null>;

/** A registry whose text also holds the metrics of the sources added to it (the worker child's, labelled `process="worker"`). */
class MergingRegistry extends Registry {
  readonly sources: Array<MetricsSource> = [];

  override async metrics(): Promise<string> {
    if (this.sources.length === 0) return super.metrics();
    const others = await Promise.all(this.sources.map((s) => s()));
    const mine = await this.getMetricsAsJSON();
    const labelled = others.filter((o) => o !== null).map((o) => withLabel(o, "process", "worker"));
    // Every series carries distinct labels, so "sum" is a plain union (and keeps what other aggregators would drop).
    const all = [mine, ...labelled].map((list) => list.map((m) => ({ ...m, aggregator: "sum" as const })));
    return AggregatorRegistry.aggregate(all).metrics();
  }
}

const withLabel = (list: MetricsJson, name: string, value: string): MetricsJson =>
  list.map((m) => ({ ...m, values: m.values.map((v) => ({ ...v, labels: { ...v.labels, [name]: value } })) })) as MetricsJson;

type Registers = Array<Registry>;

/**
 * prom-client's default process and Node.js metrics, unprefixed (the names stock dashboards use), less
 * the three gauges named `_total` (promtool: only counters end in `_total`); their labelled
 * `nodejs_active_{handles,requests,resources}{type}` gauges stay, and `sum()` of them is the total.
 */
export function standardMetrics(registry: Registry): void {
  collectDefaultMetrics({ register: registry });
  for (const name of ["nodejs_active_handles_total", "nodejs_active_requests_total", "nodejs_active_resources_total"])
    registry.removeSingleMetric(name);
}

/** A process's registry and the metrics of the roles it runs. */
export class ProcessMetrics {
  readonly registry: Registry = new MergingRegistry();
  readonly #registers: Registers = [this.registry];
  #endToEnd: Histogram<"source"> | null = null;
  #outcomes: ((batch: OutcomeBatch) => void) | null = null;

  constructor(readonly parts: MetricsParts) {
    standardMetrics(this.registry);
    this.add(parts);
  }

  /** Registers the metrics of the parts given (each at most once per process). */
  add(parts: Omit<MetricsParts, "nats" | "topology" | "sql">): void {
    if (parts.worker) this.#outcomes = registerWorker(parts.worker, this.parts, this.#registers);
    if (parts.relay) this.#endToEnd = registerRelay(parts.relay, this.parts, this.#registers);
    if (parts.webhooks && parts.webhooks.length > 0) registerWebhooks(parts.webhooks, this.#registers);
    if (parts.catalogWebhooks && parts.catalogWebhooks.length > 0) registerCatalogWebhooks(parts.catalogWebhooks, this.#registers);
    if (parts.readers) registerCdc(parts.readers, this.#registers);
    if (parts.poster) registerPoster(parts.poster, this.#registers);
    if (parts.reconcilers && parts.reconcilers.length > 0) registerReconcile(parts.reconcilers, this.#registers);
    if (parts.writeBacks && parts.writeBacks.length > 0) registerWriteBacks(parts.writeBacks, this.#registers);
    if (parts.pruner) registerPruner(parts.pruner, this.#registers);
    if (parts.catalog && this.parts.sql) registerCatalog(parts.catalog, this.parts.sql, this.#registers);
  }

  /** Merges another process's metrics into this registry's text at every scrape. */
  addSource(source: MetricsSource): void {
    (this.registry as MergingRegistry).sources.push(source);
  }

  /** A relay round of this process's relay: end-to-end latency per source system. */
  observeRelay(round: RelayRound): void {
    for (const [source, list] of Object.entries(round.latencyMs)) for (const ms of list) this.#endToEnd?.observe({ source }, ms / 1000);
  }

  /** An outcome message of this process's worker: commands applied and rejected, batch size and latency. */
  observeBatch(batch: OutcomeBatch): void {
    this.#outcomes?.(batch);
  }
}

/**
 * A counter that follows a running total kept elsewhere (read at scrape): it adds what the total grew
 * by since the last scrape, so Prometheus sees a counter, never a gauge that happens to rise.
 */
function followingCounter<L extends string>(
  registers: Registers,
  name: string,
  help: string,
  labelNames: ReadonlyArray<L>,
  read: () => Iterable<readonly [Partial<Record<L, string>>, number]>,
): Counter<L> {
  const last = new Map<string, number>();
  return new Counter<L>({
    name,
    help,
    labelNames,
    registers,
    collect() {
      for (const [labels, total] of read()) {
        const key = JSON.stringify(labels);
        const before = last.get(key);
        this.inc(labels, Math.max(0, total - (before ?? 0)));
        last.set(key, Math.max(total, before ?? 0));
      }
    },
  });
}

/** A following counter without labels. */
const totalCounter = (registers: Registers, name: string, help: string, read: () => number) =>
  followingCounter(registers, name, help, [], () => [[{}, read()]]);

/** A gauge read at scrape. */
const readGauge = (registers: Registers, name: string, help: string, read: () => number) =>
  new Gauge({
    name,
    help,
    registers,
    collect() {
      this.set(read());
    },
  });

/** The worker's running totals and its partitions; returns the observer of the outcomes of the batches it commits. */
function registerWorker(worker: Worker, parts: MetricsParts, registers: Registers): (batch: OutcomeBatch) => void {
  const m = worker.metrics;
  const total = (name: string, help: string, read: () => number) => totalCounter(registers, name, help, read);
  total("tally_worker_batches_total", "Batches this process's worker committed", () => m.batches);
  total("tally_worker_dead_lettered_total", "Undecodable commands this process's worker dead-lettered", () => m.deadLettered);
  total("tally_worker_duplicates_skipped_total", "Commands this process's worker skipped as already applied", () => m.skippedDuplicate);
  total("tally_worker_holds_refused_total", "Reserves refused for want of stock (each published as hold_refused)", () => m.holdsRefused);
  total("tally_worker_retries_total", "Batch attempts that failed and were retried", () => m.retries);
  total(
    "tally_worker_unstorable_total",
    "Commands the ledger refused to store (a data error), dead-lettered so their partition moved on",
    () => m.poisoned,
  );
  total("tally_worker_skipped_by_operator_total", "Stream messages dead-lettered because an operator skipped them (tally dlq skip)", () => m.skipped);
  total("tally_worker_stream_resets_total", "Times the commands stream was a new one and the checkpoints were reset to it", () => m.streamResets);
  total("tally_worker_duplicate_retries_total", "Batches decided again after their optimistic commit met a duplicate", () => m.duplicateRetries);
  total("tally_worker_delivery_gaps_total", "Times a partition's consumer skipped deliveries and re-read from its checkpoint", () => m.deliveryGaps);
  total(
    "tally_worker_pulls_stalled_total",
    "Times a partition's pull went quiet (two idle heartbeats missed) and was issued again",
    () => m.pullsStalled,
  );
  total("tally_worker_leases_lost_total", "Partition leases this process's worker lost to another worker", () => m.leaseLost);
  readGauge(registers, "tally_worker_partitions_held", "Partitions whose lease this process's worker holds", () => worker.held().length);
  readGauge(
    registers,
    "tally_worker_partitions",
    "Partitions of the layout this process's worker applies (TALLY_PARTITIONS until a `tally partitions resize`)",
    () => worker.layout()?.partitions ?? parts.topology.partitions,
  );
  readGauge(
    registers,
    "tally_worker_stuck_partitions",
    "Partitions held by this process's worker that are stuck (5 or more failed attempts in a row)",
    () => worker.statuses().filter((s) => s.stuck).length,
  );
  return outcomeObserver(registers);
}

/** Counts the outcomes of the batches this process's worker commits (it calls the observer as it publishes them). */
function outcomeObserver(registers: Registers): (batch: OutcomeBatch) => void {
  const applied = new Counter({
    name: "tally_commands_applied_total",
    help: "Commands this process's worker applied, by type and source",
    labelNames: ["type", "source"],
    registers,
  });
  const rejected = new Counter({
    name: "tally_commands_rejected_total",
    help: "Commands this process's worker rejected, by type, source and reason",
    labelNames: ["type", "source", "reason"],
    registers,
  });
  const size = new Histogram({
    name: "tally_apply_batch_size",
    help: "Commands decided per ledger transaction by this process's worker",
    buckets: [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2000, 5000],
    registers,
  });
  const seconds = new Histogram({
    name: "tally_apply_batch_seconds",
    help: "Time to decide and commit one batch (decode to commit) in this process's worker",
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers,
  });
  return (batch) => {
    if (batch.part === 0) {
      size.observe(batch.size);
      seconds.observe(batch.applyMs / 1000);
    }
    for (const o of batch.outcomes) {
      const source = o.source ?? "unknown";
      if (o.status === "applied") applied.inc({ type: o.type, source });
      else rejected.inc({ type: o.type, source, reason: o.reason ?? "unknown" });
    }
  };
}

/** The GL poster: how far behind the ledger it is, and the journals it wrote. */
function registerPoster(poster: JournalPoster, registers: Registers): void {
  readGauge(
    registers,
    "tally_gl_lag_seconds",
    "Age of the oldest ledger entry the GL poster has not posted yet, as of its last round (0 when none waits; the same on every worker: use max())",
    () => poster.lagSeconds(),
  );
  totalCounter(registers, "tally_gl_journals_posted_total", "GL journals this process's poster wrote", () => poster.journals);
}

/** The relay's publishing and latency; the cluster-wide state only its leader exports. */
function registerRelay(relay: OutboxRelay, parts: MetricsParts, registers: Registers): Histogram<"source"> {
  totalCounter(
    registers,
    "tally_relay_published_total",
    "Outbox rows (availability changes and events) this process's relay published",
    () => relay.published,
  );
  readGauge(
    registers,
    "tally_relay_leader",
    "1 while this process's relay holds the relay lease (and exports the cluster-wide gauges), else 0",
    () => (relay.leader ? 1 : 0),
  );
  new Gauge({
    name: "tally_dlq_messages",
    help: "Dead letters waiting in the dead-letter stream (cluster-wide: exported by the relay leader, 0 elsewhere)",
    registers,
    async collect() {
      if (!relay.leader) return this.set(0);
      const info = await parts.nats.jsm.streams.info(parts.topology.dlqStream).catch(() => null); // NATS down: the gauge keeps its last value
      if (info) this.set(info.state.messages);
    },
  });
  const { sql } = parts;
  if (sql)
    new Gauge({
      name: "tally_negative_stock_locations",
      help: "SKU locations whose on-hand stock is below zero (cluster-wide: exported by the relay leader, 0 elsewhere)",
      registers,
      async collect() {
        if (!relay.leader) return this.set(0);
        const rows = await sql<Array<{ n: number }>>`select count(*)::int as n from sku_locations where status = 'negative'`.catch(() => null); // Postgres down: keeps its last value
        if (rows) this.set(rows[0]?.n ?? 0);
      },
    });
  return new Histogram({
    name: "tally_end_to_end_seconds",
    help: "Source time of a change (commit time at the source database, POS transaction time, API request) to its availability published on NATS by this process's relay, by source system",
    labelNames: ["source"],
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
    registers,
  });
}

/** This process's webhook senders' running totals, per channel. */
function registerWebhooks(webhooks: ReadonlyArray<WebhookDispatcher>, registers: Registers): void {
  const perChannel = (name: string, help: string, read: (w: WebhookDispatcher) => number) =>
    followingCounter(registers, name, help, ["channel"], () => webhooks.map((w) => [{ channel: w.channel }, read(w)] as const));
  perChannel("tally_webhook_deliveries_total", "Webhook batches this process delivered (2xx), per channel", (w) => w.metrics.deliveries);
  perChannel("tally_webhook_items_total", "Availability changes this process delivered by webhook, per channel", (w) => w.metrics.items);
  perChannel("tally_webhook_failed_attempts_total", "Webhook requests that failed and were retried, per channel", (w) => w.metrics.failedAttempts);
  perChannel(
    "tally_webhook_dead_lettered_total",
    "Webhook batches dead-lettered after their retries ran out, per channel",
    (w) => w.metrics.deadLettered,
  );
}

/** This process's catalog webhook senders' running totals, per channel. */
function registerCatalogWebhooks(webhooks: ReadonlyArray<WebhookDispatcher>, registers: Registers): void {
  const perChannel = (name: string, help: string, read: (w: WebhookDispatcher) => number) =>
    followingCounter(registers, name, help, ["channel"], () => webhooks.map((w) => [{ channel: w.channel }, read(w)] as const));
  perChannel(
    "tally_catalog_webhook_deliveries_total",
    "Catalog webhook batches this process delivered (2xx), per channel",
    (w) => w.metrics.deliveries,
  );
  perChannel("tally_catalog_webhook_items_total", "Catalog changes this process delivered by webhook, per channel", (w) => w.metrics.items);
  perChannel(
    "tally_catalog_webhook_dead_lettered_total",
    "Catalog webhook batches dead-lettered after their retries ran out, per channel",
    (w) => w.metrics.deadLettered,
  );
}

/** The CDC sources this process reads: slot lag (while streaming), changes, dead letters, skips, halts, publication gaps. */
function registerCdc(readers: ReadonlyArray<SourceReader>, registers: Registers): void {
  /** A gauge per source, from the readers `which` selects (a stale reading of a reader that is not streaming is dropped). */
  const perSource = (name: string, help: string, which: (r: SourceReader) => boolean, read: (r: SourceReader) => number | null) =>
    new Gauge({
      name,
      help,
      labelNames: ["source"],
      registers,
      collect() {
        this.reset();
        for (const r of readers.filter(which)) {
          const value = read(r);
          if (value !== null) this.set({ source: r.name }, value);
        }
      },
    });
  const streaming = (r: SourceReader) => r.streaming;
  perSource(
    "tally_cdc_streaming",
    "1 while this process streams the source's replication slot, else 0",
    () => true,
    (r) => (r.streaming ? 1 : 0),
  );
  perSource(
    "tally_cdc_slot_lag_bytes",
    "WAL the source's replication slot holds back (from the process streaming it)",
    streaming,
    (r) => r.metrics.lagBytes,
  );
  perSource(
    "tally_cdc_slot_lag_alert_bytes",
    "The source's lagAlertBytes (from the process streaming it)",
    streaming,
    (r) => r.opts.source.lagAlertBytes,
  );
  perSource(
    "tally_cdc_source_halted",
    "1 while this process's reader of the source is halted because its replication slot was lost or replaced (tally source resnapshot), else 0",
    () => true,
    (r) => (r.metrics.halted === null ? 0 : 1),
  );
  perSource(
    "tally_cdc_publication_missing_tables",
    "Captured tables missing from the source's publication, whose changes are not captured (tally source enable; from the process streaming it)",
    streaming,
    (r) => r.metrics.publicationMissing.length,
  );
  const bySourceAnd = <K extends string>(key: K, name: string, help: string, read: (r: SourceReader) => Readonly<Record<string, number>>) =>
    followingCounter(registers, name, help, ["source", key], () =>
      readers.flatMap((r) =>
        Object.entries(read(r)).map(([k, n]) => [{ source: r.name, [key]: k } as Partial<Record<"source" | K, string>>, n] as const),
      ),
    );
  bySourceAnd("table", "tally_cdc_changes_total", "Source changes this process read, per CDC source and table", (r) => r.metrics.changesByTable);
  bySourceAnd(
    "reason",
    "tally_cdc_dead_letters_total",
    "Source changes this process dead-lettered, per CDC source and reason",
    (r) => r.metrics.deadLettersByReason,
  );
  followingCounter(registers, "tally_cdc_skipped_non_inventory_total", "Non-inventory lines this process skipped, per CDC source", ["source"], () =>
    readers.map((r) => [{ source: r.name }, r.metrics.skipped] as const),
  );
}

/** The last reconciliation of each source this process reconciles (while its reader streams it: one process per source). */
function registerReconcile(reconcilers: ReadonlyArray<Reconciler>, registers: Registers): void {
  const perSource = (name: string, help: string, read: (last: NonNullable<Reconciler["last"]>) => number) =>
    new Gauge({
      name,
      help,
      labelNames: ["source"],
      registers,
      collect() {
        this.reset();
        for (const r of reconcilers) if (r.last && r.opts.active()) this.set({ source: r.name }, read(r.last));
      },
    });
  perSource(
    "tally_reconcile_drift_units",
    "Σ|source − ledger| over the (SKU, location) pairs above reconcileTolerance in the source's last reconciliation, in base units",
    (l) => l.units,
  );
  perSource("tally_reconcile_drift_pairs", "(SKU, location) pairs above reconcileTolerance in the source's last reconciliation", (l) => l.pairs);
  perSource(
    "tally_reconcile_last_run_timestamp_seconds",
    "When the source's last reconciliation finished (Unix seconds)",
    (l) => l.finishedAt.getTime() / 1000,
  );
}

/** The write-back to each source's ERP: lag, rows sent, failed attempts, dead letters. */
function registerWriteBacks(writeBacks: ReadonlyArray<WriteBack>, registers: Registers): void {
  new Gauge({
    name: "tally_writeback_lag_seconds",
    help: "Seconds since the oldest movement not yet written back to the source's ERP was recorded (0: nothing waiting)",
    labelNames: ["source"],
    registers,
    collect() {
      this.reset();
      for (const w of writeBacks) this.set({ source: w.name }, w.metrics.lagSeconds);
    },
  });
  const perSource = (name: string, help: string, read: (w: WriteBack) => number) =>
    followingCounter(registers, name, help, ["source"], () => writeBacks.map((w) => [{ source: w.name }, read(w)] as const));
  perSource("tally_writeback_movements_total", "Movements this process wrote back to the source's ERP", (w) => w.metrics.movements);
  perSource(
    "tally_writeback_requisitions_total",
    "Purchase-requisition suggestions this process wrote to the source's ERP",
    (w) => w.metrics.requisitions,
  );
  perSource("tally_writeback_journal_lines_total", "GL journal lines this process wrote back to the source's ERP", (w) => w.metrics.journalLines);
  perSource(
    "tally_writeback_failed_attempts_total",
    "Write-back attempts to the source's ERP that failed (each is retried)",
    (w) => w.metrics.failedAttempts,
  );
  perSource(
    "tally_writeback_dead_lettered_total",
    "Write-back rows or batches dead-lettered (no ERP item, or the retries ran out)",
    (w) => w.metrics.deadLettered,
  );
}

/**
 * Which catalog version each channel runs (exported by every process running the catalog publisher:
 * the same cluster-wide figures, so alert on `max by (channel)`), read once per scrape.
 */
function registerCatalog(catalog: NonNullable<MetricsParts["catalog"]>, sql: Sql, registers: Registers): void {
  let reading: { at: number; result: Promise<CatalogVersions | null> } | null = null;
  const read = () => {
    if (!reading || Date.now() - reading.at > 1000) reading = { at: Date.now(), result: catalogVersions(sql, catalog.tolerances).catch(() => null) }; // Postgres down: the gauges keep their last values
    return reading.result;
  };
  const perChannel = (name: string, help: string, pick: (c: CatalogVersions["channels"][number]) => number) =>
    new Gauge({
      name,
      help,
      labelNames: ["channel"],
      registers,
      async collect() {
        const v = await read();
        if (!v) return;
        this.reset();
        for (const c of v.channels) this.set({ channel: c.channel }, pick(c));
      },
    });
  perChannel(
    "tally_catalog_version_lag",
    "Seconds the channel has run an older catalog version than its latest change (since the oldest catalog version it has not acknowledged was recorded; 0: current)",
    (c) => c.lagSeconds,
  );
  perChannel(
    "tally_catalog_versions_behind",
    "Catalog versions that changed the channel's catalog above the version it acknowledged",
    (c) => c.behindBy,
  );
  perChannel("tally_catalog_acked_version", "The highest catalog version the channel acknowledged having applied (0: none)", (c) => c.ackedVersion);
  perChannel(
    "tally_catalog_version_lag_tolerance_seconds",
    "The channel's catalogLagToleranceSeconds: TallyCatalogChannelBehind fires when tally_catalog_version_lag exceeds it",
    (c) => c.toleranceSeconds,
  );
  new Gauge({
    name: "tally_catalog_head_version",
    help: "The environment's current catalog version",
    registers,
    async collect() {
      const v = await read();
      if (v) this.set(v.headVersion);
    },
  });
  totalCounter(
    registers,
    "tally_catalog_published_total",
    "Catalog projections this process's catalog publisher sent to NATS",
    () => catalog.publisher.published,
  );
}

/** Serves `registry` at GET /metrics on host:port (a process without the api role); closed on `close()`. */
export async function serveMetrics(registry: Registry, host: string, port: number): Promise<Server> {
  const server = createServer((req, res) => {
    if (req.method !== "GET" || (req.url ?? "").split("?")[0] !== "/metrics") {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found: only GET /metrics is served here\n");
      return;
    }
    registry.metrics().then(
      (text) => res.writeHead(200, { "content-type": registry.contentType }).end(text),
      (err: unknown) => res.writeHead(500, { "content-type": "text/plain" }).end(`metrics failed: ${(err as Error)?.message ?? String(err)}\n`),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", (err: NodeJS.ErrnoException) =>
      reject(
        new Error(`TALLY_METRICS_HOST/TALLY_METRICS_PORT: cannot serve /metrics on ${host}:${port} (${err.code ?? err.message}); set a free port`),
      ),
    );
    server.listen(port, host, () => resolve());
  });
  return server;
}

/** The pruning job: rows removed per table, dead letters expired (by cause), the last round and the outcomes horizon. */
function registerPruner(pruner: Pruner, registers: Registers): void {
  const m = pruner.metrics;
  followingCounter(
    registers,
    "tally_retention_rows_pruned_total",
    "Rows this process's pruner removed past their retention horizon, per table (command_outcomes: moved to the archive)",
    ["table"],
    () => PRUNED_TABLES.map((table) => [{ table }, m.rows[table]] as const),
  );
  followingCounter(
    registers,
    "tally_retention_dead_letters_expired_total",
    "Dead letters this process's pruner expired, each logged first, by cause (age: past TALLY_DLQ_MAX_AGE_SECONDS; size: over TALLY_DLQ_MAX_BYTES)",
    ["cause"],
    () => [
      [{ cause: "age" }, m.deadLettersExpired.age],
      [{ cause: "size" }, m.deadLettersExpired.size],
    ],
  );
  totalCounter(registers, "tally_retention_failed_rounds_total", "Pruning rounds that failed (the next round tries again)", () => m.failures);
  new Gauge({
    name: "tally_retention_last_run_timestamp_seconds",
    help: "When this process's pruner last finished a round (0: not yet)",
    registers,
    collect() {
      this.set(m.lastRunAt === null ? 0 : m.lastRunAt / 1000);
    },
  });
  new Gauge({
    name: "tally_retention_outcomes_horizon_seconds",
    help: "How far back the command outcomes' idempotency horizon reached in the last round (the duplicate window, or the oldest CDC slot position's age)",
    registers,
    collect() {
      if (m.outcomesHorizonSeconds !== null) this.set(m.outcomesHorizonSeconds);
    },
  });
}
