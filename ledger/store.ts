import type { Sql } from "postgres";
import type { HashedEntry } from "./hash.ts";

/** A ledger row as written: one leg of one command. */
export interface LedgerEntry extends HashedEntry {
  readonly prevHash: string;
  readonly hash: string;
}

export interface BalanceRow {
  readonly sku: string;
  readonly location: string;
  readonly bucket: string;
  readonly qty: number;
}
export interface SkuHeadRow {
  readonly sku: string;
  readonly seq: number;
  readonly lastHash: string;
  readonly version: number;
}
export interface SkuLocationRow {
  readonly sku: string;
  readonly location: string;
  readonly safetyStock: number;
  readonly reorderPoint: number;
  readonly status: string;
}
export interface TransferRow {
  readonly sku: string;
  readonly transferId: string;
  readonly from: string;
  readonly to: string;
  readonly shipped: number;
  readonly received: number;
}
export interface OutcomeRow {
  readonly commandId: string;
  readonly streamSeq: number;
  readonly sku: string;
  readonly type: string;
  readonly status: "applied" | "rejected";
  readonly reason: string | null;
  readonly detail: unknown;
}
export interface OutboxRow {
  readonly kind: "availability" | "event";
  readonly subject: string;
  readonly kvKey: string | null;
  readonly payload: unknown;
  /** For availability: when the oldest command behind it happened at its source (for end-to-end latency). */
  readonly sourceAt?: Date;
  /** …and which system that command came from. */
  readonly source?: string;
}

/** Everything one batch of one partition writes, in one transaction. */
export interface BatchWrite {
  readonly partition: number;
  readonly epoch: number;
  /** The highest stream sequence of the batch: the new checkpoint. */
  readonly lastSeq: number;
  readonly recordedAt: Date;
  readonly entries: ReadonlyArray<LedgerEntry>;
  readonly balances: ReadonlyArray<BalanceRow>;
  readonly heads: ReadonlyArray<SkuHeadRow>;
  readonly skuLocations: ReadonlyArray<SkuLocationRow>;
  readonly transfers: ReadonlyArray<TransferRow>;
  readonly settledTransfers: ReadonlyArray<{ readonly sku: string; readonly transferId: string }>;
  readonly outcomes: ReadonlyArray<OutcomeRow>;
  readonly outbox: ReadonlyArray<OutboxRow>;
}

/** The partition's lease epoch moved on: another worker took it over, this one must stop writing. */
export class LeaseLost extends Error {
  override readonly name = "LeaseLost";
  constructor(
    readonly partition: number,
    readonly epoch: number,
  ) {
    super(`partition ${partition}: lease epoch ${epoch} is no longer current (taken over); refusing to commit`);
  }
}

/** The NOTIFY channel the relay listens on. */
export const OUTBOX_CHANNEL = "tally_outbox";

/**
 * Commits one batch: checkpoint first (the fencing check, which also row-locks the partition),
 * then entries, balances, heads, policies/status, transfers, outcomes and outbox rows.
 * Throws LeaseLost, rolling everything back, when `epoch` is no longer the partition's.
 */
