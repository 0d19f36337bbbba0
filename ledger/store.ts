import type { Sql } from "postgres";
import type { HashedEntry } from "./hash.ts";
import { quantityValue } from "../src/contract/index.ts";
import type { CostLayer } from "./valuation.ts";
import { arrayParam } from "./pgArray.ts";

/** A ledger row as written: one leg of one command. */
export interface LedgerEntry extends HashedEntry {
  readonly prevHash: string;
  readonly hash: string;
}

/** `qty` is exact: a bigint when written; read back as a number within ±(2^53 − 1), else a bigint. */
export interface BalanceRow {
  readonly sku: string;
  readonly location: string;
  readonly bucket: string;
  readonly qty: bigint | number;
  /**
   * On the on_hand, damaged and in_transit rows: the bucket's exact value and (on_hand, damaged) the
   * last known unit cost (minor units); null on reserved.
   */
  readonly value?: bigint | null;
  readonly lastUnitCost?: bigint | null;
  /** FIFO on_hand: the cost layers, oldest first; null otherwise. */
  readonly layers?: ReadonlyArray<CostLayer> | null;
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
  /** What the transfer carried out of its origin, and what its receipts took of it; null: shipped before transfers were valued. */
  readonly shippedValue?: bigint | null;
  readonly receivedValue?: bigint | null;
}
/** One hold (order line or checkout line) as stored: its status and what it still holds. */
export interface HoldRow {
  readonly sku: string;
  readonly holdId: string;
  readonly location: string;
  readonly channel: string | null;
  readonly qty: number;
  readonly open: number;
  readonly status: string;
  readonly expiresAt: string | null;
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
  /** Holds opened, refused or reduced: their state after the batch. */
  readonly holds: ReadonlyArray<HoldRow>;
  readonly outcomes: ReadonlyArray<OutcomeRow>;
  readonly outbox: ReadonlyArray<OutboxRow>;
}

/**
 * A `JSON.stringify` replacer for quantities: a bigint within ±(2^53 − 1) is written as a number,
 * one beyond as a decimal string. JSON readers (JavaScript's among them) parse every number as a
 * double, so a larger number would arrive rounded; a string arrives exact, and a reader that sees a
 * string where it expects a number knows to parse it as a big integer. (The contract's `Quantity`
 * encodes the same way: it is what the published JSON Schemas say.)
 */
export function quantityJson(_key: string, value: unknown): unknown {
  return typeof value === "bigint" ? quantityValue(value) : value;
}

/** A nullable integer as the decimal text Postgres reads exactly into numeric. */
const nullableText = (n: bigint | null | undefined): string | null => (n === null || n === undefined ? null : String(n));

/** Cost layers as stored: `[[qty, value], ...]` in decimal strings (exact past 2^53). */
const layersJson = (layers: ReadonlyArray<CostLayer> | null | undefined): string | null =>
  layers === null || layers === undefined ? null : JSON.stringify(layers.map((l) => [String(l.qty), String(l.value)]));

const layersOfJson = (json: unknown): Array<CostLayer> | null =>
  Array.isArray(json) ? json.map(([qty, value]: [string, string]) => ({ qty: BigInt(qty), value: BigInt(value) })) : null;

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
 * Commits one batch in a single statement (atomic on its own: no BEGIN/COMMIT round trips): the
 * checkpoint update is the fencing check — it row-locks the partition, and every write below is
 * conditioned on it having matched — then entries, balances, heads, policies/status, transfers,
 * outcomes and outbox rows, and the relay's NOTIFY. Throws LeaseLost, having written nothing, when
 * `epoch` is no longer the partition's. One statement means one message to Postgres per batch,
 * where a transaction of ten statements cost the worker a socket write and a parse each.
 */
export async function commitBatch(sql: Sql, b: BatchWrite): Promise<void> {
  if (!(await groupStatement(sql, [b])).ok) throw new LeaseLost(b.partition, b.epoch);
}

/**
 * Commits the batches of several partitions in one statement (one message, one commit, one WAL
 * flush). The statement first locks the batches' checkpoint rows and checks every lease epoch; it
 * writes only if all of them are current (a check made once, not per row). A group with a lease
 * lost writes nothing and is committed again without the batches whose fence failed, so those write
 * nothing while the others commit, as if each had been fenced alone. Returns, per batch in the order
 * given, whether its fence held (false: LeaseLost for that partition, nothing of it written). A
 * statement that fails (a duplicate command id, a data error) writes nothing of any batch and the
 * error is thrown: the caller commits the batches one by one to find whose it was. At most one
 * batch per partition (a partition has one batch in flight).
 */
