/**
 * The pruning job's statements (src/app/pruner.ts runs them): each moves or deletes at most `limit`
 * rows, oldest first, through an index, so one statement is one short transaction and never holds
 * long locks. Each returns how many rows it removed; the caller repeats until a batch comes back short.
 */
import type { Sql } from "postgres";

/** The final statuses of a reservation (src/reservations/lifecycle.ts): nothing happens to it any more. */
const FINISHED_RESERVATIONS = ["fulfilled", "released", "expired", "rejected"];

/**
 * The idempotency horizon of command outcomes: the longer of the duplicate window and the age of the
 * oldest CDC slot position (a reader that restarts re-reads its source from there and re-publishes
 * commands whose outcomes must still say "seen"). A halted source (its slot is lost) re-reads nothing.
 * Outcomes recorded before `cutoff` are outside it; `heldBy` names the source when it is the longer one.
 */
export async function outcomesHorizon(sql: Sql, duplicateWindowMs: number, now: Date): Promise<{ cutoff: Date; heldBy: string | null }> {
  const byWindow = new Date(now.getTime() - duplicateWindowMs);
  const [oldest] = await sql<Array<{ source: string; at: Date }>>`
    select source, coalesce(slot_bound_at, updated_at) as at from cdc_sources
     where halted_at is null
     order by 2 limit 1`;
  return oldest && oldest.at < byWindow ? { cutoff: oldest.at, heldBy: oldest.source } : { cutoff: byWindow, heldBy: null };
}

/**
 * Moves outcomes recorded before `cutoff` to `command_outcomes_archive`, except one a reservation line
 * still names (its reservation is pruned first). Moved, not deleted: the archive is the only record of
 * why a rejected command was refused, and the duplicate lookup (`knownCommandIds`) still finds it.
 */
export async function archiveOutcomes(sql: Sql, cutoff: Date, limit: number): Promise<number> {
  const [{ n }] = await sql<[{ n: number }]>`
    with picked as (
      select command_id from command_outcomes o
       where recorded_at < ${cutoff}
         and not exists (select from reservation_lines l where l.command_id = o.command_id)
       order by recorded_at
       limit ${limit}
       for update skip locked
    ), moved as (
      delete from command_outcomes o using picked p where o.command_id = p.command_id
      returning o.command_id, o.partition, o.stream_seq, o.sku, o.type, o.status, o.reason, o.detail, o.recorded_at
    ), archived as (
      insert into command_outcomes_archive (command_id, partition, stream_seq, sku, type, status, reason, detail, recorded_at)
      select * from moved
      on conflict (command_id) do nothing
    )
    select count(*)::int as n from moved`;
  return n;
}

/** Deletes archived outcomes recorded before `cutoff`. */
export async function pruneOutcomesArchive(sql: Sql, cutoff: Date, limit: number): Promise<number> {
  const rows = await sql`
    delete from command_outcomes_archive where command_id in (
      select command_id from command_outcomes_archive where recorded_at < ${cutoff} order by recorded_at limit ${limit} for update skip locked)`;
  return rows.count;
}

/**
 * Deletes answered POS claims recorded before `cutoff`. A claim is the idempotency record of a POS
 * resend: a resend after it is gone is claimed again and re-publishes its commands under the same ids,
 * which the outcomes (or, past their horizon, the ledger's unique command id) turn into no-ops; its
 * money journal is not posted twice (`gl_journals` key). A claim still unanswered is never pruned.
 */
export async function prunePosClaims(sql: Sql, cutoff: Date, limit: number): Promise<number> {
  const rows = await sql`
    delete from pos_transactions where (store, terminal, transaction_id) in (
      select store, terminal, transaction_id from pos_transactions
       where result is not null and recorded_at < ${cutoff}
       order by recorded_at limit ${limit} for update skip locked)`;
  return rows.count;
}

/**
 * Deletes finished reservations (fulfilled, released, expired, rejected) that finished before `cutoff`,
 * with their lines. Past it, their Idempotency-Key is forgotten: a retry with it makes a new reservation.
 */
