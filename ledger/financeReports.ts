import type { Sql } from "postgres";
import { moneyJson } from "./entryRow.ts";

/** One account's totals in a trial balance: amounts as JSON carries them (numbers, decimal strings past 2^53). */
export interface TrialBalanceAccount {
  readonly account: string;
  readonly debit: number | string;
  readonly credit: number | string;
  /** debit − credit. */
  readonly balance: number | string;
}

/** `tally gl trial-balance --format json` and GET /v1/gl/trial-balance. */
export interface TrialBalance {
  readonly accounts: ReadonlyArray<TrialBalanceAccount>;
  readonly debit: number | string;
  readonly credit: number | string;
}

const json = (n: bigint) => moneyJson(String(n)) as number | string;

/**
 * The balance of each account over the journal lines posted on or before `at` (YYYY-MM-DD), accounts
 * in byte order. One statement, so one snapshot: the totals are of whole journals, and since every
 * journal balances, so do they.
 */
export async function trialBalance(sql: Sql, at: string): Promise<TrialBalance> {
  const rows = await sql<Array<{ account: string; debit: string; credit: string }>>`
    select l.account, sum(l.debit)::text as debit, sum(l.credit)::text as credit
      from gl_lines l
      join gl_journals j on j.journal_id = l.journal_id
     where j.posted_on <= ${at}::text::date
     group by l.account
     order by l.account collate "C"`;
  let debit = 0n;
  let credit = 0n;
  const accounts = rows.map((r) => {
    const d = BigInt(r.debit);
    const c = BigInt(r.credit);
    debit += d;
    credit += c;
    return { account: r.account, debit: json(d), credit: json(c), balance: json(d - c) };
  });
  return { accounts, debit: json(debit), credit: json(credit) };
}

/** The value of a location's stock on hand: Σ of its (SKU, location) values, in minor units. */
export interface LocationStockValue {
  readonly location: string;
  readonly value: bigint;
}

/** Stock value per location: Σ balances.value of `on_hand` (null, from before valuation, counts as 0). */
export async function stockValueByLocation(sql: Sql): Promise<ReadonlyArray<LocationStockValue>> {
  const rows = await sql<Array<{ location: string; value: string }>>`
    select location, coalesce(sum(value), 0)::text as value
      from balances
     where bucket = 'on_hand'
     group by location
     order by location collate "C"`;
  return rows.map((r) => ({ location: r.location, value: BigInt(r.value) }));
}
