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
  if (!(await batchStatement(sql, b))) throw new LeaseLost(b.partition, b.epoch);
}

/**
 * Commits the batches of several partitions in one transaction (one commit, one WAL flush): each
 * batch is its own statement, fenced by its own partition's checkpoint row exactly as `commitBatch`
 * fences it, so a batch whose lease epoch is no longer current writes nothing while the others
 * commit. Returns, per batch in the order given, whether its fence held (false: LeaseLost for that
 * partition, nothing of it written). A statement that fails (a duplicate command id, a data error)
 * rolls the whole transaction back and the error is thrown: the caller commits the batches one by
 * one to find whose it was.
 */
export async function commitGroup(sql: Sql, batches: ReadonlyArray<BatchWrite>): Promise<Array<boolean>> {
  if (batches.length === 0) return [];
  // Partition order: two transactions that meet on checkpoint rows (a takeover) lock them in one order.
  const order = batches.map((_, i) => i).sort((x, y) => batches[x]!.partition - batches[y]!.partition);
  const fenced = new Array<boolean>(batches.length).fill(false);
  await sql.begin(async (tx) => {
    // Issued together: postgres.js pipelines them on the transaction's connection.
    const results = await Promise.all(order.map((i) => batchStatement(tx as unknown as Sql, batches[i]!)));
    order.forEach((i, k) => {
      fenced[i] = results[k]!;
    });
  });
  return fenced;
}