export async function pruneReservations(sql: Sql, cutoff: Date, limit: number): Promise<number> {
  const [{ n }] = await sql<[{ n: number }]>`
    with picked as (
      select id from reservations
       where status = any(${sql.array(FINISHED_RESERVATIONS)}::text[]) and updated_at < ${cutoff}
       order by updated_at limit ${limit} for update skip locked
    ), lines as (
      delete from reservation_lines l using picked p where l.reservation_id = p.id
    ), gone as (
      delete from reservations r using picked p where r.id = p.id returning 1
    )
    select count(*)::int as n from gone`;
  return n;
}

/**
 * Deletes closed holds (released, fulfilled, expired, refused) closed before `cutoff`. Activation loads
 * open holds only, so a closed hold is already history to the SKU's actor; `reserved` is the sum of the open ones.
 */
export async function pruneClosedHolds(sql: Sql, cutoff: Date, limit: number): Promise<number> {
  const rows = await sql`
    delete from holds where (sku, hold_id) in (
      select sku, hold_id from holds where status <> 'open' and updated_at < ${cutoff}
       order by updated_at limit ${limit} for update skip locked)`;
  return rows.count;
}

/**
 * Deletes the version rows of a channel (`catalog_channel_versions`) that the channel acknowledged
 * (`catalog_acks`), recorded before `cutoff`, except the channel's latest: what the lag view reads —
 * the versions above the acknowledged one, and the latest — stays. A channel that never acknowledged
 * keeps every row.
 */
export async function pruneCatalogChannelVersions(sql: Sql, cutoff: Date, limit: number): Promise<number> {
  const rows = await sql`
    delete from catalog_channel_versions where (channel, version) in (
      select v.channel, v.version
        from catalog_channel_versions v
        join catalog_acks a on a.channel = v.channel and v.version <= a.acked_version
        join catalog_versions cv on cv.version = v.version and cv.created_at < ${cutoff}
       where v.version < (select max(l.version) from catalog_channel_versions l where l.channel = v.channel)
       order by v.version limit ${limit} for update of v skip locked)`;
  return rows.count;
}

/**
 * Deletes catalog versions recorded before `cutoff` that no channel's version row names any more. The
 * caller passes a cutoff no later than the outcomes horizon: a source transaction a CDC reader may
 * still re-read must find its version (`unique (source, source_ref)`), or it would become a new one.
 */
export async function pruneCatalogVersions(sql: Sql, cutoff: Date, limit: number): Promise<number> {
  const rows = await sql`
    delete from catalog_versions where version in (
      select cv.version from catalog_versions cv
       where cv.created_at < ${cutoff}
         and not exists (select from catalog_channel_versions v where v.version = cv.version)
       order by cv.created_at limit ${limit} for update skip locked)`;
  return rows.count;
}

/** Deletes scheduled price changes already published (done) that were due before `cutoff`; pending ones stay. */
export async function pruneCatalogDue(sql: Sql, cutoff: Date, limit: number): Promise<number> {
  const rows = await sql`
    delete from catalog_due where id in (
      select id from catalog_due where done_version is not null and due_at < ${cutoff}
       order by due_at limit ${limit} for update skip locked)`;
  return rows.count;
}

/**
 * Deletes prices that ended before `cutoff`: a projection is computed from the prices in effect now
 * and those starting later, so one that ended is never read again.
 */
export async function pruneEndedPrices(sql: Sql, cutoff: Date, limit: number): Promise<number> {
  const rows = await sql`
    delete from catalog_prices where (sku, price_list, valid_from) in (
      select sku, price_list, valid_from from catalog_prices where valid_to < ${cutoff}
       order by valid_to limit ${limit} for update skip locked)`;
  return rows.count;
}

/**
 * Deletes dead-letter payloads (`dead_letter_payloads`) last published before `cutoff`, the DLQ's age
 * horizon and a margin before it: every letter naming one was stored before the horizon and has been
 * expired (logged and counted) by then, so what is left is an orphan — the payload of a letter
 * replayed or discarded, or one whose publish failed.
 */
export async function pruneDeadLetterPayloads(sql: Sql, cutoff: Date, limit: number): Promise<number> {
  const rows = await sql`
    delete from dead_letter_payloads where key in (
      select key from dead_letter_payloads where created_at < ${cutoff}
       order by created_at limit ${limit} for update skip locked)`;
  return rows.count;
}
