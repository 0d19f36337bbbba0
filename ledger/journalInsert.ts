/**
 * The one way a GL journal gets into `gl_journals` / `gl_lines`: the inventory poster
 * (journalPoster.ts), the POS money journals (posMoneyJournal.ts) and test fixtures all insert
 * through `insertJournals`. Each journal posts on `tally_gl_posting_date` of its business date (the
 * next open period's first day when its month is closed), at most once: a journal id already there is
 * left alone, lines and all. All journals and all their lines go in one statement, so the balance
 * trigger sees every journal whole.
 *
 * The posting date is worked out once per distinct business date (a batch has a few), not per journal:
 * the same answer, since the first call takes the periods lock that a closing waits for, so no period
 * closes between the calls. A journal's date is joined to it with a left join: a date without one
 * (null) leaves posted_on null, refused by the table, rather than dropping the journal unseen.
 *
 * The arrays are unnested in select lists, not in `from unnest(a, b, …)`: there, each array is first
 * copied into a tuplestore of its own (nineteen per call, a tenth of the statement's time); in a
 * select list they are read in step, row by row (the same rows: a shorter array gives nulls in both).
 */
import type { ISql } from "postgres";

/** One line: exactly one of debit and credit is positive (integer minor units). */
export interface JournalInsertLine {
  /** 1, 2, … within the journal. */
  readonly line: number;
  readonly account: string;
  readonly costCenter: string;
  readonly debit: bigint | number;
  readonly credit: bigint | number;
  readonly sku: string | null;
  readonly qty: bigint | number | null;
  readonly unit: string | null;
  /** The ledger entry behind the line (ledger_entries leg of `commandId`), if any. */
  readonly leg: number | null;
  readonly memo: string | null;
}

export interface JournalInsert {
  readonly journalId: string;
  readonly kind: "inventory" | "pos_money" | "reconciliation";
  /** YYYY-MM-DD (ledger/journal.ts businessDate). */
  readonly businessDate: string;
  readonly currency: string;
  readonly commandId: string | null;
  readonly movement: string;
  readonly sourceSystem: string;
  readonly sourceRef: string;
  readonly lines: ReadonlyArray<JournalInsertLine>;
}

/** Inserts the journals not there yet; returns those inserted, with the date each posted on (YYYY-MM-DD). */
export async function insertJournals(sql: ISql, journals: ReadonlyArray<JournalInsert>): Promise<Array<{ journalId: string; postedOn: string }>> {
  if (journals.length === 0) return [];
  const col = <T, V>(rows: ReadonlyArray<T>, f: (r: T) => V) => sql.array(rows.map(f) as never);
  const j = journals;
  const lines = journals.flatMap((journal) => journal.lines.map((line) => ({ id: journal.journalId, ...line })));
  const rows = await sql<Array<{ journal_id: string; posted_on: string }>>`
    with j as (
      select unnest(${col(j, (r) => r.journalId)}::text[]) as journal_id,
             unnest(${col(j, (r) => r.kind)}::text[]) as kind,
             unnest(${col(j, (r) => r.businessDate)}::date[]) as business_date,
             unnest(${col(j, (r) => r.currency)}::text[]) as currency,
             unnest(${col(j, (r) => r.commandId)}::text[]) as command_id,
             unnest(${col(j, (r) => r.movement)}::text[]) as movement,
             unnest(${col(j, (r) => r.sourceSystem)}::text[]) as source_system,
             unnest(${col(j, (r) => r.sourceRef)}::text[]) as source_ref
    ), dates as materialized (
      select d.business_date, p.posted_on, to_char(p.posted_on, 'YYYY-MM') as period
        from (select distinct business_date from j) d
        cross join lateral tally_gl_posting_date(d.business_date) as p(posted_on)
    ), journals as (
      insert into gl_journals (journal_id, kind, business_date, posted_on, period, currency, command_id, movement, source_system, source_ref)
      select j.journal_id, j.kind, j.business_date, d.posted_on, d.period, j.currency, j.command_id, j.movement, j.source_system, j.source_ref
        from j left join dates d on d.business_date = j.business_date
      on conflict (journal_id) do nothing
      returning journal_id, posted_on
    ), lines as (
      insert into gl_lines (journal_id, line, account, cost_center, debit, credit, sku, qty, unit, leg, memo)
      select l.* from (
        select unnest(${col(lines, (r) => r.id)}::text[]) as journal_id,
               unnest(${col(lines, (r) => r.line)}::smallint[]) as line,
               unnest(${col(lines, (r) => r.account)}::text[]) as account,
               unnest(${col(lines, (r) => r.costCenter)}::text[]) as cost_center,
               unnest(${col(lines, (r) => String(r.debit))}::numeric[]) as debit,
               unnest(${col(lines, (r) => String(r.credit))}::numeric[]) as credit,
               unnest(${col(lines, (r) => r.sku)}::text[]) as sku,
               unnest(${col(lines, (r) => (r.qty === null ? null : String(r.qty)))}::bigint[]) as qty,
               unnest(${col(lines, (r) => r.unit)}::text[]) as unit,
               unnest(${col(lines, (r) => r.leg)}::smallint[]) as leg,
               unnest(${col(lines, (r) => r.memo)}::text[]) as memo
      ) l
       where l.journal_id in (select journal_id from journals)
    )
    select journal_id, to_char(posted_on, 'YYYY-MM-DD') as posted_on from journals`;
  return rows.map((r) => ({ journalId: r.journal_id, postedOn: r.posted_on }));
}
