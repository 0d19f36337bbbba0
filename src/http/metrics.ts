import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import type { Worker } from "../../actors/index.ts";
import type { SourceReader } from "../../cdc/index.ts";
import type { NatsHandles } from "../wire/index.ts";
import type { Topology } from "../wire/index.ts";
import type { OutcomeBatch } from "../wire/index.ts";
import type { RelayRound } from "../channels/index.ts";
import type { Subscription } from "@nats-io/transport-node";
import type { WebhookDispatcher } from "../channels/index.ts";
import type { ReservationMetrics } from "../reservations/index.ts";

export interface MetricsDeps {
  readonly nats: NatsHandles;
  readonly topology: Topology;
  readonly worker?: Worker | null;
  readonly readers?: ReadonlyArray<SourceReader>;
  readonly webhooks?: ReadonlyArray<WebhookDispatcher>;
}

/**
 * The API process's Prometheus metrics (one registry per app, so several apps in one process never
 * collide). Command outcomes are counted from the workers' outcome messages, so every API process
 * sees the whole cluster's applied/rejected counts and batch histograms; gauges are read at scrape.
 */
export class ApiMetrics {
  readonly registry = new Registry();
  readonly commandsIn: Counter<"type" | "source">;
  readonly commandsApplied: Counter<"type" | "source">;
  readonly commandsRejected: Counter<"type" | "source" | "reason">;
  readonly batchSize: Histogram;
  readonly applyLatency: Histogram;
  readonly reservations: Counter<"outcome">;
  readonly reservationLatency: Histogram<"outcome">;
  readonly posTransactions: Counter<"outcome" | "via">;
  readonly httpDuration: Histogram<"method" | "route" | "status">;
  readonly endToEnd: Histogram<"source">;
  #relaySub: Subscription | null = null;

  constructor(readonly deps: MetricsDeps) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry, prefix: "tally_process_" });
    this.commandsIn = new Counter({
      name: "tally_commands_in_total",
      help: "Commands this API process published, by type and source",
      labelNames: ["type", "source"],
      registers,
    });
    this.commandsApplied = new Counter({
      name: "tally_commands_applied_total",
      help: "Commands applied by the workers, by type and source",
      labelNames: ["type", "source"],
      registers,
    });
    this.commandsRejected = new Counter({
      name: "tally_commands_rejected_total",
      help: "Commands the SKU actors rejected, by type, source and reason",
      labelNames: ["type", "source", "reason"],
      registers,
    });
    this.batchSize = new Histogram({
      name: "tally_apply_batch_size",
      help: "Commands decided per ledger transaction",
      buckets: [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2000, 5000],
      registers,
    });
    this.applyLatency = new Histogram({
      name: "tally_apply_batch_seconds",
      help: "Time to decide and commit one batch (decode to commit)",
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers,
    });
    this.reservations = new Counter({
      name: "tally_reservations_total",
      help: "Reservation requests and transitions, by outcome",
      labelNames: ["outcome"],
      registers,
    });
    this.reservationLatency = new Histogram({
      name: "tally_reservation_decision_seconds",
      help: "Time from a reservation request to the actors' decision",
      labelNames: ["outcome"],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    this.posTransactions = new Counter({
      name: "tally_pos_transactions_total",
      help: "POS transactions received, by outcome and transport",
      labelNames: ["outcome", "via"],
      registers,
    });
    this.httpDuration = new Histogram({
      name: "tally_http_request_seconds",
      help: "HTTP request duration by route and status",
      labelNames: ["method", "route", "status"],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10],
      registers,
    });
    this.endToEnd = new Histogram({
      name: "tally_end_to_end_seconds",
      help: "Source time of a change (commit time at the source database, POS transaction time, API request) to its availability published on NATS, by source system",
      labelNames: ["source"],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
      registers,
    });
    registerQueueGauges(deps, registers);
    if (deps.worker) registerWorkerGauges(deps.worker, registers);
    registerWebhookGauges(deps.webhooks ?? [], registers);
    registerCdcGauges(deps.readers ?? [], registers);
  }

  /** Listens for the relay's latency reports (whichever process holds the relay lease). */
  start(): void {
    this.#relaySub = this.deps.nats.nc.subscribe(this.deps.topology.relaySubject, {
      callback: (err, msg) => {
        if (err) return;
        try {
          this.observeRelay(msg.json<RelayRound>());
        } catch {
          // not a relay report
        }
      },
    });
  }

  stop(): void {
    this.#relaySub?.unsubscribe();
    this.#relaySub = null;
  }

  observeRelay(round: RelayRound): void {
    if (!round || typeof round.latencyMs !== "object" || round.latencyMs === null) return;
    for (const [source, list] of Object.entries(round.latencyMs)) {
      if (!Array.isArray(list)) continue;
      for (const ms of list) if (typeof ms === "number" && Number.isFinite(ms)) this.endToEnd.observe({ source }, ms / 1000);
    }
  }

  /** The reservation service's metrics hooks, on this registry. */
  forReservations(): ReservationMetrics {
    return {
      observeDecision: (outcome, seconds) => this.reservationLatency.observe({ outcome }, seconds),
      count: (outcome) => this.reservations.inc({ outcome }),
      commandPublished: (type, source) => this.commandsIn.inc({ type, source }),
    };
  }

  /** Counts a worker's outcome message. */
  observeBatch(batch: OutcomeBatch): void {
    if (batch.part === 0) {
      this.batchSize.observe(batch.size);
      this.applyLatency.observe(batch.applyMs / 1000);
    }
    for (const o of batch.outcomes) {
      const source = o.source ?? "unknown";
      if (o.status === "applied") this.commandsApplied.inc({ type: o.type, source });
      else this.commandsRejected.inc({ type: o.type, source, reason: o.reason ?? "unknown" });
    }
  }
}

