/**
 * The one way a GL journal gets into `gl_journals` / `gl_lines`: the inventory poster
 * (journalPoster.ts), the POS money journals (posMoneyJournal.ts) and test fixtures all insert
 * through `insertJournals`. Each journal posts on `tally_gl_posting_date` of its business date (the
 * next open period's first day when its month is closed), at most once: a journal id already there is
 * left alone, lines and all. All journals and all their lines go in one statement, so the balance
 * trigger sees every journal whole.
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
      select * from unnest(
        ${col(j, (r) => r.journalId)}::text[],
        ${col(j, (r) => r.kind)}::text[],
        ${col(j, (r) => r.businessDate)}::date[],
        ${col(j, (r) => r.currency)}::text[],
        ${col(j, (r) => r.commandId)}::text[],
        ${col(j, (r) => r.movement)}::text[],
        ${col(j, (r) => r.sourceSystem)}::text[],
        ${col(j, (r) => r.sourceRef)}::text[]
      ) as t(journal_id, kind, business_date, currency, command_id, movement, source_system, source_ref)
    ), dated as materialized (
      select j.*, tally_gl_posting_date(j.business_date) as posted_on from j
    ), journals as (
      insert into gl_journals (journal_id, kind, business_date, posted_on, period, currency, command_id, movement, source_system, source_ref)
      select journal_id, kind, business_date, posted_on, to_char(posted_on, 'YYYY-MM'), currency, command_id, movement, source_system, source_ref
        from dated
      on conflict (journal_id) do nothing
      returning journal_id, posted_on
    ), lines as (
      insert into gl_lines (journal_id, line, account, cost_center, debit, credit, sku, qty, unit, leg, memo)
      select l.* from unnest(
        ${col(lines, (r) => r.id)}::text[],
        ${col(lines, (r) => r.line)}::smallint[],
        ${col(lines, (r) => r.account)}::text[],
        ${col(lines, (r) => r.costCenter)}::text[],
        ${col(lines, (r) => String(r.debit))}::numeric[],
        ${col(lines, (r) => String(r.credit))}::numeric[],
        ${col(lines, (r) => r.sku)}::text[],
        ${col(lines, (r) => (r.qty === null ? null : String(r.qty)))}::bigint[],
        ${col(lines, (r) => r.unit)}::text[],
        ${col(lines, (r) => r.leg)}::smallint[],
        ${col(lines, (r) => r.memo)}::text[]
      ) as l(journal_id, line, account, cost_center, debit, credit, sku, qty, unit, leg, memo)
       where l.journal_id in (select journal_id from journals)
    )
    select journal_id, to_char(posted_on, 'YYYY-MM-DD') as posted_on from journals`;
  return rows.map((r) => ({ journalId: r.journal_id, postedOn: r.posted_on }));
}
