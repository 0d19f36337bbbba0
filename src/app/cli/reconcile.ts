import { Effect } from "effect";
import type { Drift, ReconcileReport } from "../../../cdc/index.ts";
import type { Command } from "../../contract/index.ts";
import { loadSettings, loadTallyConfig, type Settings, type Sql } from "../../platform/index.ts";
import { fromPromise, runEffect } from "../roles.ts";
import { EXIT, ledgerResource, natsTopology, withPostgres } from "./common.ts";

export interface ReconcileOptions {
  readonly format: "table" | "csv" | "json";
  readonly tolerance: number;
  readonly apply?: boolean;
  readonly timeout: number;
}

type Nats = Effect.Effect.Success<ReturnType<typeof natsTopology>>;
type Cdc = typeof import("../../../cdc/index.ts");

const COLUMNS = ["sku", "location", "ledger", "source", "diff"] as const;

/** An RFC 4180 field: quoted when it holds a comma, a quote or a line break. */
const csvField = (v: string | number) => {
  const s = String(v);
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
};

function driftCsv(drift: ReadonlyArray<Drift>): string {
  return [COLUMNS.join(","), ...drift.map((d) => COLUMNS.map((c) => csvField(d[c])).join(","))].map((l) => `${l}\r\n`).join("");
}

export function driftTable(report: ReconcileReport, tolerance: number): string {
  const head = `source ${report.source} at ${report.at}: `;
  if (report.drift.length === 0) return `${head}no drift${tolerance > 0 ? ` above ${tolerance}` : ""}\n`;
  const rows = [[...COLUMNS] as Array<string>, ...report.drift.map((d) => COLUMNS.map((c) => String(d[c])))];
  const widths = COLUMNS.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  const line = (r: ReadonlyArray<string>) => r.map((v, i) => (i < 2 ? v.padEnd(widths[i]!) : v.padStart(widths[i]!))).join("  ");
  return `${head}${report.drift.length} (SKU, location) pairs differ (diff = source − ledger)\n${rows.map(line).join("\n")}\n`;
}

interface Outcome {
  readonly report: ReconcileReport;
  readonly applied?: ReadonlyArray<Command>;
  readonly toWriteBack?: ReadonlyArray<Drift>;
  /** Tally-wins pairs whose correction was written to the source through its write-back. */
  readonly corrected?: ReadonlyArray<Drift>;
  readonly after?: ReconcileReport;
}

async function reconcileWith(cdc: Cdc, settings: Settings, name: string, opts: ReconcileOptions, ledger: Sql, nats: Nats): Promise<Outcome> {
  const config = await loadTallyConfig(settings.configFile);
  const source = cdc.findSource(config, name, settings.env);
  const crosswalk = await cdc.Crosswalk.load(ledger);
  const o = await withPostgres(source.url, "tally-reconcile", 1, (sourceSql) =>
    cdc.runReconciliation({
      ledger,
      sourceSql,
      js: nats.js,
      jsm: nats.jsm,
      topology: nats.topology,
      source,
      crosswalk,
      tolerance: opts.tolerance,
      timeoutMs: opts.timeout * 1000,
      apply: opts.apply === true,
      onUnmapped: (count, error) => process.stderr.write(`reconcile: ${count} rows of ${source.onHand?.table} not compared (${error})\n`),
    }),
  );
  if (o.toWriteBack.length > 0) {
    const locations = [...new Set(o.toWriteBack.map((d) => d.location))].sort().join(", ");
    process.stderr.write(
      `reconcile: Tally is the system of record for ${name} at ${locations}: ${o.toWriteBack.length} pairs to write back to the source ` +
        `(reported, not changed in the ledger; the source has no writeBack to send corrections through)\n`,
    );
  }
  if (!o.after) return { report: o.report };
  return { report: o.report, applied: o.applied, toWriteBack: o.toWriteBack, corrected: o.corrected, after: o.after };
}

function print(outcome: Outcome, opts: ReconcileOptions): void {
  const { report, applied, after } = outcome;
  if (opts.format === "json") {
    const extra = applied
      ? {
          applied: applied.map((c) => ({ id: c.id, sku: c.sku, location: c.location, qty: (c as { qty: number }).qty })),
          toWriteBack: outcome.toWriteBack ?? [],
          corrected: outcome.corrected ?? [],
          after: after!.drift,
        }
      : {};
    process.stdout.write(`${JSON.stringify({ ...report, ...extra }, null, 2)}\n`);
  } else if (opts.format === "csv") process.stdout.write(driftCsv(after?.drift ?? report.drift));
  else {
    process.stdout.write(driftTable(report, opts.tolerance));
    if (applied)
      process.stdout.write(
        `applied ${applied.length} counts (reason reconciliation)${outcome.corrected?.length ? `, ${outcome.corrected.length} corrections written back to the source (Tally wins)` : ""}` +
          `${outcome.toWriteBack?.length ? `, ${outcome.toWriteBack.length} pairs to write back (Tally wins)` : ""}; ` +
          `after: ${driftTable(after!, opts.tolerance)}`,
      );
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
