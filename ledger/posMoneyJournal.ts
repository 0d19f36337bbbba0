/**
 * The money journals of POS transactions (revenue, sales tax, tenders, gift cards) in `gl_journals` /
 * `gl_lines`. The posting rules live with the POS ingest (src/ingest/posMoney.ts); this file only
 * writes what it is given, in the caller's transaction: the ingest posts a transaction's journal in the
 * same Postgres transaction as its claim in `pos_transactions`, so a journal exists exactly when the
 * transaction was claimed, and a retry (which finds the claim) posts nothing again.
 */
import type { ISql } from "postgres";
import { businessDate } from "./journal.ts";
import { insertJournals } from "./journalInsert.ts";

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

/** Posts money journals, each at most once (journalInsert.ts); returns the ids it posted. */
export async function postMoneyJournals(sql: ISql, journals: ReadonlyArray<MoneyJournal>): Promise<ReadonlyArray<string>> {
  const posted = await insertJournals(
    sql,
    journals
      .filter((j) => j.lines.length > 0)
      .map((j) => ({
        journalId: j.journalId,
        kind: "pos_money",
        businessDate: businessDate(new Date(j.occurredAt), j.timeZone),
        currency: j.currency,
        commandId: null,
        movement: j.movement,
        sourceSystem: "pos",
        sourceRef: j.sourceRef,
        lines: j.lines.map((l, i) => ({ ...l, line: i + 1, costCenter: j.costCenter, leg: null })),
      })),
  );
  return posted.map((p) => p.journalId);
}