/** One batch's statement: true if its fence held (everything written), false if it wrote nothing (epoch moved on). */
async function batchStatement(sql: Sql, b: BatchWrite): Promise<boolean> {
  const col = <T>(rows: ReadonlyArray<T>, f: (r: T) => string | number | null) => arrayParam(rows.map(f));
  const e = b.entries;
  const bal = b.balances;
  const h = b.heads;
  const sl = b.skuLocations;
  const tr = b.transfers;
  const st = b.settledTransfers;
  const ho = b.holds;
  const o = b.outcomes;
  const ob = b.outbox;
  const [{ fenced }] = await sql<[{ fenced: number; notified: number }]>`
    with fence as (
      update partition_checkpoints
         set last_seq = greatest(last_seq, ${b.lastSeq}), updated_at = ${b.recordedAt}
       where partition = ${b.partition} and lease_epoch = ${b.epoch}
      returning 1
    ), entries as (
      insert into ledger_entries (command_id, leg, sku, location, bucket, delta, balance_after, movement,
                                  source_system, source_ref, occurred_at, recorded_at, sku_seq, prev_hash, hash,
                                  value, unit_cost, valuation_flag)
      select u.* from unnest(
        ${col(e, (r) => r.commandId)}::text[],
        ${col(e, (r) => r.leg)}::smallint[],
        ${col(e, (r) => r.sku)}::text[],
        ${col(e, (r) => r.location)}::text[],
        ${col(e, (r) => r.bucket)}::text[],
        ${col(e, (r) => String(r.delta))}::bigint[],
        ${col(e, (r) => String(r.balanceAfter))}::bigint[],
        ${col(e, (r) => r.movement)}::text[],
        ${col(e, (r) => r.sourceSystem)}::text[],
        ${col(e, (r) => r.sourceRef)}::text[],
        ${col(e, (r) => r.occurredAt.toISOString())}::timestamptz[],
        ${col(e, (r) => r.recordedAt.toISOString())}::timestamptz[],
        ${col(e, (r) => r.skuSeq)}::bigint[],
        ${col(e, (r) => r.prevHash)}::text[],
        ${col(e, (r) => r.hash)}::text[],
        ${col(e, (r) => nullableText(r.value))}::numeric[],
        ${col(e, (r) => nullableText(r.unitCost))}::numeric[],
        ${col(e, (r) => r.valuationFlag ?? null)}::text[]
      ) as u where exists (select from fence)
    ), balances_ as (
      insert into balances (sku, location, bucket, qty, value, last_unit_cost, cost_layers, updated_at)
      select s, l, bu, q, v, lc, cl, ${b.recordedAt} from unnest(
        ${col(bal, (r) => r.sku)}::text[],
        ${col(bal, (r) => r.location)}::text[],
        ${col(bal, (r) => r.bucket)}::text[],
        ${col(bal, (r) => String(r.qty))}::bigint[],
        ${col(bal, (r) => nullableText(r.value))}::numeric[],
        ${col(bal, (r) => nullableText(r.lastUnitCost))}::numeric[],
        ${col(bal, (r) => layersJson(r.layers))}::jsonb[]
      ) as t(s, l, bu, q, v, lc, cl) where exists (select from fence)
      on conflict (sku, location, bucket) do update
        set qty = excluded.qty, value = excluded.value, last_unit_cost = excluded.last_unit_cost, cost_layers = excluded.cost_layers,
            updated_at = excluded.updated_at
    ), heads as (
      insert into sku_heads (sku, seq, last_hash, version, updated_at)
      select s, q, lh, v, ${b.recordedAt} from unnest(
        ${col(h, (r) => r.sku)}::text[],
        ${col(h, (r) => r.seq)}::bigint[],
        ${col(h, (r) => r.lastHash)}::text[],
        ${col(h, (r) => r.version)}::bigint[]
      ) as t(s, q, lh, v) where exists (select from fence)
      on conflict (sku) do update
        set seq = excluded.seq, last_hash = excluded.last_hash, version = excluded.version, updated_at = excluded.updated_at
    ), policies as (
      insert into sku_locations (sku, location, safety_stock, reorder_point, status)
      select u.* from unnest(
        ${col(sl, (r) => r.sku)}::text[],
        ${col(sl, (r) => r.location)}::text[],
        ${col(sl, (r) => r.safetyStock)}::bigint[],
        ${col(sl, (r) => r.reorderPoint)}::bigint[],
        ${col(sl, (r) => r.status)}::text[]
      ) as u where exists (select from fence)
      on conflict (sku, location) do update
        set safety_stock = excluded.safety_stock, reorder_point = excluded.reorder_point, status = excluded.status
    ), transfers_ as (
      insert into transfers (sku, transfer_id, from_location, to_location, shipped, received, shipped_value, received_value)
      select u.* from unnest(
        ${col(tr, (r) => r.sku)}::text[],
        ${col(tr, (r) => r.transferId)}::text[],
        ${col(tr, (r) => r.from)}::text[],
        ${col(tr, (r) => r.to)}::text[],
        ${col(tr, (r) => r.shipped)}::bigint[],
        ${col(tr, (r) => r.received)}::bigint[],
        ${col(tr, (r) => nullableText(r.shippedValue))}::numeric[],
        ${col(tr, (r) => nullableText(r.receivedValue))}::numeric[]
      ) as u where exists (select from fence)
      on conflict (sku, transfer_id) do update
        set shipped = excluded.shipped, received = excluded.received,
            shipped_value = excluded.shipped_value, received_value = excluded.received_value
    ), settled as (
      delete from transfers t
       using unnest(${col(st, (r) => r.sku)}::text[], ${col(st, (r) => r.transferId)}::text[]) as d(s, i)
       where t.sku = d.s and t.transfer_id = d.i and exists (select from fence)
    ), holds_ as (
      insert into holds (sku, hold_id, location, channel, qty, open_qty, status, expires_at, updated_at)
      select s, i, l, c, q, oq, stt, ea, ${b.recordedAt} from unnest(
        ${col(ho, (r) => r.sku)}::text[],
        ${col(ho, (r) => r.holdId)}::text[],
        ${col(ho, (r) => r.location)}::text[],
        ${col(ho, (r) => r.channel)}::text[],
        ${col(ho, (r) => r.qty)}::bigint[],
        ${col(ho, (r) => r.open)}::bigint[],
        ${col(ho, (r) => r.status)}::text[],
        ${col(ho, (r) => r.expiresAt)}::timestamptz[]
      ) as t(s, i, l, c, q, oq, stt, ea) where exists (select from fence)
      on conflict (sku, hold_id) do update
        set open_qty = excluded.open_qty, status = excluded.status, updated_at = excluded.updated_at
    ), outcomes as (
      insert into command_outcomes (command_id, partition, stream_seq, sku, type, status, reason, detail, recorded_at)
      select c, ${b.partition}, q, s, ty, stt, r, d, ${b.recordedAt} from unnest(
        ${col(o, (r) => r.commandId)}::text[],
        ${col(o, (r) => r.streamSeq)}::bigint[],
        ${col(o, (r) => r.sku)}::text[],
        ${col(o, (r) => r.type)}::text[],
        ${col(o, (r) => r.status)}::text[],
        ${col(o, (r) => r.reason)}::text[],
        ${col(o, (r) => (r.detail === null || r.detail === undefined ? null : JSON.stringify(r.detail, quantityJson)))}::jsonb[]
      ) as t(c, q, s, ty, stt, r, d) where exists (select from fence)
    ), outbox_ as (
      insert into outbox (kind, subject, kv_key, payload, source_at, source)
      select u.* from unnest(
        ${col(ob, (r) => r.kind)}::text[],
        ${col(ob, (r) => r.subject)}::text[],
        ${col(ob, (r) => r.kvKey)}::text[],
        ${col(ob, (r) => JSON.stringify(r.payload, quantityJson))}::jsonb[],
        ${col(ob, (r) => r.sourceAt?.toISOString() ?? null)}::timestamptz[],
        ${col(ob, (r) => r.source ?? null)}::text[]
      ) as u where exists (select from fence)
      returning 1
    ), notify as (
      select pg_notify(${OUTBOX_CHANNEL}, '') where exists (select from outbox_)
    )
    select (select count(*) from fence)::int as fenced, (select count(*) from notify)::int as notified`;
  return fenced === 1;
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
  const rows = await freshPlan<HoldDbRow>(
    sql,
    `select sku, hold_id, location, channel, qty, open_qty, status, expires_at
       from holds where sku = any($1::text[]) and status = 'open'
     union
     select h.sku, h.hold_id, h.location, h.channel, h.qty, h.open_qty, h.status, h.expires_at
       from unnest($2::text[], $3::text[]) as t(s, i)
       -- Lateral: one primary-key probe per named hold. A plain join let the planner hash the few names
       -- and scan every hold ever placed (seen in the steady bench: 2,000 rows read per batch).
       cross join lateral (select * from holds where sku = t.s and hold_id = t.i) h`,
    [arrayParam(openOf), arrayParam(named.map((n) => n.sku)), arrayParam(named.map((n) => n.holdId))],
  );
  return rows.map(holdOf);
}

