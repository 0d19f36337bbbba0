/**
 * GL periods (calendar months): closing one, and the list of those closed. A journal whose business
 * date falls in a closed period posts on the first day of the next open one, keeping its business
 * date (tally_gl_posting_date, migrations/0072_gl.sql).
 */
import type { Sql } from "postgres";

/** A period as the GL writes it: YYYY-MM. */
export const PERIOD_PATTERN = /^[0-9]{4}-(0[1-9]|1[0-2])$/;

/**
 * Closes `period` (YYYY-MM) on behalf of `by`: waits for postings in flight (the periods lock), then
 * records it. True when this call closed it, false when it was closed already.
 */
export async function closePeriod(sql: Sql, period: string, by: string): Promise<boolean> {
  if (!PERIOD_PATTERN.test(period)) throw new RangeError(`period: expected YYYY-MM, got ${JSON.stringify(period)}`);
  const [{ closed }] = await sql<[{ closed: boolean }]>`select tally_gl_close_period(${period}, ${by}) as closed`;
  return closed;
}

export interface ClosedPeriod {
  readonly period: string;
  readonly closedAt: Date;
  readonly closedBy: string;
}

/** The closed periods, oldest first. */
export async function closedPeriods(sql: Sql): Promise<Array<ClosedPeriod>> {
  const rows = await sql<Array<{ period: string; closed_at: Date; closed_by: string }>>`
    select period, closed_at, closed_by from gl_periods order by period`;
  return rows.map((r) => ({ period: r.period, closedAt: r.closed_at, closedBy: r.closed_by }));
}
