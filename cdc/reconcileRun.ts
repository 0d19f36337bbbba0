/**
 * One reconciliation, the same for `tally reconcile`, the cdc role's schedule and a re-snapshot: a
 * consistent comparison, and with `apply`, per (SKU, location) what the source's system of record
 * says — where the ERP wins, `count` commands (reason `reconciliation`, deterministic ids); where
 * Tally wins, a correction to the source through `correctSource` (reported as "to write back" while
 * no write-back is wired). A source with a `writeBack` gets both hooks from it unless the caller
 * gives its own: what is still on its way to the ERP is no drift, and Tally's corrections go to the
 * ERP's inbound interface like every other movement Tally writes back.
 */
import type { JetStreamClient, JetStreamManager } from "@nats-io/jetstream";
import type { Sql } from "postgres";
import type { Command } from "../src/contract/index.ts";
import { createLogger, type Logger, sleep } from "../src/platform/index.ts";
import { publishCommands, type Topology } from "../src/wire/index.ts";
import type { Crosswalk } from "./crosswalk.ts";
import {
  type Drift,
  type InFlight,
  ReconcileError,
  type ReconcileReport,
  readSourceOnHand,
  reconcileReport,
  reconciliationCommands,
  waitForLedger,
} from "./reconcile.ts";
import { ownerAt, type ResolvedSource } from "./sources.ts";
import { writeBackCorrection, writeBackInFlight, writeBackMark } from "./writeBackReconcile.ts";

/**
 * Writes a correction to the source where Tally is the system of record: the source's on-hand of
 * (sku, location) must move by −diff (diff = source − ledger, as reported). Resolves once the
 * correction is handed to the write-back (it reaches the source asynchronously).
 */
export type CorrectSource = (sku: string, location: string, diff: number) => Promise<void>;

export interface ReconcileRunOptions {
  readonly ledger: Sql;
  /** A connection to the source's database. */
  readonly sourceSql: Sql;
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  readonly topology: Topology;
  readonly source: ResolvedSource;
  readonly crosswalk: Crosswalk;
  readonly tolerance: number;
  readonly timeoutMs: number;
  /** Act on the drift as the system of record says; without it nothing is written anywhere. */
  readonly apply: boolean;
  readonly inFlight?: InFlight;
  readonly correctSource?: CorrectSource;
  /** Ends waiting for the ledger early (a stopping cdc role). */
  readonly signal?: AbortSignal;
  /** Rows of the on-hand table that could not be compared (unmapped), for the caller to say so. */
  readonly onUnmapped?: (count: number, firstError: string) => void;
  readonly log?: Logger;
}

/** The write-back's legs not in the ERP yet: its position read before the ERP snapshot, the inbound rows inside it. */
const writeBackPending =
  (ledger: Sql): InFlight =>
  async (source) => {
    const mark = await writeBackMark(ledger, source.name);
    return (tx) => writeBackInFlight(ledger, source, tx, mark);
  };

/** The hooks of a run: the caller's, or the source's write-back's when it has one. */
function hooks(opts: ReconcileRunOptions): { inFlight?: InFlight; correctSource?: (key: string) => CorrectSource } {
  const { source, ledger } = opts;
  const log = opts.log ?? createLogger("reconcile", "warn");
  const inFlight = opts.inFlight ?? (source.writeBack ? writeBackPending(ledger) : undefined);
  const given = opts.correctSource;
  const correctSource = given
    ? () => given
    : source.writeBack
      ? (key: string) => async (sku: string, location: string, diff: number) =>
          writeBackCorrection(ledger, source, { sku, location, qty: -diff, key }, log)
      : undefined;
  return { ...(inFlight ? { inFlight } : {}), ...(correctSource ? { correctSource } : {}) };
}