/**
 * A lookup of the SKUs being activated, planned for the arguments it is given on every call (an
 * unnamed statement), not from a plan cached on the connection. A cached generic plan is made once
 * and kept until the table is analyzed again: made while a table is nearly empty (a new ledger, a
 * catalog onboarded through CDC, new SKUs arriving by the thousand), it scans the whole table on
 * every activation as the table grows, until autovacuum gets to it (seen in the 1,000,000-SKU bench:
 * a sequential scan of 28,000 balances a call, the lookups 88% of the ledger's Postgres time). A
 * fresh plan costs a parse and a plan per call, a fraction of a millisecond for these.
 */
function freshPlan<T>(sql: Sql, text: string, parameters: Array<string>): Promise<Array<T>> {
  // Arrays as literals (arrayParam): before a pool has fetched its array types (its first query), the
  // driver serialises a one-element array parameter of an unnamed statement as its element type.
  return sql.unsafe(text, parameters, { prepare: false }) as unknown as Promise<Array<T>>;
}

/** Loads the stored state of many SKUs in four queries (their holds: `loadHolds`); each planned afresh (`freshPlan`). */
export async function loadSkus(sql: Sql, skus: ReadonlyArray<string>): Promise<Map<string, StoredSku>> {
  const out = new Map<
    string,
    { head: SkuHeadRow | undefined; balances: Array<BalanceRow>; locations: Array<SkuLocationRow>; transfers: Array<TransferRow> }
  >();
  for (const sku of skus) out.set(sku, { head: undefined, balances: [], locations: [], transfers: [] });
  if (skus.length === 0) return out;
  const list = arrayParam(skus);
  const [heads, balances, locations, transfers] = await Promise.all([
    freshPlan<{ sku: string; seq: number; last_hash: string; version: number }>(
      sql,
      "select sku, seq, last_hash, version from sku_heads where sku = any($1::text[])",
      [list],
    ),
    freshPlan<BalanceRow & { last_unit_cost: string | null; value: string | null; cost_layers: unknown }>(
      sql,
      "select sku, location, bucket, qty, value, last_unit_cost, cost_layers from balances where sku = any($1::text[])",
      [list],
    ),
    freshPlan<{ sku: string; location: string; safety_stock: number; reorder_point: number; status: string }>(
      sql,
      "select sku, location, safety_stock, reorder_point, status from sku_locations where sku = any($1::text[])",
      [list],
    ),
    freshPlan<{
      sku: string;
      transfer_id: string;
      from_location: string;
      to_location: string;
      shipped: number;
      received: number;
      shipped_value: string | null;
      received_value: string | null;
    }>(
      sql,
      `select sku, transfer_id, from_location, to_location, shipped, received, shipped_value, received_value
         from transfers where sku = any($1::text[])`,
      [list],
    ),
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