export async function commitBatch(sql: Sql, b: BatchWrite): Promise<void> {
  await sql.begin(async (tx) => {
    // All statements pipelined in one round trip, the fencing update first: it row-locks the
    // partition's checkpoint before anything else runs, and when it matched no row (the lease moved
    // on) the batch fails as LeaseLost whatever else failed with it.
    // Settled, not all: when one fails, the others must finish failing before the rollback.
    const t = tx as unknown as Sql;
    const [fence, ...rest] = await Promise.allSettled([
      tx`
        update partition_checkpoints
           set last_seq = greatest(last_seq, ${b.lastSeq}), updated_at = ${b.recordedAt}
         where partition = ${b.partition} and lease_epoch = ${b.epoch}`,
      b.entries.length > 0 ? insertEntries(t, b.entries) : null,
      b.balances.length > 0 ? upsertBalances(t, b.balances, b.recordedAt) : null,
      b.heads.length > 0 ? upsertHeads(t, b.heads, b.recordedAt) : null,
      b.skuLocations.length > 0 ? upsertSkuLocations(t, b.skuLocations) : null,
      b.transfers.length > 0 ? upsertTransfers(t, b.transfers) : null,
      b.settledTransfers.length > 0 ? deleteTransfers(t, b.settledTransfers) : null,
      b.outcomes.length > 0 ? insertOutcomes(t, b.partition, b.outcomes, b.recordedAt) : null,
      b.outbox.length > 0 ? insertOutbox(t, b.outbox).then(() => tx`select pg_notify(${OUTBOX_CHANNEL}, '')`) : null,
    ]);
    if (fence!.status === "fulfilled" && fence!.value.count !== 1) throw new LeaseLost(b.partition, b.epoch);
    const failed = [fence!, ...rest].find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (failed) throw failed.reason;
  });
}

async function insertEntries(sql: Sql, rows: ReadonlyArray<LedgerEntry>): Promise<void> {
  await sql`
    insert into ledger_entries (command_id, leg, sku, location, bucket, delta, balance_after, movement,
                                source_system, source_ref, occurred_at, recorded_at, sku_seq, prev_hash, hash)
    select * from unnest(
      ${sql.array(rows.map((r) => r.commandId))}::text[],
      ${sql.array(rows.map((r) => r.leg))}::smallint[],
      ${sql.array(rows.map((r) => r.sku))}::text[],
      ${sql.array(rows.map((r) => r.location))}::text[],
      ${sql.array(rows.map((r) => r.bucket))}::text[],
      ${sql.array(rows.map((r) => r.delta))}::bigint[],
      ${sql.array(rows.map((r) => r.balanceAfter))}::bigint[],
      ${sql.array(rows.map((r) => r.movement))}::text[],
      ${sql.array(rows.map((r) => r.sourceSystem))}::text[],
      ${sql.array(rows.map((r) => r.sourceRef))}::text[],
      ${sql.array(rows.map((r) => r.occurredAt.toISOString()))}::timestamptz[],
      ${sql.array(rows.map((r) => r.recordedAt.toISOString()))}::timestamptz[],
      ${sql.array(rows.map((r) => r.skuSeq))}::bigint[],
      ${sql.array(rows.map((r) => r.prevHash))}::text[],
      ${sql.array(rows.map((r) => r.hash))}::text[]
    )`;
}

async function upsertBalances(sql: Sql, rows: ReadonlyArray<BalanceRow>, at: Date): Promise<void> {
  await sql`
    insert into balances (sku, location, bucket, qty, updated_at)
    select s, l, b, q, ${at} from unnest(
      ${sql.array(rows.map((r) => r.sku))}::text[],
      ${sql.array(rows.map((r) => r.location))}::text[],
      ${sql.array(rows.map((r) => r.bucket))}::text[],
      ${sql.array(rows.map((r) => r.qty))}::bigint[]
    ) as t(s, l, b, q)
    on conflict (sku, location, bucket) do update set qty = excluded.qty, updated_at = excluded.updated_at`;
}

async function upsertHeads(sql: Sql, rows: ReadonlyArray<SkuHeadRow>, at: Date): Promise<void> {
  await sql`
    insert into sku_heads (sku, seq, last_hash, version, updated_at)
    select s, q, h, v, ${at} from unnest(
      ${sql.array(rows.map((r) => r.sku))}::text[],
      ${sql.array(rows.map((r) => r.seq))}::bigint[],
      ${sql.array(rows.map((r) => r.lastHash))}::text[],
      ${sql.array(rows.map((r) => r.version))}::bigint[]
    ) as t(s, q, h, v)
    on conflict (sku) do update
      set seq = excluded.seq, last_hash = excluded.last_hash, version = excluded.version, updated_at = excluded.updated_at`;
}

