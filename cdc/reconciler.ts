/**
 * The cdc role's reconciliation of one source (one with an `onHand` declaration): every
 * `reconcileEvery` (report only unless `reconcileApply`), and once after each re-snapshot (applying
 * per systemOfRecord, which is what a re-snapshot now does to on-hand). Each run is recorded in
 * `reconcile_runs`; the last one's drift is this service's metric.
 */
import type { JetStreamClient, JetStreamManager } from "@nats-io/jetstream";
import type { Sql } from "postgres";
import type { Logger } from "pino";
import { backoffDelay, connectPostgres, LongRunningService, retry, sleep } from "../src/platform/index.ts";
import type { Topology } from "../src/wire/index.ts";
import { Crosswalk } from "./crosswalk.ts";
import type { InFlight } from "./reconcile.ts";
import { type CorrectSource, driftUnits, lastRuns, type ReconcileOutcome, recordRun, type RunTrigger, runReconciliation } from "./reconcileRun.ts";
import type { ResolvedSource } from "./sources.ts";

export interface ReconcilerOptions {
  readonly source: ResolvedSource;
  readonly ledger: Sql;
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  readonly topology: Topology;
  readonly log: Logger;
  /** Runs only while this is true: the process that streams the source reconciles it (one per cluster). */
  readonly active: () => boolean;
  /** Longest wait for CDC and the workers to reach a run's source position, default 120 s. */
  readonly timeoutMs?: number;
  /** How often a pending re-snapshot request and the schedule are checked, default 1 s. */
  readonly pollMs?: number;
  readonly inFlight?: InFlight;
  readonly correctSource?: CorrectSource;
}

/** The last run this process knows of (its own, or the last recorded when it started). */
export interface LastRun {
  readonly finishedAt: Date;
  readonly pairs: number;
  readonly units: number;
}

export class Reconciler extends LongRunningService {
  /** Null until a run finished (or one was found recorded): no metric then. */
  last: LastRun | null = null;
  #lastScheduled: number | null = null;

  constructor(readonly opts: ReconcilerOptions) {
    super(); // nothing starts here
  }

  get name(): string {
    return this.opts.source.name;
  }

  protected async run(signal: AbortSignal): Promise<void> {
    const { source, log } = this.opts;
    const sourceSql = connectPostgres(source.url, { max: 1, application: `tally-reconcile-${source.name}` });
    try {
      while (!signal.aborted) {
        await retry(() => this.#tick(sourceSql, signal), {
          signal,
          backoff: (attempt) => backoffDelay(attempt, 1000, 60_000),
          onError: (err, attempt, delayMs) => log.warn({ err, attempt, delayMs }, "reconciliation check failed; retrying"),
        });
        await sleep(this.opts.pollMs ?? 1000, signal);
      }
    } finally {
      await sourceSql.end({ timeout: 5 });
    }
  }

  async #tick(sourceSql: Sql, signal: AbortSignal): Promise<void> {
    const { ledger, source } = this.opts;
    if (this.#lastScheduled === null) await this.#loadHistory();
    if (!this.opts.active()) return;
    // Compared as text: a timestamptz has microseconds, and a JS Date (which postgres.js makes of a timestamptz
    // parameter, even one given as a string) only milliseconds, so the request would never be cleared.
    const [row] = await ledger<[{ requested: string | null } | undefined]>`
      select reconcile_requested_at::text as requested from cdc_sources where source = ${source.name}`;
    if (row?.requested) {
      await this.#runOnce(sourceSql, "resnapshot", true, signal);
      // A request made while this run went on stays (the next tick serves it).
      await ledger`
        update cdc_sources set reconcile_requested_at = null
         where source = ${source.name} and reconcile_requested_at::text = ${row.requested}`;
      return;
    }
    if (source.reconcileEveryMs !== null && Date.now() - this.#lastScheduled! >= source.reconcileEveryMs) {
      this.#lastScheduled = Date.now();
      await this.#runOnce(sourceSql, "schedule", source.reconcileApply, signal);
    }
  }

  /** The schedule continues from the last recorded run (a restart does not run at once), and the metric shows it. */
  async #loadHistory(): Promise<void> {
    const { ledger, source } = this.opts;
    const [latest] = await lastRuns(ledger, source.name);
    if (latest && this.last === null) this.last = { finishedAt: new Date(latest.finishedAt), pairs: latest.pairs, units: latest.units };
    const [row] = await ledger<[{ at: Date | null }]>`
      select max(started_at) as at from reconcile_runs where source = ${source.name} and trigger = 'schedule'`;
    this.#lastScheduled = row.at?.getTime() ?? Date.now();
  }

  /** One run, recorded whatever its end: a failed run is recorded with its error (and retried only at the next schedule). */
  async #runOnce(sourceSql: Sql, trigger: RunTrigger, apply: boolean, signal: AbortSignal): Promise<void> {
    const { ledger, source, log } = this.opts;
    const startedAt = new Date();
    const tolerance = source.reconcileTolerance;
    let outcome: ReconcileOutcome;
    try {
      outcome = await runReconciliation({
        ledger,
        sourceSql,
        js: this.opts.js,
        jsm: this.opts.jsm,
        topology: this.opts.topology,
        source,
        crosswalk: await Crosswalk.load(ledger),
        tolerance,
        timeoutMs: this.opts.timeoutMs ?? 120_000,
        apply,
        signal,
        ...(this.opts.inFlight ? { inFlight: this.opts.inFlight } : {}),
        ...(this.opts.correctSource ? { correctSource: this.opts.correctSource } : {}),
        onUnmapped: (count, error) => log.warn({ count, error }, "reconciliation: on-hand rows not compared (unmapped)"),
        log,
      });
    } catch (err) {
      if (signal.aborted) return; // stopping: nothing to record, the next start runs again
      log.warn({ err, trigger }, "reconciliation failed");
      await recordRun(ledger, { source: source.name, trigger, startedAt, tolerance, error: (err as Error).message ?? String(err) });
      return;
    }
    await recordRun(ledger, { source: source.name, trigger, startedAt, tolerance, outcome });
    const { drift } = outcome.report;
    this.last = { finishedAt: new Date(), pairs: drift.length, units: driftUnits(drift) };
    log.info(
      {
        trigger,
        at: outcome.report.at,
        pairs: drift.length,
        units: this.last.units,
        applied: outcome.applied.length,
        toWriteBack: outcome.toWriteBack.length,
      },
      drift.length > 0 ? "reconciliation: drift found" : "reconciliation: no drift",
    );
  }
}