type Registers = Array<Registry>;

/** Dead letters waiting, and this process's partition leases. */
function registerQueueGauges(deps: MetricsDeps, registers: Registers): void {
  new Gauge({
    name: "tally_dlq_messages",
    help: "Dead letters waiting in the dead-letter stream",
    registers,
    async collect() {
      const info = await deps.nats.jsm.streams.info(deps.topology.dlqStream).catch(() => null); // NATS down: the gauge keeps its last value
      if (info) this.set(info.state.messages);
    },
  });
  new Gauge({
    name: "tally_leases_held",
    help: "Partition leases held by this process's worker",
    registers,
    collect() {
      this.set(deps.worker?.held().length ?? 0);
    },
  });
}

/** This process's worker's running totals, read at scrape. */
function registerWorkerGauges(worker: Worker, registers: Registers): void {
  const workerCounter = (name: string, help: string, read: () => number) =>
    new Gauge({
      name,
      help,
      registers,
      collect() {
        this.set(read());
      },
    });
  workerCounter("tally_worker_batches", "Batches committed by this process's worker", () => worker.metrics.batches);
  workerCounter("tally_worker_dead_lettered", "Undecodable commands dead-lettered by this process's worker", () => worker.metrics.deadLettered);
  workerCounter("tally_worker_duplicates_skipped", "Commands skipped as already applied", () => worker.metrics.skippedDuplicate);
  workerCounter(
    "tally_worker_holds_refused",
    "Reserves this process's worker refused for want of stock (each published as hold_refused)",
    () => worker.metrics.holdsRefused,
  );
  workerCounter("tally_worker_retries", "Batch retries after a failure", () => worker.metrics.retries);
  workerCounter(
    "tally_worker_unstorable",
    "Commands the ledger refused to store (a data error), dead-lettered so their partition moved on",
    () => worker.metrics.poisoned,
  );
  workerCounter(
    "tally_worker_skipped_by_operator",
    "Stream messages dead-lettered because an operator skipped them (tally dlq skip)",
    () => worker.metrics.skipped,
  );
  workerCounter(
    "tally_worker_stream_resets",
    "Times the commands stream was a new one and the checkpoints were reset to it",
    () => worker.metrics.streamResets,
  );
  workerCounter(
    "tally_worker_stuck_partitions",
    "Partitions held by this process's worker that are stuck (5 or more failed attempts in a row)",
    () => worker.statuses().filter((s) => s.stuck).length,
  );
  workerCounter(
    "tally_worker_duplicate_retries",
    "Batches decided again with the lookup of decided command ids after their optimistic commit met a duplicate",
    () => worker.metrics.duplicateRetries,
  );
  workerCounter(
    "tally_worker_delivery_gaps",
    "Times a partition's consumer skipped deliveries (lost in transit) and the partition re-read from its checkpoint",
    () => worker.metrics.deliveryGaps,
  );
}

