/**
 * The GL poster: follows ledger_entries with the txid-horizon technique of export.ts and writes each
 * command's inventory journal (journal.ts's rules) exactly once.
 *
 * A round is one READ COMMITTED transaction: take the poster lock (a transaction-level advisory lock,
 * tried: while another poster is mid-round this one skips the round, so one posts at a time across
 * processes), read the cursor and the horizon (xmin of the current snapshot: every transaction below
 * it has ended, so every entry with a txid below it is visible and no more can appear), read the
 * entries between them, insert their journals and lines (journalInsert.ts) and move the cursor. A
 * crash anywhere rolls the whole round back; `journal_id = command_id` with `on conflict do nothing`
 * makes a journal written twice impossible even so. READ COMMITTED, not REPEATABLE READ: the posting
 * date function (tally_gl_posting_date) takes the periods lock and must then see a period closed
 * just before, which a snapshot taken at the start of the round would not. The round writes only in
 * its last two statements (an advisory lock, unlike `select … for update`, takes no transaction id), so
 * it holds back the horizon of other followers (the GL export) no longer than a worker's batch does.
 *
 * A worker's batch is one transaction, so all the legs of a command arrive in the same round.
 */
import type { Sql, TransactionSql } from "postgres";
import { LongRunningService, backoffDelay, retry, sleep, type FinanceConfig, type Logger } from "../src/platform/index.ts";
import { journalsOf, type Journal, type JournalLeg } from "./journal.ts";
import { insertJournals } from "./journalInsert.ts";

/** The advisory lock a poster holds for the span of a round (one poster at a time). */
const POSTER_LOCK = 7_402_117_073;

/** What one round did. */
export interface PostRound {
  /** Another poster held the cursor: this round did nothing. */
  readonly busy: boolean;
  /** Ledger entries read (holds excluded). */
  readonly entries: number;
  /** Journals written (a journal already there is not written again). */
  readonly journals: number;
  /** The round stopped at `maxEntries`: more are waiting. */
  readonly full: boolean;
  /** The cursor after the round (null: nothing posted yet). */
  readonly horizon: string | null;
}

interface EntryRow {
  command_id: string;
  leg: number;
  sku: string;
  location: string;
  bucket: string;
  delta: string;
  value: string | null;
  unit: string;
  movement: string;
  source_system: string;
  source_ref: string;
  occurred_at: Date;
}

const legOf = (r: EntryRow): JournalLeg => ({
  commandId: r.command_id,
  leg: r.leg,
  sku: r.sku,
  location: r.location,
  bucket: r.bucket,
  delta: BigInt(r.delta),
  movement: r.movement,
  value: r.value === null ? null : BigInt(r.value),
  unit: r.unit,
  sourceSystem: r.source_system,
  sourceRef: r.source_ref,
  occurredAt: r.occurred_at,
});

/** `and txid >= from` (unqualified: every query below reads one table with a txid), or nothing from the first entry. */
const after = (from: string | null, tx: TransactionSql) => (from === null ? tx`` : tx`and txid >= ${from}::xid8`);

/**
 * Where this round stops: the horizon, or earlier when more than `maxEntries` entries wait, at a
 * transaction boundary (one transaction larger than that is taken whole).
 */
async function roundEnd(tx: TransactionSql, from: string | null, horizon: string, maxEntries: number): Promise<{ upTo: string; full: boolean }> {
  const [cap] = await tx<Array<{ txid: string; first: string }>>`
    select e.txid::text as txid,
           (select min(f.txid) from ledger_entries f where f.txid < ${horizon}::xid8 ${after(from, tx)})::text as first
      from ledger_entries e
     where e.txid < ${horizon}::xid8 ${after(from, tx)}
     order by e.txid limit 1 offset ${maxEntries}`;
  if (cap === undefined) return { upTo: horizon, full: false };
  return { upTo: cap.txid === cap.first ? String(BigInt(cap.txid) + 1n) : cap.txid, full: true };
}

/** Inserts the journals and their lines, then moves the cursor: the round's last two statements. */
async function writeJournals(tx: TransactionSql, journals: ReadonlyArray<Journal>, horizon: string): Promise<number> {
  const written = await insertJournals(tx, journals);
  await tx`update gl_cursor set horizon = ${horizon}::xid8, updated_at = now() where id = 1`;
  return written.length;
}

