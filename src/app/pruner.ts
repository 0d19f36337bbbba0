/**
 * The pruning job of the worker role: every TALLY_PRUNE_INTERVAL_MS it applies each retention horizon
 * (README "Retention") in bounded batches — command outcomes past the idempotency horizon to the archive,
 * archived outcomes, answered POS claims, finished reservations and closed holds past theirs, catalog
 * history past TALLY_CATALOG_HISTORY_RETENTION_SECONDS, and dead letters past their age or over the DLQ's
 * size (each logged and counted) with the payloads no letter names any more. Each round first makes sure
 * the ledger's partitions of this month and the next two exist, so a worker running across a month end
 * never writes into the default partition. One process prunes at a time (a Postgres advisory lock); the
 * others find it taken and wait for their next round.
 */
import type { JetStreamClient, JetStreamManager } from "@nats-io/jetstream";
import {
  archiveOutcomes,
  ensureLedgerPartitions,
  outcomesHorizon,
  pruneCatalogChannelVersions,
  pruneCatalogDue,
  pruneCatalogVersions,
  pruneClosedHolds,
  pruneDeadLetterPayloads,
  pruneEndedPrices,
  pruneOutcomesArchive,
  prunePosClaims,
  pruneReservations,
} from "../../ledger/index.ts";
import { LongRunningService, sleep, type Logger, type RetentionSettings, type Sql } from "../platform/index.ts";
import { expireDeadLetters, type Topology } from "../wire/index.ts";

/** The tables the pruner removes rows from (`command_outcomes`: moved to `command_outcomes_archive`). */
export const PRUNED_TABLES = [
  "command_outcomes",
  "command_outcomes_archive",
  "pos_transactions",
  "reservations",
  "holds",
  "catalog_channel_versions",
  "catalog_versions",
  "catalog_due",
  "catalog_prices",
  "dead_letter_payloads",
] as const;
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
  /** The ledger's monthly partitions of this month and the next `LEDGER_MONTHS_AHEAD` that exist after the round (null: not run). */
  readonly ledgerPartitions: number | null;
}

/** How many months past the current one the pruner keeps a ledger partition ready for. */
export const LEDGER_MONTHS_AHEAD = 2;

/** A payload outlives the DLQ's age horizon by this much before it counts as an orphan (publish retries, clocks). */
const PAYLOAD_MARGIN_MS = 24 * 3600 * 1000;

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
      if (!got)
        return { ran: false, rows: zero(), deadLettersExpired: { age: 0, size: 0 }, outcomesCutoff: null, heldBy: null, ledgerPartitions: null };
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
    // First: the month after this one must have its partition before it starts, restart or not. A
    // failure here is loud but does not stop the pruning (an entry still has the default partition).
    const ledgerPartitions = await ensureLedgerPartitions(sql, LEDGER_MONTHS_AHEAD, now).catch((err: unknown) => {
      this.metrics.failures++;
      this.opts.log.error(
        { err },
        "could not create the ledger partitions of the months ahead; a month without one is written to the default partition and cannot be archived",
      );
      return null;
    });
    const horizon = await outcomesHorizon(sql, this.opts.duplicateWindowMs, now);
    const rows = zero();
    // Reservations first: an outcome a pruned reservation's line named is archived in the same round.
    rows.reservations = await this.#batches((n) => pruneReservations(sql, before(r.reservationRetentionMs), n), signal);
    rows.holds = await this.#batches((n) => pruneClosedHolds(sql, before(r.reservationRetentionMs), n), signal);
    rows.command_outcomes = await this.#batches((n) => archiveOutcomes(sql, horizon.cutoff, n), signal);
    if (r.outcomesArchiveRetentionMs > 0)
      rows.command_outcomes_archive = await this.#batches((n) => pruneOutcomesArchive(sql, before(r.outcomesArchiveRetentionMs), n), signal);
    rows.pos_transactions = await this.#batches((n) => prunePosClaims(sql, before(r.posClaimRetentionMs), n), signal);
    // Catalog history: acknowledged channel versions first, then the versions no channel names; never
    // a version a CDC reader may still re-read (its source transaction must stay a duplicate).
    const catalogCutoff = before(r.catalogHistoryRetentionMs);
    const catalogVersionsCutoff = new Date(Math.min(catalogCutoff.getTime(), horizon.cutoff.getTime()));
    rows.catalog_channel_versions = await this.#batches((n) => pruneCatalogChannelVersions(sql, catalogCutoff, n), signal);
    rows.catalog_versions = await this.#batches((n) => pruneCatalogVersions(sql, catalogVersionsCutoff, n), signal);
    rows.catalog_due = await this.#batches((n) => pruneCatalogDue(sql, catalogCutoff, n), signal);
    rows.catalog_prices = await this.#batches((n) => pruneEndedPrices(sql, catalogCutoff, n), signal);
    const deadLettersExpired = await this.#expireDeadLetters(now, signal);
    // Only after the letters past the age horizon are gone: a payload older than it (and the margin) is nobody's.
    if (!signal?.aborted)
      rows.dead_letter_payloads = await this.#batches((n) => pruneDeadLetterPayloads(sql, before(r.dlqMaxAgeMs + PAYLOAD_MARGIN_MS), n), signal);
    return { ran: true, rows, deadLettersExpired, outcomesCutoff: horizon.cutoff, heldBy: horizon.heldBy, ledgerPartitions };
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