/** This process's webhook senders' running totals, per channel. */
function registerWebhookGauges(webhooks: ReadonlyArray<WebhookDispatcher>, registers: Registers): void {
  new Gauge({
    name: "tally_webhook_events",
    help: "Webhook activity of this process's senders (running totals), per channel: deliveries, items, failed_attempts, dead_lettered",
    labelNames: ["channel", "kind"],
    registers,
    collect() {
      for (const w of webhooks) {
        const m = w.metrics;
        this.set({ channel: w.channel, kind: "deliveries" }, m.deliveries);
        this.set({ channel: w.channel, kind: "items" }, m.items);
        this.set({ channel: w.channel, kind: "failed_attempts" }, m.failedAttempts);
        this.set({ channel: w.channel, kind: "dead_lettered" }, m.deadLettered);
      }
    },
  });
}

/** The CDC sources this process reads: slot lag, changes, dead letters, skips, halts, publication gaps. */
function registerCdcGauges(readers: ReadonlyArray<SourceReader>, registers: Registers): void {
  /** A gauge per source; a source whose reading is null has no sample. */
  const perSource = (name: string, help: string, read: (r: SourceReader) => number | null) =>
    new Gauge({
      name,
      help,
      labelNames: ["source"],
      registers,
      collect() {
        for (const r of readers) {
          const value = read(r);
          if (value !== null) this.set({ source: r.name }, value);
        }
      },
    });
  perSource(
    "tally_cdc_slot_lag_bytes",
    "WAL the source's replication slot holds back, per CDC source read by this process",
    (r) => r.metrics.lagBytes,
  );
  /** A gauge per source and key (a table, a reason) of a running total the reader keeps by that key. */
  const perSourceAnd = (keyLabel: string, name: string, help: string, read: (r: SourceReader) => Readonly<Record<string, number>>) =>
    new Gauge({
      name,
      help,
      labelNames: ["source", keyLabel],
      registers,
      collect() {
        for (const r of readers) for (const [key, n] of Object.entries(read(r))) this.set({ source: r.name, [keyLabel]: key }, n);
      },
    });
  perSourceAnd(
    "table",
    "tally_cdc_changes",
    "Source changes read (a running total: rate() gives events per second), per CDC source and table",
    (r) => r.metrics.changesByTable,
  );
  perSourceAnd(
    "reason",
    "tally_cdc_dead_letters",
    "Changes dead-lettered (running total), per CDC source and reason",
    (r) => r.metrics.deadLettersByReason,
  );
  perSource("tally_cdc_skipped_non_inventory", "Non-inventory lines skipped (running total), per CDC source", (r) => r.metrics.skipped);
  perSource(
    "tally_cdc_source_halted",
    "1 while a CDC source is halted because its replication slot was lost or replaced (tally source resnapshot), else 0",
    (r) => (r.metrics.halted === null ? 0 : 1),
  );
  perSource(
    "tally_cdc_publication_missing_tables",
    "Captured tables missing from the CDC source's publication, whose changes are not captured (tally source enable)",
    (r) => r.metrics.publicationMissing.length,
  );
}