export async function commitGroup(sql: Sql, batches: ReadonlyArray<BatchWrite>): Promise<Array<boolean>> {
  if (batches.length === 0) return [];
  if (new Set(batches.map((b) => b.partition)).size !== batches.length)
    throw new Error("commitGroup: two batches of one partition in a group (a partition has one batch in flight)");
  // Nothing is written unless every fence held: a group with a lost lease is committed again without
  // the batches whose fence failed (each round drops at least one, so this ends).
  let pending = batches;
  let committed = new Set<number>();
  while (pending.length > 0) {
    const { ok, held } = await groupStatement(sql, pending);
    if (ok) {
      committed = new Set(pending.map((b) => b.partition));
      break;
    }
    pending = pending.filter((b) => held.has(b.partition));
  }
  return batches.map((b) => committed.has(b.partition));
}

/**
 * The batches' rows of one kind, each with the batch it belongs to (its partition fences it; its
 * time stamps the row's updated_at or recorded_at).
 */
function rowsOf<T>(batches: ReadonlyArray<BatchWrite>, pick: (b: BatchWrite) => ReadonlyArray<T>): Array<{ readonly r: T; readonly b: BatchWrite }> {
  const out: Array<{ r: T; b: BatchWrite }> = [];
  for (const b of batches) for (const r of pick(b)) out.push({ r, b });
  return out;
}

/**
 * The statement of `commitBatch` and `commitGroup`: everything written if every batch's fence held
 * (`ok`), else nothing; `held` names the partitions whose fence held.
 */
