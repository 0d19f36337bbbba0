import type { Sql } from "postgres";

/** A partition layout as the ledger records it (generation 0 is the environment's first, never a row). */
export interface LayoutRow {
  readonly generation: number;
  readonly partitions: number;
  readonly previousPartitions: number;
  readonly state: "draining" | "active";
  readonly cutSeq: number;
}

const columns = (sql: Sql) => sql`generation, partitions, previous_partitions as "previousPartitions", state, cut_seq::float8 as "cutSeq"`;

/** The layout workers apply: the newest active one (null: generation 0, `TALLY_PARTITIONS`). */
export async function activeLayout(sql: Sql): Promise<LayoutRow | null> {
  const [row] = await sql<Array<LayoutRow>>`
    select ${columns(sql)} from partition_layouts where state = 'active' order by generation desc limit 1`;
  return row ?? null;
}

/** The resize under way (its old layout still draining), if any. */
export async function drainingLayout(sql: Sql): Promise<LayoutRow | null> {
  const [row] = await sql<Array<LayoutRow>>`select ${columns(sql)} from partition_layouts where state = 'draining'`;
  return row ?? null;
}

/** Records a resize whose cut is at `cutSeq` (the commands stream's last sequence before the old subjects left it). */
export async function beginResize(sql: Sql, generation: number, partitions: number, previousPartitions: number, cutSeq: number): Promise<void> {
  await sql`
    insert into partition_layouts (generation, partitions, previous_partitions, state, cut_seq)
    values (${generation}, ${partitions}, ${previousPartitions}, 'draining', ${cutSeq})`;
}

/** The last applied stream sequence of partitions 0 … count-1 (0 for one never applied). */
export async function checkpointsOf(sql: Sql, count: number): Promise<Map<number, number>> {
  const rows = await sql<Array<{ partition: number; last_seq: number }>>`
    select partition, last_seq::float8 as last_seq from partition_checkpoints where partition < ${count}`;
  const out = new Map<number, number>();
  for (let p = 0; p < count; p++) out.set(p, 0);
  for (const r of rows) out.set(r.partition, r.last_seq);
  return out;
}

/**
 * Switches to the draining layout once the old one is drained: in one transaction, with every
 * checkpoint row locked (a batch in flight commits before or waits after), each old partition's
 * checkpoint must cover `lastSeqs` (the last stream sequence on its old subject). Then every
 * partition's checkpoint starts at the cut (the new subjects hold nothing at or below it) and its
 * lease epoch goes up, fencing every runner of the old layout; the layout becomes active.
 * Returns the old partitions still behind, and whether this call switched (false with nothing behind:
 * another process switched it first — the layout's row is locked, so only one switch ever runs).
 */
export async function switchLayout(
  sql: Sql,
  layout: LayoutRow,
  lastSeqs: ReadonlyMap<number, number>,
): Promise<{ behind: Array<number>; switched: boolean }> {
  return sql.begin(async (tx) => {
    const [state] = await tx<Array<{ state: string }>>`
      select state from partition_layouts where generation = ${layout.generation} for update`;
    // Switched already (by the resize command, or another worker): resetting the checkpoints again would
    // send the new layout's partitions back to the cut.
    if (state?.state !== "draining") return { behind: [], switched: false };
    const rows = await tx<Array<{ partition: number; last_seq: number }>>`
      select partition, last_seq::float8 as last_seq from partition_checkpoints order by partition for update`;
    const checkpoint = new Map(rows.map((r) => [r.partition, r.last_seq]));
    const behind = [...lastSeqs].filter(([p, last]) => (checkpoint.get(p) ?? 0) < last).map(([p]) => p);
    if (behind.length > 0) return { behind, switched: false };
    const upTo = Math.max(layout.partitions, layout.previousPartitions, ...rows.map((r) => r.partition + 1));
    await tx`
      insert into partition_checkpoints (partition, last_seq, lease_epoch)
      select p, ${layout.cutSeq}, 1 from generate_series(0, ${upTo - 1}) p
      on conflict (partition) do update
        set last_seq = excluded.last_seq, lease_epoch = partition_checkpoints.lease_epoch + 1, updated_at = now()`;
    // Stuck marks name old-layout partitions (drained, so no longer stuck); skip requests stay as the
    // record, at sequences at or below the cut that no new partition reads.
    await tx`delete from stuck_partitions`;
    await tx`update partition_layouts set state = 'active', switched_at = now() where generation = ${layout.generation}`;
    return { behind: [], switched: true };
  });
}
