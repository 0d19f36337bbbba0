import type { Sql } from "postgres";

/** A partition that is not advancing, as the worker holding it reports it. */
export interface StuckPartition {
  readonly partition: number;
  /** The first stream message not applied (the checkpoint + 1). */
  readonly streamSeq: number;
  /** Failed attempts in a row. */
  readonly attempts: number;
  readonly error: string;
  readonly since: Date;
  readonly updatedAt: Date;
}

/** Records (or refreshes) that `partition` is stuck at `streamSeq`. */
export async function recordStuck(sql: Sql, s: Omit<StuckPartition, "since" | "updatedAt">): Promise<void> {
  await sql`
    insert into stuck_partitions (partition, stream_seq, attempts, error, since, updated_at)
    values (${s.partition}, ${s.streamSeq}, ${s.attempts}, ${s.error}, now(), now())
    on conflict (partition) do update
      set stream_seq = excluded.stream_seq, attempts = excluded.attempts, error = excluded.error, updated_at = now(),
          since = case when stuck_partitions.stream_seq = excluded.stream_seq then stuck_partitions.since else now() end`;
}

/** The partition advanced: it is no longer stuck. True when it had been recorded stuck. */
export async function clearStuck(sql: Sql, partition: number): Promise<boolean> {
  const rows = await sql`delete from stuck_partitions where partition = ${partition} returning 1`;
  return rows.length > 0;
}

/** Every stuck partition, lowest first. */
export async function listStuck(sql: Sql): Promise<Array<StuckPartition>> {
  const rows = await sql<Array<{ partition: number; stream_seq: number; attempts: number; error: string; since: Date; updated_at: Date }>>`
    select partition, stream_seq, attempts, error, since, updated_at from stuck_partitions order by partition`;
  return rows.map((r) => ({
    partition: r.partition,
    streamSeq: r.stream_seq,
    attempts: r.attempts,
    error: r.error,
    since: r.since,
    updatedAt: r.updated_at,
  }));
}

/** Asks the worker holding `partition` to dead-letter the message at `streamSeq` and move on. False if already asked. */
export async function requestSkip(sql: Sql, partition: number, streamSeq: number, by: string): Promise<boolean> {
  const rows = await sql`
    insert into partition_skips (partition, stream_seq, requested_by) values (${partition}, ${streamSeq}, ${by})
    on conflict do nothing returning 1`;
  return rows.length === 1;
}

/** Skips asked for and not done yet, past the checkpoint `after`. */
export async function pendingSkips(sql: Sql, partition: number, after: number): Promise<Map<number, string>> {
  const rows = await sql<Array<{ stream_seq: number; requested_by: string }>>`
    select stream_seq, requested_by from partition_skips
     where partition = ${partition} and stream_seq > ${after} and done_at is null`;
  return new Map(rows.map((r) => [r.stream_seq, r.requested_by]));
}

/** Marks the skips of `partition` up to `upTo` as done (the checkpoint has passed them). */
export async function markSkipsDone(sql: Sql, partition: number, upTo: number): Promise<void> {
  await sql`update partition_skips set done_at = now() where partition = ${partition} and stream_seq <= ${upTo} and done_at is null`;
}

/** What the worker found when it compared the commands stream with the one the checkpoints belong to. */
export type StreamIdentityCheck =
  | { readonly kind: "same" }
  | { readonly kind: "adopted" }
  | {
      readonly kind: "reset";
      readonly oldCreated: string | null;
      /** The checkpoints (partition → last applied sequence) as they were before the reset. */
      readonly checkpoints: Readonly<Record<string, number>>;
    };

/**
 * Makes sure the partition checkpoints belong to the commands stream created at `created`. The first
 * time, the stream is adopted — unless a checkpoint lies beyond the stream's last sequence
 * (`lastSeq`), which only a different stream explains. When the stream is not the recorded one (it
 * was re-created: a wiped or lost store), every checkpoint is reset to 0 in the same transaction,
 * and the reset is recorded: the new stream's sequences restart at 1, and reading from a checkpoint
 * of the old stream would skip the commands it holds. Every lease epoch is bumped with it, so every
 * runner stops (LeaseLost) and its partition is taken again from the reset checkpoint. Commands applied before are not applied twice:
 * their ids have outcomes, which the worker checks. Row-locked, so concurrent workers agree.
 */
export async function ensureStreamIdentity(sql: Sql, stream: string, created: string, lastSeq: number): Promise<StreamIdentityCheck> {
  return sql.begin(async (tx) => {
    await tx`select pg_advisory_xact_lock(hashtext(${`tally.stream.${stream}`}))`;
    const [known] = await tx<Array<{ created: string }>>`select created from command_stream_identity where stream = ${stream}`;
    if (known?.created === created) return { kind: "same" } as const;
    const checkpoints = await tx<Array<{ partition: number; last_seq: number }>>`
      select partition, last_seq from partition_checkpoints where last_seq > 0 order by partition`;
    const beyond = checkpoints.some((c) => c.last_seq > lastSeq);
    if (!known && !beyond) {
      await tx`insert into command_stream_identity (stream, created) values (${stream}, ${created})`;
      return { kind: "adopted" } as const;
    }
    const before = Object.fromEntries(checkpoints.map((c) => [String(c.partition), c.last_seq]));
    // The epochs move on too: a runner still applying messages it took from the old stream is fenced
    // out (LeaseLost) instead of moving a checkpoint back past the new stream's sequences.
    await tx`update partition_checkpoints set last_seq = 0, lease_epoch = lease_epoch + 1, updated_at = now()`;
    await tx`delete from stuck_partitions`;
    await tx`update partition_skips set done_at = now() where done_at is null`;
    await tx`
      insert into command_stream_resets (stream, old_created, new_created, checkpoints)
      values (${stream}, ${known?.created ?? null}, ${created}, ${tx.json(before)})`;
    await tx`
      insert into command_stream_identity (stream, created) values (${stream}, ${created})
      on conflict (stream) do update set created = excluded.created, adopted_at = now()`;
    return { kind: "reset", oldCreated: known?.created ?? null, checkpoints: before } as const;
  }) as Promise<StreamIdentityCheck>;
}