async function upsertSkuLocations(sql: Sql, rows: ReadonlyArray<SkuLocationRow>): Promise<void> {
  await sql`
    insert into sku_locations (sku, location, safety_stock, reorder_point, status)
    select * from unnest(
      ${sql.array(rows.map((r) => r.sku))}::text[],
      ${sql.array(rows.map((r) => r.location))}::text[],
      ${sql.array(rows.map((r) => r.safetyStock))}::bigint[],
      ${sql.array(rows.map((r) => r.reorderPoint))}::bigint[],
      ${sql.array(rows.map((r) => r.status))}::text[]
    )
    on conflict (sku, location) do update
      set safety_stock = excluded.safety_stock, reorder_point = excluded.reorder_point, status = excluded.status`;
}

async function upsertTransfers(sql: Sql, rows: ReadonlyArray<TransferRow>): Promise<void> {
  await sql`
    insert into transfers (sku, transfer_id, from_location, to_location, shipped, received)
    select * from unnest(
      ${sql.array(rows.map((r) => r.sku))}::text[],
      ${sql.array(rows.map((r) => r.transferId))}::text[],
      ${sql.array(rows.map((r) => r.from))}::text[],
      ${sql.array(rows.map((r) => r.to))}::text[],
      ${sql.array(rows.map((r) => r.shipped))}::bigint[],
      ${sql.array(rows.map((r) => r.received))}::bigint[]
    )
    on conflict (sku, transfer_id) do update set shipped = excluded.shipped, received = excluded.received`;
}

async function deleteTransfers(sql: Sql, rows: ReadonlyArray<{ sku: string; transferId: string }>): Promise<void> {
  await sql`
    delete from transfers t
     using unnest(${sql.array(rows.map((r) => r.sku))}::text[], ${sql.array(rows.map((r) => r.transferId))}::text[]) as d(s, i)
     where t.sku = d.s and t.transfer_id = d.i`;
}

async function insertOutcomes(sql: Sql, partition: number, rows: ReadonlyArray<OutcomeRow>, at: Date): Promise<void> {
  await sql`
    insert into command_outcomes (command_id, partition, stream_seq, sku, type, status, reason, detail, recorded_at)
    select c, ${partition}, q, s, t, st, r, d, ${at} from unnest(
      ${sql.array(rows.map((r) => r.commandId))}::text[],
      ${sql.array(rows.map((r) => r.streamSeq))}::bigint[],
      ${sql.array(rows.map((r) => r.sku))}::text[],
      ${sql.array(rows.map((r) => r.type))}::text[],
      ${sql.array(rows.map((r) => r.status))}::text[],
      ${sql.array(rows.map((r) => r.reason))}::text[],
      ${sql.array(rows.map((r) => (r.detail === null || r.detail === undefined ? null : JSON.stringify(r.detail))))}::jsonb[]
    ) as t(c, q, s, t, st, r, d)`;
}

async function insertOutbox(sql: Sql, rows: ReadonlyArray<OutboxRow>): Promise<void> {
  await sql`
    insert into outbox (kind, subject, kv_key, payload, source_at, source)
    select * from unnest(
      ${sql.array(rows.map((r) => r.kind))}::text[],
      ${sql.array(rows.map((r) => r.subject))}::text[],
      ${sql.array(rows.map((r) => r.kvKey))}::text[],
      ${sql.array(rows.map((r) => JSON.stringify(r.payload)))}::jsonb[],
      ${sql.array(rows.map((r) => r.sourceAt?.toISOString() ?? null))}::timestamptz[],
      ${sql.array(rows.map((r) => r.source ?? null))}::text[]
    )`;
}

/** Which of these command ids already have an outcome (applied or rejected). */
export async function knownCommandIds(sql: Sql, ids: ReadonlyArray<string>): Promise<Set<string>> {
  if (ids.length === 0) return new Set();
  const rows = await sql<Array<{ command_id: string }>>`
    select command_id from command_outcomes where command_id = any(${sql.array(ids as Array<string>)}::text[])`;
  return new Set(rows.map((r) => r.command_id));
}