/**
 * One round: posts the journals of the entries committed since the cursor, at most about
 * `maxEntries` entries (never part of a transaction's), and moves the cursor, in one transaction.
 */
export async function postRound(sql: Sql, finance: FinanceConfig, maxEntries = 5000): Promise<PostRound> {
  return sql.begin(async (tx) => {
    const [{ got }] = await tx<[{ got: boolean }]>`select pg_try_advisory_xact_lock(${POSTER_LOCK}) as got`;
    if (!got) return { busy: true, entries: 0, journals: 0, full: false, horizon: null };
    const [{ from, horizon }] = await tx<[{ from: string | null; horizon: string }]>`
      select horizon::text as from, pg_snapshot_xmin(pg_current_snapshot())::text as horizon from gl_cursor where id = 1`;
    if (from === horizon) return { busy: false, entries: 0, journals: 0, full: false, horizon };
    const { upTo, full } = await roundEnd(tx, from, horizon, maxEntries);
    const rows = await tx<Array<EntryRow>>`
      select e.command_id, e.leg, e.sku, e.location, e.bucket, e.delta::text as delta, e.value::text as value,
             coalesce(i.base_unit, 'each') as unit, e.movement, e.source_system, e.source_ref, e.occurred_at
        from ledger_entries e
        left join items i on i.sku = e.sku
       where e.txid < ${upTo}::xid8 ${after(from, tx)} and e.bucket <> 'reserved'
       order by e.entry_id`;
    const journals = await writeJournals(tx, journalsOf(rows.map(legOf), finance), upTo);
    return { busy: false, entries: rows.length, journals, full, horizon: upTo };
  });
}

/**
 * When the oldest ledger entry the poster has not passed yet was recorded (null: none waits): the
 * first entry past the cursor in txid order, which is the order the poster takes them in. One index
 * probe (ledger_entries_txid); the minimum over every entry past the cursor read the whole backlog
 * after each round, the more so the further the poster was behind.
 */
export async function oldestUnposted(sql: Sql): Promise<Date | null> {
  const [row] = await sql<Array<{ at: Date }>>`
    select recorded_at as at from ledger_entries
     where txid >= (select coalesce(c.horizon, '0'::xid8) from gl_cursor c where c.id = 1)
     order by txid limit 1`;
  return row?.at ?? null;
}

export interface JournalPosterOptions {
  readonly sql: Sql;
  readonly finance: FinanceConfig;
  readonly log: Logger;
  /** The wait after a round that found less than a full batch, default 1000 ms. */
  readonly intervalMs?: number;
  /** The most ledger entries one round reads, default 5000. */
  readonly maxEntries?: number;
}

/** Runs rounds until stopped (in the worker role): a full round is followed by the next at once. */
export class JournalPoster extends LongRunningService {
  #oldest: Date | null = null;
  #journals = 0;

  constructor(readonly opts: JournalPosterOptions) {
    super(); // nothing starts here
  }

  /** Journals this poster wrote since it started. */
  get journals(): number {
    return this.#journals;
  }

  /** How long the oldest entry not yet posted has waited, in seconds (0 when none did at the last round). */
  lagSeconds(now: number = Date.now()): number {
    return this.#oldest === null ? 0 : Math.max(0, (now - this.#oldest.getTime()) / 1000);
  }

  protected async run(signal: AbortSignal): Promise<void> {
    const { sql, finance, log, intervalMs = 1000, maxEntries = 5000 } = this.opts;
    while (!signal.aborted) {
      const round = await retry(
        async () => {
          const r = await postRound(sql, finance, maxEntries);
          this.#oldest = await oldestUnposted(sql);
          return r;
        },
        {
          signal,
          backoff: (attempt) => backoffDelay(attempt, 500, 30_000),
          onError: (err, attempt, delayMs) => log.warn({ err, attempt, delayMs }, "GL posting round failed; retrying"),
        },
      );
      this.#journals += round?.journals ?? 0;
      if (round?.full) continue;
      await sleep(intervalMs, signal); // a stop ends the sleep at once
    }
  }
}
