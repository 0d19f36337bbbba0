/**
 * The money journals of POS transactions (revenue, sales tax, tenders, gift cards) in `gl_journals` /
 * `gl_lines`. The posting rules live with the POS ingest (src/ingest/posMoney.ts); this file only
 * writes what it is given, in the caller's transaction: the ingest posts a transaction's journal in the
 * same Postgres transaction as its claim in `pos_transactions`, so a journal exists exactly when the
 * transaction was claimed, and a retry (which finds the claim) posts nothing again.
 */
import type { Sql, TransactionSql } from "postgres";

/** One line of a money journal: exactly one of debit and credit is positive. */
export interface MoneyJournalLine {
  readonly account: string;
  readonly debit: bigint;
  readonly credit: bigint;
  readonly sku: string | null;
  readonly qty: number | null;
  readonly unit: string | null;
  readonly memo: string | null;
}

/** The money journal of one POS transaction; its lines must balance (the table's trigger refuses them otherwise). */
export interface MoneyJournal {
  /** `money:<store>:<terminal>:<transaction id>`. */
  readonly journalId: string;
  /** When the transaction happened (ISO-8601 with a zone): its business date is this instant's date in `timeZone`. */
  readonly occurredAt: string;
  readonly timeZone: string;
  readonly currency: string;
  readonly costCenter: string;
  /** `pos_sale`, `pos_return` or `pos_exchange` (both in one transaction). */
  readonly movement: string;
  /** The transaction's key (`<store>:<terminal>:<id>`). */
  readonly sourceRef: string;
  readonly lines: ReadonlyArray<MoneyJournalLine>;
}

/** The prefix of a POS transaction's money journal id; the rest is the transaction's key. */
export const MONEY_JOURNAL_PREFIX = "money:";

/**
 * Posts money journals, each at most once (a journal id already there is left alone, lines and all).
 * All journals and all their lines go in one statement each way, so the balance trigger sees every
 * journal whole. Returns the ids it posted.
 */
export async function postMoneyJournals(sql: Sql | TransactionSql, journals: ReadonlyArray<MoneyJournal>): Promise<ReadonlyArray<string>> {
  const js = journals.filter((j) => j.lines.length > 0);
  if (js.length === 0) return [];
  const lines = js.flatMap((j) => j.lines.map((l, i) => ({ journalId: j.journalId, line: i + 1, costCenter: j.costCenter, ...l })));
  const col = <T>(f: (l: (typeof lines)[number]) => T) => lines.map(f);
  const rows = await (sql as Sql)<Array<{ journal_id: string }>>`
    with dated as (
      select u.journal_id, (u.occurred_at at time zone u.time_zone)::date as business_date, u.currency, u.movement, u.source_ref
        from unnest(${sql.array(js.map((j) => j.journalId))}::text[], ${sql.array(js.map((j) => j.occurredAt))}::timestamptz[],
                    ${sql.array(js.map((j) => j.timeZone))}::text[], ${sql.array(js.map((j) => j.currency))}::text[],
                    ${sql.array(js.map((j) => j.movement))}::text[], ${sql.array(js.map((j) => j.sourceRef))}::text[])
             as u(journal_id, occurred_at, time_zone, currency, movement, source_ref)
    ), src as (
      select d.*, tally_gl_posting_date(d.business_date) as posted_on from dated d
    ), journals as (
      insert into gl_journals (journal_id, kind, business_date, posted_on, period, currency, command_id, movement, source_system, source_ref)
      select journal_id, 'pos_money', business_date, posted_on, to_char(posted_on, 'YYYY-MM'), currency, null, movement, 'pos', source_ref from src
      on conflict (journal_id) do nothing
      returning journal_id
    ), lines as (
      insert into gl_lines (journal_id, line, account, cost_center, debit, credit, sku, qty, unit, memo)
      select l.journal_id, l.line, l.account, l.cost_center, l.debit, l.credit, l.sku, l.qty, l.unit, l.memo
        from unnest(${sql.array(col((l) => l.journalId))}::text[], ${sql.array(col((l) => l.line))}::smallint[],
                    ${sql.array(col((l) => l.account))}::text[], ${sql.array(col((l) => l.costCenter))}::text[],
                    ${sql.array(col((l) => l.debit.toString()))}::numeric[], ${sql.array(col((l) => l.credit.toString()))}::numeric[],
                    ${sql.array(col((l) => l.sku))}::text[], ${sql.array(col((l) => (l.qty === null ? null : String(l.qty))))}::bigint[],
                    ${sql.array(col((l) => l.unit))}::text[], ${sql.array(col((l) => l.memo))}::text[])
             as l(journal_id, line, account, cost_center, debit, credit, sku, qty, unit, memo)
       where l.journal_id in (select journal_id from journals)
    )
    select journal_id from journals`;
  return rows.map((r) => r.journal_id);
}