/**
 * Takes a partition over: bumps its lease epoch (creating the row on first use) and returns the new
 * epoch and the checkpoint to resume after. Any batch still in flight under an older epoch is fenced out.
 */
export async function claimPartition(sql: Sql, partition: number): Promise<{ epoch: number; lastSeq: number }> {
  const [row] = await sql<Array<{ lease_epoch: number; last_seq: number }>>`
    insert into partition_checkpoints (partition, last_seq, lease_epoch) values (${partition}, 0, 1)
    on conflict (partition) do update set lease_epoch = partition_checkpoints.lease_epoch + 1, updated_at = now()
    returning lease_epoch, last_seq`;
  return { epoch: row!.lease_epoch, lastSeq: row!.last_seq };
}

/** The partition's checkpoint, if `epoch` is still the current lease epoch; otherwise LeaseLost. */
export async function readCheckpoint(sql: Sql, partition: number, epoch: number): Promise<number> {
  const [row] = await sql<Array<{ last_seq: number }>>`
    select last_seq from partition_checkpoints where partition = ${partition} and lease_epoch = ${epoch}`;
  if (!row) throw new LeaseLost(partition, epoch);
  return row.last_seq;
}

/** Rows from which SKU actors are rebuilt on activation. */
export interface StoredSku {
  readonly head: SkuHeadRow | undefined;
  readonly balances: ReadonlyArray<BalanceRow>;
  readonly locations: ReadonlyArray<SkuLocationRow>;
  readonly transfers: ReadonlyArray<TransferRow>;
}

/** Loads the stored state of many SKUs in four queries. */
export async function loadSkus(sql: Sql, skus: ReadonlyArray<string>): Promise<Map<string, StoredSku>> {
  const out = new Map<string, { head: SkuHeadRow | undefined; balances: Array<BalanceRow>; locations: Array<SkuLocationRow>; transfers: Array<TransferRow> }>();
  for (const sku of skus) out.set(sku, { head: undefined, balances: [], locations: [], transfers: [] });
  if (skus.length === 0) return out;
  const list = sql.array(skus as Array<string>);
  const [heads, balances, locations, transfers] = await Promise.all([
    sql<Array<{ sku: string; seq: number; last_hash: string; version: number }>>`
      select sku, seq, last_hash, version from sku_heads where sku = any(${list}::text[])`,
    sql<Array<BalanceRow>>`select sku, location, bucket, qty from balances where sku = any(${list}::text[])`,
    sql<Array<{ sku: string; location: string; safety_stock: number; reorder_point: number; status: string }>>`
      select sku, location, safety_stock, reorder_point, status from sku_locations where sku = any(${list}::text[])`,
    sql<Array<{ sku: string; transfer_id: string; from_location: string; to_location: string; shipped: number; received: number }>>`
      select sku, transfer_id, from_location, to_location, shipped, received from transfers where sku = any(${list}::text[])`,
  ]);
  for (const h of heads) out.get(h.sku)!.head = { sku: h.sku, seq: h.seq, lastHash: h.last_hash, version: h.version };
  for (const b of balances) out.get(b.sku)!.balances.push({ sku: b.sku, location: b.location, bucket: b.bucket, qty: b.qty });
  for (const l of locations)
    out.get(l.sku)!.locations.push({
      sku: l.sku,
      location: l.location,
      safetyStock: l.safety_stock,
      reorderPoint: l.reorder_point,
      status: l.status,
    });
  for (const t of transfers)
    out.get(t.sku)!.transfers.push({
      sku: t.sku,
      transferId: t.transfer_id,
      from: t.from_location,
      to: t.to_location,
      shipped: t.shipped,
      received: t.received,
    });
  return out;
}
