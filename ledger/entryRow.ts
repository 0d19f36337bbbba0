import type { HashedEntry } from "./hash.ts";

/** A `ledger_entries` row as the driver reads it (quantities past 2^53 come as bigints). */
export interface EntryRow {
  entry_id: number;
  command_id: string;
  leg: number;
  sku: string;
  location: string;
  bucket: string;
  delta: number | bigint;
  balance_after: number | bigint;
  movement: string;
  source_system: string;
  source_ref: string;
  occurred_at: Date;
  recorded_at: Date;
  sku_seq: number;
  /** numeric(38,0): read as a decimal string, or null (a reserved leg, or an entry from before valuation). */
  value?: string | null;
  unit_cost?: string | null;
  valuation_flag?: string | null;
  prev_hash: string;
  hash: string;
}

/** A numeric(38,0) money amount as JSON carries it: a number, a decimal string past 2^53, or null. */
export const moneyJson = (s: string | null | undefined): number | string | null => {
  if (s === null || s === undefined) return null;
  const n = Number(s);
  return Number.isSafeInteger(n) ? n : s;
};

/** A numeric(38,0) money amount as the hash covers it: a bigint, or null. */
const moneyBigInt = (s: string | null | undefined): bigint | null => (s === null || s === undefined ? null : BigInt(s));

/**
 * An entry as the API and the NDJSON export show it: camelCase, times as ISO strings. `unit` (the
 * export reads it with each row) stands after `balanceAfter`; where the row has none the key is
 * undefined, which JSON leaves out. `value` and `unitCost` (signed minor units) are numbers, decimal
 * strings past 2^53, or null with `valuationFlag` where the entry has none.
 */
export const entryJson = (r: EntryRow & { readonly unit?: string }) => ({
  entryId: r.entry_id,
  commandId: r.command_id,
  leg: r.leg,
  sku: r.sku,
  location: r.location,
  bucket: r.bucket,
  delta: r.delta,
  balanceAfter: r.balance_after,
  unit: r.unit,
  movement: r.movement,
  sourceSystem: r.source_system,
  sourceRef: r.source_ref,
  occurredAt: r.occurred_at.toISOString(),
  recordedAt: r.recorded_at.toISOString(),
  skuSeq: r.sku_seq,
  value: moneyJson(r.value),
  unitCost: moneyJson(r.unit_cost),
  valuationFlag: r.valuation_flag ?? null,
  prevHash: r.prev_hash,
  hash: r.hash,
});

/** The fields of a stored entry that its hash covers, as read back (times stay Dates). */
export const hashedEntry = (r: EntryRow): HashedEntry => ({
  commandId: r.command_id,
  leg: r.leg,
  sku: r.sku,
  location: r.location,
  bucket: r.bucket,
  delta: r.delta,
  balanceAfter: r.balance_after,
  movement: r.movement,
  sourceSystem: r.source_system,
  sourceRef: r.source_ref,
  occurredAt: r.occurred_at,
  recordedAt: r.recorded_at,
  skuSeq: r.sku_seq,
  value: moneyBigInt(r.value),
  unitCost: moneyBigInt(r.unit_cost),
  valuationFlag: r.valuation_flag ?? null,
});