async function groupStatement(sql: Sql, batches: ReadonlyArray<BatchWrite>): Promise<{ ok: boolean; held: Set<number> }> {
  type Row<T> = { readonly r: T; readonly b: BatchWrite };
  const col = <T>(rows: ReadonlyArray<Row<T>>, f: (r: T) => string | number | null) => arrayParam(rows.map((x) => f(x.r)));
  const partitionOf = <T>(rows: ReadonlyArray<Row<T>>) => arrayParam(rows.map((x) => x.b.partition));
  const timeOf = <T>(rows: ReadonlyArray<Row<T>>) => arrayParam(rows.map((x) => x.b.recordedAt.toISOString()));
  const e = rowsOf(batches, (b) => b.entries);
  const bal = rowsOf(batches, (b) => b.balances);
  const h = rowsOf(batches, (b) => b.heads);
  const sl = rowsOf(batches, (b) => b.skuLocations);
  const tr = rowsOf(batches, (b) => b.transfers);
  const st = rowsOf(batches, (b) => b.settledTransfers);
  const ho = rowsOf(batches, (b) => b.holds);
  const o = rowsOf(batches, (b) => b.outcomes);
  const ob = rowsOf(batches, (b) => b.outbox);
  const fences = batches.map((b) => ({ r: b, b }));
  const [{ ok, held }] = await sql<[{ ok: boolean; held: Array<number> }]>`
    with locked as (
      -- The checkpoint rows in partition order, before any is written: two transactions that meet on
      -- several of them (a resize's switch locks them all) take them in one order, so neither deadlocks.
      -- A locked row is its latest version: a takeover that committed meanwhile shows its new epoch.
      select partition, lease_epoch from partition_checkpoints
       where partition = any(${partitionOf(fences)}::int[])
       order by partition
         for no key update
    ), held as (
      select l.partition from locked l
        join unnest(${partitionOf(fences)}::int[], ${col(fences, (b) => b.epoch)}::bigint[]) as f(p, ep) on l.partition = f.p and l.lease_epoch = f.ep
    ), ok as (
      -- Every batch's fence held: only then is anything written (checked once, not per row). A group with a
      -- lease lost writes nothing, and the caller commits the batches whose fences held again without it.
      select count(*) = ${batches.length} as ok from held
    ), fence as (
      update partition_checkpoints c
         set last_seq = greatest(c.last_seq, f.s), updated_at = f.at
        from unnest(${partitionOf(fences)}::int[], ${col(fences, (b) => b.lastSeq)}::bigint[], ${timeOf(fences)}::timestamptz[]) as f(p, s, at)
       where c.partition = f.p and (select ok from ok)
    ), entries as (
      -- Each CTE's arrays are unnested in its select list, read in step; unnest(a, b, …) in a FROM
      -- clause copies every array into a tuplestore first, which spills past work_mem at large batches.
      insert into ledger_entries (command_id, leg, sku, location, bucket, delta, balance_after, movement,
                                  source_system, source_ref, occurred_at, recorded_at, sku_seq, prev_hash, hash,
                                  value, unit_cost, valuation_flag)
      select
        unnest(${col(e, (r) => r.commandId)}::text[]),
        unnest(${col(e, (r) => r.leg)}::smallint[]),
        unnest(${col(e, (r) => r.sku)}::text[]),
        unnest(${col(e, (r) => r.location)}::text[]),
        unnest(${col(e, (r) => r.bucket)}::text[]),
        unnest(${col(e, (r) => String(r.delta))}::bigint[]),
        unnest(${col(e, (r) => String(r.balanceAfter))}::bigint[]),
        unnest(${col(e, (r) => r.movement)}::text[]),
        unnest(${col(e, (r) => r.sourceSystem)}::text[]),
        unnest(${col(e, (r) => r.sourceRef)}::text[]),
        unnest(${col(e, (r) => r.occurredAt.toISOString())}::timestamptz[]),
        unnest(${col(e, (r) => r.recordedAt.toISOString())}::timestamptz[]),
        unnest(${col(e, (r) => r.skuSeq)}::bigint[]),
        unnest(${col(e, (r) => r.prevHash)}::text[]),
        unnest(${col(e, (r) => r.hash)}::text[]),
        unnest(${col(e, (r) => nullableText(r.value))}::numeric[]),
        unnest(${col(e, (r) => nullableText(r.unitCost))}::numeric[]),
        unnest(${col(e, (r) => r.valuationFlag ?? null)}::text[])
       where (select ok from ok)
    ), balances_ as (
      insert into balances (sku, location, bucket, qty, value, last_unit_cost, cost_layers, updated_at)
      select
        unnest(${col(bal, (r) => r.sku)}::text[]),
        unnest(${col(bal, (r) => r.location)}::text[]),
        unnest(${col(bal, (r) => r.bucket)}::text[]),
        unnest(${col(bal, (r) => String(r.qty))}::bigint[]),
        unnest(${col(bal, (r) => nullableText(r.value))}::numeric[]),
        unnest(${col(bal, (r) => nullableText(r.lastUnitCost))}::numeric[]),
        unnest(${col(bal, (r) => layersJson(r.layers))}::jsonb[]),
        unnest(${timeOf(bal)}::timestamptz[])
       where (select ok from ok)
      on conflict (sku, location, bucket) do update
        set qty = excluded.qty, value = excluded.value, last_unit_cost = excluded.last_unit_cost, cost_layers = excluded.cost_layers,
            updated_at = excluded.updated_at
    ), heads as (
      insert into sku_heads (sku, seq, last_hash, version, updated_at)
      select
        unnest(${col(h, (r) => r.sku)}::text[]),
        unnest(${col(h, (r) => r.seq)}::bigint[]),
        unnest(${col(h, (r) => r.lastHash)}::text[]),
        unnest(${col(h, (r) => r.version)}::bigint[]),
        unnest(${timeOf(h)}::timestamptz[])
       where (select ok from ok)
      on conflict (sku) do update
        set seq = excluded.seq, last_hash = excluded.last_hash, version = excluded.version, updated_at = excluded.updated_at
    ), policies as (
      insert into sku_locations (sku, location, safety_stock, reorder_point, status)
      select
        unnest(${col(sl, (r) => r.sku)}::text[]),
        unnest(${col(sl, (r) => r.location)}::text[]),
        unnest(${col(sl, (r) => r.safetyStock)}::bigint[]),
        unnest(${col(sl, (r) => r.reorderPoint)}::bigint[]),
        unnest(${col(sl, (r) => r.status)}::text[])
       where (select ok from ok)
      on conflict (sku, location) do update
        set safety_stock = excluded.safety_stock, reorder_point = excluded.reorder_point, status = excluded.status
    ), transfers_ as (
      insert into transfers (sku, transfer_id, from_location, to_location, shipped, received, shipped_value, received_value)
      select
        unnest(${col(tr, (r) => r.sku)}::text[]),
        unnest(${col(tr, (r) => r.transferId)}::text[]),
        unnest(${col(tr, (r) => r.from)}::text[]),
        unnest(${col(tr, (r) => r.to)}::text[]),
        unnest(${col(tr, (r) => r.shipped)}::bigint[]),
        unnest(${col(tr, (r) => r.received)}::bigint[]),
        unnest(${col(tr, (r) => nullableText(r.shippedValue))}::numeric[]),
        unnest(${col(tr, (r) => nullableText(r.receivedValue))}::numeric[])
       where (select ok from ok)
      on conflict (sku, transfer_id) do update
        set shipped = excluded.shipped, received = excluded.received,
            shipped_value = excluded.shipped_value, received_value = excluded.received_value
    ), settled as (
      delete from transfers t
       using unnest(${col(st, (r) => r.sku)}::text[], ${col(st, (r) => r.transferId)}::text[]) as d(s, i)
       where t.sku = d.s and t.transfer_id = d.i and (select ok from ok)
    ), holds_ as (
      insert into holds (sku, hold_id, location, channel, qty, open_qty, status, expires_at, updated_at)
      select
        unnest(${col(ho, (r) => r.sku)}::text[]),
        unnest(${col(ho, (r) => r.holdId)}::text[]),
        unnest(${col(ho, (r) => r.location)}::text[]),
        unnest(${col(ho, (r) => r.channel)}::text[]),
        unnest(${col(ho, (r) => r.qty)}::bigint[]),
        unnest(${col(ho, (r) => r.open)}::bigint[]),
        unnest(${col(ho, (r) => r.status)}::text[]),
        unnest(${col(ho, (r) => r.expiresAt)}::timestamptz[]),
        unnest(${timeOf(ho)}::timestamptz[])
       where (select ok from ok)
      on conflict (sku, hold_id) do update
        set open_qty = excluded.open_qty, status = excluded.status, updated_at = excluded.updated_at
    ), outcomes as (
      insert into command_outcomes (command_id, partition, stream_seq, sku, type, status, reason, detail, recorded_at)
      select
        unnest(${col(o, (r) => r.commandId)}::text[]),
        unnest(${partitionOf(o)}::int[]),
        unnest(${col(o, (r) => r.streamSeq)}::bigint[]),
        unnest(${col(o, (r) => r.sku)}::text[]),
        unnest(${col(o, (r) => r.type)}::text[]),
        unnest(${col(o, (r) => r.status)}::text[]),
        unnest(${col(o, (r) => r.reason)}::text[]),
        unnest(${col(o, (r) => (r.detail === null || r.detail === undefined ? null : JSON.stringify(r.detail, quantityJson)))}::jsonb[]),
        unnest(${timeOf(o)}::timestamptz[])
       where (select ok from ok)
    ), outbox_ as (
      insert into outbox (kind, subject, kv_key, payload, source_at, source)
      select
        unnest(${col(ob, (r) => r.kind)}::text[]),
        unnest(${col(ob, (r) => r.subject)}::text[]),
        unnest(${col(ob, (r) => r.kvKey)}::text[]),
        unnest(${col(ob, (r) => JSON.stringify(r.payload, quantityJson))}::jsonb[]),
        unnest(${col(ob, (r) => r.sourceAt?.toISOString() ?? null)}::timestamptz[]),
        unnest(${col(ob, (r) => r.source ?? null)}::text[])
       where (select ok from ok)
      returning 1
    ), notify as (
      select pg_notify(${OUTBOX_CHANNEL}, '') where exists (select from outbox_)
    )
    select (select ok from ok) as ok, array(select partition from held order by partition) as held,
           (select count(*) from notify)::int as notified`;
  return { ok, held: new Set(held) };
}