export interface ReconcileOutcome {
  /** Before anything was applied. */
  readonly report: ReconcileReport;
  /** Counts recorded where the ERP wins (empty without apply). */
  readonly applied: ReadonlyArray<Command>;
  /** Tally-wins pairs handed to `correctSource`. */
  readonly corrected: ReadonlyArray<Drift>;
  /** Tally-wins pairs left for the write-back (no `correctSource` given). */
  readonly toWriteBack: ReadonlyArray<Drift>;
  /** The comparison again after applying (null without apply or without drift). */
  readonly after: ReconcileReport | null;
}

async function measure(opts: ReconcileRunOptions, inFlight: InFlight | undefined) {
  const { ledger, source, crosswalk, timeoutMs } = opts;
  const read = await readSourceOnHand(opts.sourceSql, source, crosswalk, inFlight);
  if (read.unmapped.length > 0) opts.onUnmapped?.(read.unmapped.length, read.unmapped[0]!.error);
  await waitForLedger({
    ledger,
    jsm: opts.jsm,
    topology: opts.topology,
    source: source.name,
    lsn: read.lsn,
    timeoutMs,
    ...(opts.signal ? { signal: opts.signal } : {}),
  });
  return { read, report: await reconcileReport(ledger, read, source.name, opts.tolerance) };
}

const sameDrift = (a: Drift, b: Drift): boolean =>
  a.sku === b.sku && a.location === b.location && a.source === b.source && a.ledger === b.ledger && a.inFlight === b.inFlight;

/** Waits for every command's outcome in the ledger; a rejection or a missing outcome fails the run. */
async function awaitOutcomes(sql: Sql, ids: ReadonlyArray<string>, timeoutMs: number, signal?: AbortSignal): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const rows = await sql<Array<{ id: string; status: string; reason: string | null }>>`
      select command_id as id, status, reason from command_outcomes where command_id = any(${sql.array([...ids])}::text[])`;
    const rejected = rows.filter((r) => r.status !== "applied");
    if (rejected.length > 0)
      throw new ReconcileError(`reconcile --apply: ${rejected.length} counts were rejected (${rejected[0]!.id}: ${rejected[0]!.reason})`);
    if (rows.length === ids.length) return;
    if (Date.now() > deadline)
      throw new ReconcileError(
        `reconcile --apply: ${ids.length - rows.length} counts had no outcome after ${timeoutMs / 1000}s (is a worker running?)`,
      );
    if (signal?.aborted) throw new ReconcileError("reconciliation stopped while waiting for its counts' outcomes");
    await sleep(100, signal);
  }
}

/** Reads, compares, and with `apply` acts on the drift that a second consistent read confirms, pair by pair. */
export async function runReconciliation(opts: ReconcileRunOptions): Promise<ReconcileOutcome> {
  const { source } = opts;
  const { inFlight, correctSource } = hooks(opts);
  const first = await measure(opts, inFlight);
  const none = { applied: [], corrected: [], toWriteBack: [], after: null };
  if (!opts.apply || first.report.drift.length === 0) return { report: first.report, ...none };
  // A source transaction that commits while the read takes its snapshot, before its WAL position is read, is applied
  // to the ledger but missing from the read: for a moment it looks like drift. Only drift that a second consistent
  // read finds unchanged is acted on, so apply never undoes a movement that was merely in flight.
  const second = await measure(opts, inFlight);
  const confirmed = second.report.drift.filter((d) => first.report.drift.some((f) => sameDrift(d, f)));
  const erpWins = confirmed.filter((d) => ownerAt(source.systemOfRecord, d.location) === "erp");
  const tallyWins = confirmed.filter((d) => ownerAt(source.systemOfRecord, d.location) === "tally");
  const commands = reconciliationCommands({ ...second.report, drift: erpWins }, new Date().toISOString());
  if (commands.length > 0) {
    await publishCommands(opts.js, opts.topology, commands);
    await awaitOutcomes(
      opts.ledger,
      commands.map((c) => c.id),
      opts.timeoutMs,
      opts.signal,
    );
  }
  const corrected: Array<Drift> = [];
  // Keyed by the position compared at: a run that finds the same drift there again writes nothing twice.
  const correct = correctSource?.(second.read.lsn);
  if (correct) for (const d of tallyWins) await correct(d.sku, d.location, d.diff).then(() => corrected.push(d));
  const after = await reconcileReport(opts.ledger, second.read, source.name, opts.tolerance);
  return { report: first.report, applied: commands, corrected, toWriteBack: correct ? [] : tallyWins, after };
}

