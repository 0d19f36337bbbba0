import { createWriteStream } from "node:fs";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import {
  GL_EXPORT_CURSOR_PATTERN,
  assertEnvironment,
  glDate,
  openGlExport,
  businessDate,
  trialBalance,
  type GlExportSummary,
  type TrialBalance,
} from "../../../ledger/index.ts";
import { fromMinorUnits } from "../../contract/index.ts";
import { loadSettings, loadTallyConfig, requireDatabaseUrl } from "../../platform/index.ts";
import { EXIT, type OutputFormat, UsageError, withPostgres, writeJson } from "./common.ts";

/** `--from`, `--to`, `--at`: a calendar date, or a usage error naming the option. */
function dateOption(name: string, v: string): string {
  if (glDate(v) === null) throw new UsageError(`--${name}: expected a date YYYY-MM-DD (years 0001 to 9999), got ${JSON.stringify(v)}`);
  return v;
}

export interface GlExportOptions {
  readonly from: string;
  readonly to: string;
  readonly format: "csv" | "ndjson";
  readonly output?: string;
  readonly cursor?: string;
}

/**
 * `tally gl export`: the journal lines posted from `--from` to `--to` (both inclusive), to stdout or
 * `--output`. The summary (count, debit and credit totals, the cursor of the next increment) is one
 * JSON line on stderr, never in the file.
 */
export async function exportJournal(opts: GlExportOptions): Promise<number> {
  const from = dateOption("from", opts.from);
  const to = dateOption("to", opts.to);
  if (to < from) throw new UsageError(`--to: ${to} is before --from ${from}`);
  if (opts.cursor !== undefined && !GL_EXPORT_CURSOR_PATTERN.test(opts.cursor))
    throw new UsageError(`--cursor: expected the nextCursor of a previous gl export (digits), got ${JSON.stringify(opts.cursor)}`);
  const settings = loadSettings();
  return withPostgres(requireDatabaseUrl(settings), "tally-gl-export", 2, async (sql) => {
    await assertEnvironment(sql, settings.env);
    const out = opts.output !== undefined ? createWriteStream(opts.output) : process.stdout;
    const exp = await openGlExport(sql, opts.format, { from, to, cursor: opts.cursor });
    let summary: GlExportSummary | null = null;
    const source = Readable.from(
      (async function* () {
        summary = yield* exp.chunks;
      })(),
    );
    try {
      await pipeline(source, out, { end: opts.output !== undefined });
    } finally {
      await exp.close();
    }
    process.stderr.write(`${JSON.stringify(summary)}\n`);
    return EXIT.ok;
  });
}

export interface TrialBalanceOptions {
  readonly at?: string;
  readonly format: OutputFormat;
}

/** `tally gl trial-balance`: each account's debit, credit and balance over the lines posted on or before `--at`. */
export async function printTrialBalance(opts: TrialBalanceOptions): Promise<number> {
  const at = opts.at === undefined ? undefined : dateOption("at", opts.at);
  const settings = loadSettings();
  const { finance } = await loadTallyConfig(settings.configFile);
  return withPostgres(requireDatabaseUrl(settings), "tally-gl-trial-balance", 1, async (sql) => {
    await assertEnvironment(sql, settings.env);
    const day = at ?? businessDate(new Date(), finance.timeZone);
    const tb = await trialBalance(sql, day);
    if (opts.format === "json") writeJson(tb);
    else process.stdout.write(trialBalanceTable(tb, day, finance.currency));
    return EXIT.ok;
  });
}

/** The trial balance for people: amounts in the currency's decimals, right-aligned, with a total row. */
function trialBalanceTable(tb: TrialBalance, at: string, currency: string): string {
  const money = (v: number | string | bigint) => fromMinorUnits(BigInt(v), currency);
  const rows = [
    ["account", "debit", "credit", "balance"],
    ...tb.accounts.map((a) => [a.account, money(a.debit), money(a.credit), money(a.balance)]),
    ["total", money(tb.debit), money(tb.credit), money(BigInt(tb.debit) - BigInt(tb.credit))],
  ];
  const widths = [0, 1, 2, 3].map((i) => Math.max(...rows.map((r) => r[i]!.length)));
  const line = (r: ReadonlyArray<string>) => r.map((v, i) => (i === 0 ? v.padEnd(widths[i]!) : v.padStart(widths[i]!))).join("  ");
  const title = `trial balance at ${at} (${currency}, lines posted on or before that day)`;
  const body = tb.accounts.length === 0 ? ["(no journal lines posted yet)"] : rows.map(line);
  return `${[title, ...body].join("\n")}\n`;
}