/**
 * Which of these command ids were decided before (applied or rejected): an outcome, an archived outcome
 * (moved there by the pruner past the idempotency horizon), or a ledger entry of the command (archived
 * outcomes are pruned in their turn; an entry's key in ledger_entry_keys never is, even when its month
 * is archived). Without the last two, a duplicate older
 * than the horizon would trip the ledger's unique (command_id, leg) key on every attempt.
 */
export async function knownCommandIds(sql: Sql, ids: ReadonlyArray<string>): Promise<Set<string>> {
  if (ids.length === 0) return new Set();
  const rows = await sql<Array<{ command_id: string }>>`
    with ids as (select unnest(${sql.array(ids as Array<string>)}::text[]) as id)
    select command_id from command_outcomes where command_id in (select id from ids)
    union
    select command_id from command_outcomes_archive where command_id in (select id from ids)
    union
    select command_id from ledger_entry_keys where command_id in (select id from ids)`;
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

interface HoldDbRow {
  sku: string;
  hold_id: string;
  location: string;
  channel: string | null;
  qty: number;
  open_qty: number;
  status: string;
  expires_at: Date | null;
}

const holdOf = (h: HoldDbRow): HoldRow => ({
  sku: h.sku,
  holdId: h.hold_id,
  location: h.location,
  channel: h.channel,
  qty: h.qty,
  open: h.open_qty,
  status: h.status,
  expiresAt: h.expires_at === null ? null : h.expires_at.toISOString(),
});

/**
 * In one query: the open holds of `openOf` (SKUs being activated) and the stored holds among the
 * `named` (SKU, hold id) pairs, whatever their status (a live actor keeps only its open holds).
 */
export async function loadHolds(
  sql: Sql,
  openOf: ReadonlyArray<string>,
  named: ReadonlyArray<{ readonly sku: string; readonly holdId: string }>,
): Promise<Array<HoldRow>> {
  if (openOf.length === 0 && named.length === 0) return [];
  const rows = await sql<Array<HoldDbRow>>`
    select sku, hold_id, location, channel, qty, open_qty, status, expires_at
      from holds where sku = any(${sql.array(openOf as Array<string>)}::text[]) and status = 'open'
    union
    select h.sku, h.hold_id, h.location, h.channel, h.qty, h.open_qty, h.status, h.expires_at
      from unnest(${sql.array(named.map((n) => n.sku))}::text[], ${sql.array(named.map((n) => n.holdId))}::text[]) as t(s, i)
      -- Lateral: one primary-key probe per named hold. A plain join let the cached generic plan hash the
      -- few names and scan every hold ever placed (seen in the steady bench: 2,000 rows read per batch).
      cross join lateral (select * from holds where sku = t.s and hold_id = t.i) h`;
  return rows.map(holdOf);
}

/** Loads the stored state of many SKUs in four queries (their holds: `loadHolds`). */
export async function loadSkus(sql: Sql, skus: ReadonlyArray<string>): Promise<Map<string, StoredSku>> {
  const out = new Map<
    string,
    { head: SkuHeadRow | undefined; balances: Array<BalanceRow>; locations: Array<SkuLocationRow>; transfers: Array<TransferRow> }
  >();
  for (const sku of skus) out.set(sku, { head: undefined, balances: [], locations: [], transfers: [] });
  if (skus.length === 0) return out;
  const list = sql.array(skus as Array<string>);
  const [heads, balances, locations, transfers] = await Promise.all([
    sql<Array<{ sku: string; seq: number; last_hash: string; version: number }>>`
      select sku, seq, last_hash, version from sku_heads where sku = any(${list}::text[])`,
    sql<Array<BalanceRow & { last_unit_cost: string | null; value: string | null; cost_layers: unknown }>>`
      select sku, location, bucket, qty, value, last_unit_cost, cost_layers from balances where sku = any(${list}::text[])`,
    sql<Array<{ sku: string; location: string; safety_stock: number; reorder_point: number; status: string }>>`
      select sku, location, safety_stock, reorder_point, status from sku_locations where sku = any(${list}::text[])`,
    sql<
      Array<{
        sku: string;
        transfer_id: string;
        from_location: string;
        to_location: string;
        shipped: number;
        received: number;
        shipped_value: string | null;
        received_value: string | null;
      }>
    >`
      select sku, transfer_id, from_location, to_location, shipped, received, shipped_value, received_value
        from transfers where sku = any(${list}::text[])`,
  ]);
  for (const h of heads) out.get(h.sku)!.head = { sku: h.sku, seq: h.seq, lastHash: h.last_hash, version: h.version };
  for (const b of balances)
    out.get(b.sku)!.balances.push({
      sku: b.sku,
      location: b.location,
      bucket: b.bucket,
      qty: b.qty,
      value: b.value === null ? null : BigInt(b.value),
      lastUnitCost: b.last_unit_cost === null ? null : BigInt(b.last_unit_cost),
      layers: layersOfJson(b.cost_layers),
    });
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
      shippedValue: t.shipped_value === null ? null : BigInt(t.shipped_value),
      receivedValue: t.received_value === null ? null : BigInt(t.received_value),
    });
  return out;
}