/** Σ|diff| over a report's pairs: the `tally_reconcile_drift_units` of a run. */
export const driftUnits = (drift: ReadonlyArray<Drift>): number => drift.reduce((n, d) => n + Math.abs(d.diff), 0);

export type RunTrigger = "schedule" | "resnapshot";

/** Runs kept per source in `reconcile_runs`. */
const KEPT_RUNS = 1000;

/** Records a run (or its failure) and trims the source's history to the last KEPT_RUNS. */
export async function recordRun(
  ledger: Sql,
  run: { source: string; trigger: RunTrigger; startedAt: Date; tolerance: number; outcome?: ReconcileOutcome; error?: string },
): Promise<void> {
  const o = run.outcome;
  const drift = o?.report.drift ?? [];
  await ledger.begin(async (tx) => {
    await tx`
      insert into reconcile_runs (source, trigger, started_at, at_lsn, tolerance, drift_pairs, drift_units, drift, applied, corrected, to_write_back, error)
      values (${run.source}, ${run.trigger}, ${run.startedAt}, ${o?.report.at ?? null}, ${run.tolerance}, ${drift.length}, ${driftUnits(drift)},
              ${tx.json(drift as never)}, ${o?.applied.length ?? 0}, ${tx.json((o?.corrected ?? []) as never)},
              ${tx.json((o?.toWriteBack ?? []) as never)}, ${run.error ?? null})`;
    await tx`
      delete from reconcile_runs
       where source = ${run.source}
         and run_id <= (select run_id from reconcile_runs where source = ${run.source} order by run_id desc offset ${KEPT_RUNS} limit 1)`;
  });
}

/** A recorded run, as the dashboard and `tally source resnapshot` show it. */
export interface RecordedRun {
  readonly source: string;
  readonly trigger: RunTrigger;
  readonly startedAt: string;
  readonly finishedAt: string;
  readonly at: string | null;
  readonly tolerance: number;
  readonly pairs: number;
  readonly units: number;
  readonly drift: ReadonlyArray<Drift>;
  readonly applied: number;
  readonly corrected: ReadonlyArray<Drift>;
  readonly toWriteBack: ReadonlyArray<Drift>;
  readonly error: string | null;
}

const RUN_COLUMNS = `source, trigger, to_char(started_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') as "startedAt",
  to_char(finished_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') as "finishedAt", at_lsn as at, tolerance,
  drift_pairs as pairs, drift_units::float8 as units, drift, applied, corrected, to_write_back as "toWriteBack", error`;

/** The last run of each source (or of the one named), newest first. */
export async function lastRuns(ledger: Sql, source?: string): Promise<Array<RecordedRun>> {
  return ledger.unsafe<Array<RecordedRun>>(
    `select distinct on (source) ${RUN_COLUMNS} from reconcile_runs ${source !== undefined ? "where source = $1" : ""}
      order by source, run_id desc`,
    source !== undefined ? [source] : [],
  );
}

/** The first run of `trigger` for `source` recorded after run `afterRunId` (ids grow; clocks of other hosts do not matter), if any. */
export async function runSince(ledger: Sql, source: string, trigger: RunTrigger, afterRunId: string): Promise<RecordedRun | null> {
  const [run] = await ledger.unsafe<Array<RecordedRun>>(
    `select ${RUN_COLUMNS} from reconcile_runs where source = $1 and trigger = $2 and run_id > $3::bigint order by run_id limit 1`,
    [source, trigger, afterRunId],
  );
  return run ?? null;
}
