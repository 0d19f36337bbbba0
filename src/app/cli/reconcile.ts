import { Effect } from "effect";
import type { Drift, ReconcileReport } from "../../../cdc/index.ts";
import type { Command } from "../../contract/index.ts";
import { loadSettings, loadTallyConfig, type Settings, type Sql, sleep } from "../../platform/index.ts";
import { publishCommands } from "../../wire/index.ts";
import { fromPromise, runEffect } from "../roles.ts";
import { CommandError, EXIT, ledgerResource, natsTopology, withPostgres } from "./common.ts";

export interface ReconcileOptions {
  readonly format: "table" | "csv" | "json";
  readonly tolerance: number;
  readonly apply?: boolean;
  readonly timeout: number;
}

type Nats = Effect.Effect.Success<ReturnType<typeof natsTopology>>;
type Cdc = typeof import("../../../cdc/index.ts");
type Source = ReturnType<Cdc["findSource"]>;
type Crosswalk = Awaited<ReturnType<Cdc["Crosswalk"]["load"]>>;

const COLUMNS = ["sku", "location", "ledger", "source", "diff"] as const;

/** An RFC 4180 field: quoted when it holds a comma, a quote or a line break. */
const csvField = (v: string | number) => {
  const s = String(v);
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
};

function driftCsv(drift: ReadonlyArray<Drift>): string {
  return [COLUMNS.join(","), ...drift.map((d) => COLUMNS.map((c) => csvField(d[c])).join(","))].map((l) => `${l}\r\n`).join("");
}

function driftTable(report: ReconcileReport, tolerance: number): string {
  const head = `source ${report.source} at ${report.at}: `;
  if (report.drift.length === 0) return `${head}no drift${tolerance > 0 ? ` above ${tolerance}` : ""}\n`;
  const rows = [[...COLUMNS] as Array<string>, ...report.drift.map((d) => COLUMNS.map((c) => String(d[c])))];
  const widths = COLUMNS.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  const line = (r: ReadonlyArray<string>) => r.map((v, i) => (i < 2 ? v.padEnd(widths[i]!) : v.padStart(widths[i]!))).join("  ");
  return `${head}${report.drift.length} (SKU, location) pairs differ (diff = source − ledger)\n${rows.map(line).join("\n")}\n`;
}

/** Waits for every command's outcome in the ledger; a rejection or a missing outcome fails the run. */
async function awaitOutcomes(sql: Sql, ids: ReadonlyArray<string>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const rows = await sql<Array<{ id: string; status: string; reason: string | null }>>`
      select command_id as id, status, reason from command_outcomes where command_id = any(${sql.array([...ids])}::text[])`;
    const rejected = rows.filter((r) => r.status !== "applied");
    if (rejected.length > 0)
      throw new CommandError(`reconcile --apply: ${rejected.length} counts were rejected (${rejected[0]!.id}: ${rejected[0]!.reason})`);
    if (rows.length === ids.length) return;
    if (Date.now() > deadline)
      throw new CommandError(
        `reconcile --apply: ${ids.length - rows.length} counts had no outcome after ${timeoutMs / 1000}s (is a worker running?)`,
      );
    await sleep(100);
  }
}

interface Outcome {
  readonly report: ReconcileReport;
  readonly applied?: ReadonlyArray<Command>;
  readonly after?: ReconcileReport;
}

/** Reads the source, waits for the ledger to reach its position, compares; with `apply`, records counts and compares again. */
/** One consistent comparison: the source read in one snapshot, the ledger once it has caught up with that snapshot's position. */
async function measure(cdc: Cdc, source: Source, crosswalk: Crosswalk, ledger: Sql, nats: Nats, opts: ReconcileOptions) {
  const read = await withPostgres(source.url, "tally-reconcile", 1, (sql) => cdc.readSourceOnHand(sql, source, crosswalk));
  if (read.unmapped.length > 0)
    process.stderr.write(`reconcile: ${read.unmapped.length} rows of ${source.onHand?.table} not compared (${read.unmapped[0]!.error})\n`);
  const timeoutMs = opts.timeout * 1000;
  await cdc.waitForLedger({ ledger, jsm: nats.jsm, topology: nats.topology, source: source.name, lsn: read.lsn, timeoutMs });
  return { read, report: await cdc.reconcileReport(ledger, read, source.name, opts.tolerance) };
}

