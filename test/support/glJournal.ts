/** A GL journal inserted directly, as a poster would: the journal and all its lines in one statement. */
import type { Sql } from "../../src/platform/db.ts";
import { eventually } from "./tally.ts";

export interface FixtureLine {
  readonly account: string;
  readonly costCenter?: string;
  /** Minor units; exactly one of debit and credit is given (and positive). */
  readonly debit?: bigint | number;
  readonly credit?: bigint | number;
  readonly sku?: string;
  readonly qty?: bigint | number;
  readonly unit?: string;
  readonly memo?: string;
}

export interface FixtureJournal {
  readonly journalId: string;
  /** YYYY-MM-DD; posts on `tally_gl_posting_date` of it (the next open period's first day when its month is closed). */
  readonly businessDate: string;
  readonly kind?: "inventory" | "pos_money" | "reconciliation";
  readonly currency?: string;
  readonly commandId?: string | null;
  readonly movement?: string;
  readonly sourceSystem?: string;
  readonly sourceRef?: string;
  readonly lines: ReadonlyArray<FixtureLine>;
}

/** Inserts the journal and its lines (numbered from 1) in one statement; returns the date it posted on. */
export async function insertJournal(sql: Sql, j: FixtureJournal): Promise<string> {
  const lines = JSON.stringify(
    j.lines.map((l, i) => ({
      line: i + 1,
      account: l.account,
      cost_center: l.costCenter ?? "DC1",
      debit: String(l.debit ?? 0),
      credit: String(l.credit ?? 0),
      sku: l.sku ?? null,
      qty: l.qty === undefined ? null : String(l.qty),
      unit: l.unit ?? null,
      memo: l.memo ?? null,
    })),
  );
  const [{ posted_on }] = await sql<[{ posted_on: string }]>`
    with d as (
      select ${j.businessDate}::text::date as business_date, tally_gl_posting_date(${j.businessDate}::text::date) as posted_on
    ), journal as (
      insert into gl_journals (journal_id, kind, business_date, posted_on, period, currency, command_id, movement, source_system, source_ref)
      select ${j.journalId}, ${j.kind ?? "inventory"}, d.business_date, d.posted_on, to_char(d.posted_on, 'YYYY-MM'), ${j.currency ?? "EUR"},
             ${j.commandId === undefined ? j.journalId : j.commandId}, ${j.movement ?? "receive"}, ${j.sourceSystem ?? "test"},
             ${j.sourceRef ?? j.journalId}
        from d
      returning journal_id, posted_on
    ), lines as (
      insert into gl_lines (journal_id, line, account, cost_center, debit, credit, sku, qty, unit, memo)
      select journal.journal_id, t.line, t.account, t.cost_center, t.debit, t.credit, t.sku, t.qty, t.unit, t.memo
        from journal,
             jsonb_to_recordset(${lines}::text::jsonb) as t(line smallint, account text, cost_center text, debit numeric, credit numeric,
                                                       sku text, qty bigint, unit text, memo text)
    )
    select to_char(posted_on, 'YYYY-MM-DD') as posted_on from journal`;
  return posted_on;
}

/**
 * Waits until every journal committed so far is below the cluster's snapshot horizon: a reader of
 * the journal (export, pages) only passes journals whose transaction is older than the oldest one
 * still running anywhere on the server, and other test files share it (a long transaction there
 * holds the horizon back a moment).
 */
export async function horizonPast(sql: Sql): Promise<void> {
  await eventually("the snapshot horizon to pass the journals committed so far", async () => {
    const [{ past }] = await sql<[{ past: boolean }]>`
      select coalesce(pg_snapshot_xmin(pg_current_snapshot()) > (select max(txid) from gl_journals), true) as past`;
    return past;
  });
}
