/**
 * The pruning job of the worker role: every TALLY_PRUNE_INTERVAL_MS it applies each retention horizon
 * (README "Retention") in bounded batches — command outcomes past the idempotency horizon to the archive,
 * archived outcomes, answered POS claims, finished reservations and closed holds past theirs, and dead
 * letters past their age or over the DLQ's size (each logged and counted). One process prunes at a time
 * (a Postgres advisory lock); the others find it taken and wait for their next round.
 */
import type { JetStreamClient, JetStreamManager } from "@nats-io/jetstream";
import { archiveOutcomes, outcomesHorizon, pruneClosedHolds, pruneOutcomesArchive, prunePosClaims, pruneReservations } from "../../ledger/index.ts";
import { LongRunningService, sleep, type Logger, type RetentionSettings, type Sql } from "../platform/index.ts";
import { expireDeadLetters, type Topology } from "../wire/index.ts";

/** The tables the pruner removes rows from (`command_outcomes`: moved to `command_outcomes_archive`). */
export const PRUNED_TABLES = ["command_outcomes", "command_outcomes_archive", "pos_transactions", "reservations", "holds"] as const;
export type PrunedTable = (typeof PRUNED_TABLES)[number];

/** What one round removed. */
export interface PruneRound {
  /** False when another process held the pruning lock: nothing was done. */
  readonly ran: boolean;
  readonly rows: Readonly<Record<PrunedTable, number>>;
  readonly deadLettersExpired: { readonly age: number; readonly size: number };
  /** Outcomes recorded before this were archived; `heldBy` names the CDC source whose slot position set it. */
  readonly outcomesCutoff: Date | null;
  readonly heldBy: string | null;
}

export interface PrunerOptions {
  readonly sql: Sql;
  readonly nats: { readonly js: JetStreamClient; readonly jsm: JetStreamManager };
  readonly topology: Topology;
  readonly duplicateWindowMs: number;
  readonly retention: RetentionSettings;
  readonly log: Logger;
  /** The clock (tests move it forward). */
  readonly now?: () => Date;
}

export class Pruner extends LongRunningService {
  /** Running totals since start, for the metrics. */
  readonly metrics = {
    rows: Object.fromEntries(PRUNED_TABLES.map((t) => [t, 0])) as Record<PrunedTable, number>,
    deadLettersExpired: { age: 0, size: 0 },
    rounds: 0,
    failures: 0,
    /** When the last round ended (ms since the epoch), null before the first. */
    lastRunAt: null as number | null,
    /** How far back the outcomes horizon reached in the last round, in seconds. */
    outcomesHorizonSeconds: null as number | null,
  };

  constructor(readonly opts: PrunerOptions) {
    super(); // nothing starts here
  }

  protected async run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      try {
        await this.prune(signal);
      } catch (err) {
        // The next round tries again: every horizon is a cutoff, so a round missed removes nothing twice and loses nothing.
        this.metrics.failures++;
        this.opts.log.warn({ err }, "pruning failed; the next round tries again");
      }
      await sleep(this.opts.retention.pruneIntervalMs, signal);
    }
  }

  /** One round: every horizon, in bounded batches, under the pruning lock (skipped when another process holds it). */
  async prune(signal?: AbortSignal): Promise<PruneRound> {
    const { sql, log } = this.opts;
    const now = this.opts.now?.() ?? new Date();
    const lock = await sql.reserve();
    try {
      const [{ got }] = await lock<[{ got: boolean }]>`select pg_try_advisory_lock(hashtext('tally_prune')) as got`;
      if (!got) return { ran: false, rows: zero(), deadLettersExpired: { age: 0, size: 0 }, outcomesCutoff: null, heldBy: null };
      try {
        const round = await this.#round(now, signal);
        this.#record(round, now);
        const removed = Object.values(round.rows).reduce((a, b) => a + b, 0);
        if (removed > 0 || round.deadLettersExpired.age + round.deadLettersExpired.size > 0)
          log.info(
            { rows: round.rows, deadLettersExpired: round.deadLettersExpired, outcomesCutoff: round.outcomesCutoff, heldBy: round.heldBy },
            "pruned",
          );
        return round;
      } finally {
        await lock`select pg_advisory_unlock(hashtext('tally_prune'))`.catch(() => {}); // the lock ends with its connection anyway
      }
    } finally {
      lock.release();
    }
  }

  async #round(now: Date, signal?: AbortSignal): Promise<PruneRound> {
    const { sql, retention: r } = this.opts;
    const before = (ms: number) => new Date(now.getTime() - ms);
    const horizon = await outcomesHorizon(sql, this.opts.duplicateWindowMs, now);
    const rows = zero();
    // Reservations first: an outcome a pruned reservation's line named is archived in the same round.
    rows.reservations = await this.#batches((n) => pruneReservations(sql, before(r.reservationRetentionMs), n), signal);
    rows.holds = await this.#batches((n) => pruneClosedHolds(sql, before(r.reservationRetentionMs), n), signal);
    rows.command_outcomes = await this.#batches((n) => archiveOutcomes(sql, horizon.cutoff, n), signal);
    if (r.outcomesArchiveRetentionMs > 0)
      rows.command_outcomes_archive = await this.#batches((n) => pruneOutcomesArchive(sql, before(r.outcomesArchiveRetentionMs), n), signal);
    rows.pos_transactions = await this.#batches((n) => prunePosClaims(sql, before(r.posClaimRetentionMs), n), signal);
    const deadLettersExpired = await this.#expireDeadLetters(now, signal);
    return { ran: true, rows, deadLettersExpired, outcomesCutoff: horizon.cutoff, heldBy: horizon.heldBy };
  }

  /** Runs `batch` until one comes back short (or the service stops); the rows removed. */
  async #batches(batch: (limit: number) => Promise<number>, signal?: AbortSignal): Promise<number> {
    const limit = this.opts.retention.pruneBatch;
    let total = 0;
    for (;;) {
      const n = await batch(limit);
      total += n;
      if (n < limit || signal?.aborted) return total;
    }
  }

  async #expireDeadLetters(now: Date, signal?: AbortSignal): Promise<{ age: number; size: number }> {
    const { sql, nats, topology, retention: r, log } = this.opts;
    const counts = { age: 0, size: 0 };
    for (;;) {
      const expired = await expireDeadLetters({
        js: nats.js,
        jsm: nats.jsm,
        sql,
        topology,
        maxAgeMs: r.dlqMaxAgeMs,
        maxBytes: r.dlqMaxBytes,
        now,
        limit: r.pruneBatch,
        log,
      });
      for (const e of expired) counts[e.cause]++;
      // Counted as they go: a later batch that fails must not lose the count of those already gone.
      for (const e of expired) this.metrics.deadLettersExpired[e.cause]++;
      if (expired.length < r.pruneBatch || signal?.aborted) return counts;
    }
  }

  #record(round: PruneRound, now: Date): void {
    for (const t of PRUNED_TABLES) this.metrics.rows[t] += round.rows[t];
    this.metrics.rounds++;
    this.metrics.lastRunAt = Date.now();
    this.metrics.outcomesHorizonSeconds = round.outcomesCutoff === null ? null : (now.getTime() - round.outcomesCutoff.getTime()) / 1000;
  }
}

const zero = (): Record<PrunedTable, number> => Object.fromEntries(PRUNED_TABLES.map((t) => [t, 0])) as Record<PrunedTable, number>;