const sameDrift = (a: Drift, b: Drift): boolean =>
  a.sku === b.sku && a.location === b.location && String(a.source) === String(b.source) && String(a.ledger) === String(b.ledger);

async function reconcileWith(cdc: Cdc, settings: Settings, name: string, opts: ReconcileOptions, ledger: Sql, nats: Nats): Promise<Outcome> {
  const config = await loadTallyConfig(settings.configFile);
  const source = cdc.findSource(config, name, settings.env);
  const crosswalk = await cdc.Crosswalk.load(ledger);
  const { report } = await measure(cdc, source, crosswalk, ledger, nats, opts);
  if (!opts.apply || report.drift.length === 0) return { report };
  if (source.systemOfRecord === "tally") {
    process.stderr.write(
      `reconcile: Tally is the system of record for ${name}: drift reported only (writing it back to the source is not implemented yet)\n`,
    );
    return { report };
  }
  // A source transaction that commits while the read takes its snapshot, before its WAL position is read, is applied
  // to the ledger but missing from the read: for a moment it looks like drift. Only drift that a second consistent
  // read finds unchanged is corrected, so --apply never undoes a movement that was merely in flight.
  const second = await measure(cdc, source, crosswalk, ledger, nats, opts);
  const confirmed = { ...second.report, drift: second.report.drift.filter((d) => report.drift.some((f) => sameDrift(d, f))) };
  const commands = cdc.reconciliationCommands(confirmed, new Date().toISOString());
  await publishCommands(nats.js, nats.topology, commands);
  await awaitOutcomes(
    ledger,
    commands.map((c) => c.id),
    opts.timeout * 1000,
  );
  return { report, applied: commands, after: await cdc.reconcileReport(ledger, second.read, name, opts.tolerance) };
}

function print(outcome: Outcome, opts: ReconcileOptions): void {
  const { report, applied, after } = outcome;
  if (opts.format === "json") {
    const extra = applied
      ? { applied: applied.map((c) => ({ id: c.id, sku: c.sku, location: c.location, qty: (c as { qty: number }).qty })), after: after!.drift }
      : {};
    process.stdout.write(`${JSON.stringify({ ...report, ...extra }, null, 2)}\n`);
  } else if (opts.format === "csv") process.stdout.write(driftCsv(after?.drift ?? report.drift));
  else {
    process.stdout.write(driftTable(report, opts.tolerance));
    if (applied) process.stdout.write(`applied ${applied.length} counts (reason reconciliation); after: ${driftTable(after!, opts.tolerance)}`);
  }
}

/**
 * `tally reconcile <source>`: the source's on-hand against the ledger's at one consistent position;
 * exit 3 when a pair differs by more than the tolerance (after `--apply`: when one still does).
 */
export async function reconcile(name: string, opts: ReconcileOptions): Promise<number> {
  const settings = loadSettings();
  const cdc = await import("../../../cdc/index.ts");
  const outcome = await runEffect(
    Effect.scoped(
      Effect.gen(function* () {
        const ledger = yield* ledgerResource(settings, "tally-reconcile");
        const nats = yield* natsTopology(settings, "tally-reconcile");
        return yield* fromPromise(() => reconcileWith(cdc, settings, name, opts, ledger, nats));
      }),
    ),
  );
  print(outcome, opts);
  return (outcome.after ?? outcome.report).drift.length > 0 ? EXIT.mismatch : EXIT.ok;
}
