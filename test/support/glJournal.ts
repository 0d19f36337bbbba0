/** A GL journal inserted directly, as a poster would (ledger/journalInsert.ts). */
import { insertJournals } from "../../ledger/index.ts";
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

/** Inserts the journal and its lines (numbered from 1) as a poster would; returns the date it posted on. Throws when the id is taken. */
export async function insertJournal(sql: Sql, j: FixtureJournal): Promise<string> {
  const [posted] = await insertJournals(sql, [
    {
      journalId: j.journalId,
      kind: j.kind ?? "inventory",
      businessDate: j.businessDate,
      currency: j.currency ?? "EUR",
      commandId: j.commandId === undefined ? j.journalId : j.commandId,
      movement: j.movement ?? "receive",
      sourceSystem: j.sourceSystem ?? "test",
      sourceRef: j.sourceRef ?? j.journalId,
      lines: j.lines.map((l, i) => ({
        line: i + 1,
        account: l.account,
        costCenter: l.costCenter ?? "DC1",
        debit: l.debit ?? 0,
        credit: l.credit ?? 0,
        sku: l.sku ?? null,
        qty: l.qty ?? null,
        unit: l.unit ?? null,
        leg: null,
        memo: l.memo ?? null,
      })),
    },
  ]);
  if (!posted) throw new Error(`journal ${j.journalId} is already there`);
  return posted.postedOn;
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
