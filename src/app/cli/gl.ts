/** `tally gl close` and `tally gl periods`: GL periods (the export and trial balance live beside them). */
import { userInfo } from "node:os";
import { PERIOD_PATTERN, assertEnvironment, closePeriod, closedPeriods } from "../../../ledger/index.ts";
import { loadSettings, requireDatabaseUrl, type Sql } from "../../platform/index.ts";
import { EXIT, type OutputFormat, UsageError, withPostgres, writeJson } from "./common.ts";

/** The ledger database of the settings' environment, for the span of `use`. */
async function withLedger<A>(application: string, use: (sql: Sql) => Promise<A>): Promise<A> {
  const settings = loadSettings();
  return withPostgres(requireDatabaseUrl(settings), application, 1, async (sql) => {
    await assertEnvironment(sql, settings.env);
    return use(sql);
  });
}

/** Who closes a period when `--by` is not given: the operating-system user. */
function currentUser(): string {
  try {
    return userInfo().username;
  } catch {
    return process.env.USER ?? "unknown"; // no passwd entry (a container's arbitrary uid): the environment's name, if any
  }
}

/**
 * `tally gl close <period>`: closes the month (idempotent). Movements dated in it that are not posted
 * yet post on the first day of the next open period, keeping their business date.
 */
export async function close(period: string, opts: { readonly by?: string }): Promise<number> {
  if (!PERIOD_PATTERN.test(period))
    throw new UsageError(`gl close: <period>: expected a month as YYYY-MM (like 2026-11), got ${JSON.stringify(period)}`);
  const by = opts.by ?? currentUser();
  const closed = await withLedger("tally-gl-close", (sql) => closePeriod(sql, period, by));
  process.stdout.write(closed ? `gl close: period ${period} closed (by ${by})\n` : `gl close: period ${period} was already closed\n`);
  return EXIT.ok;
}

/** `tally gl periods`: the closed periods. */
export async function periods(opts: { readonly format: OutputFormat }): Promise<number> {
  const list = await withLedger("tally-gl-periods", (sql) => closedPeriods(sql));
  if (opts.format === "json") {
    writeJson({ closed: list.map((p) => ({ period: p.period, closedAt: p.closedAt.toISOString(), closedBy: p.closedBy })) });
    return EXIT.ok;
  }
  if (list.length === 0) process.stdout.write("gl periods: no period is closed\n");
  else process.stdout.write(`${list.map((p) => `${p.period}  closed ${p.closedAt.toISOString()} by ${p.closedBy}`).join("\n")}\n`);
  return EXIT.ok;
}
