import type { ISql } from "postgres";
import type { CostLayer, LocationValue } from "./valuation.ts";

/**
 * One SKU's chain state after some entries: where its chain ends, what its entries sum to (per
 * `location\u0000bucket`, and `…\u0000$value`) and the valuation they replay to. An archive's cut
 * (ledger/archive.ts) records one per SKU, and verify resumes each chain from it.
 */
export interface ChainState {
  readonly seq: number;
  readonly hash: string;
  readonly sums: ReadonlyMap<string, bigint>;
  readonly valuations: ReadonlyMap<string, LocationValue>;
}

/**
 * A chain state as JSON (the archive manifest and `ledger_archive_heads.state`): every integer a
 * decimal string, so nothing is rounded past 2^53.
 */
export interface ChainStateJson {
  readonly seq: number;
  readonly hash: string;
  /** [[location, bucket] (or [location, bucket, "$value"]), sum]: jsonb holds no NUL, so the key goes as its parts. */
  readonly sums: ReadonlyArray<readonly [ReadonlyArray<string>, string]>;
  /** [[location, bucket], value, last unit cost, FIFO layers as [qty, value] or null]. */
  readonly valuations: ReadonlyArray<readonly [ReadonlyArray<string>, string, string | null, ReadonlyArray<readonly [string, string]> | null]>;
}

const NUL = "\u0000";

export const stateJson = (s: ChainState): ChainStateJson => ({
  seq: s.seq,
  hash: s.hash,
  sums: [...s.sums].map(([k, v]) => [k.split(NUL), String(v)] as const),
  valuations: [...s.valuations].map(
    ([k, v]) =>
      [
        k.split(NUL),
        String(v.value),
        v.lastUnitCost === null ? null : String(v.lastUnitCost),
        v.layers === undefined ? null : v.layers.map((l) => [String(l.qty), String(l.value)] as const),
      ] as const,
  ),
});

export const stateOfJson = (j: ChainStateJson): ChainState => ({
  seq: Number(j.seq),
  hash: j.hash,
  sums: new Map(j.sums.map(([k, v]) => [k.join(NUL), BigInt(v)])),
  valuations: new Map(
    j.valuations.map(([k, value, last, layers]) => {
      const v: LocationValue = {
        value: BigInt(value),
        lastUnitCost: last === null ? null : BigInt(last),
        ...(layers === null ? {} : { layers: layers.map(([qty, val]): CostLayer => ({ qty: BigInt(qty), value: BigInt(val) })) }),
      };
      return [k.join(NUL), v];
    }),
  ),
});

/** Every SKU's chain state at the cut of the archived months (empty when nothing is archived). */
export async function readCut(sql: ISql): Promise<Map<string, ChainState>> {
  const rows = await sql<Array<{ sku: string; state: ChainStateJson }>>`select sku, state from ledger_archive_heads order by sku`;
  return new Map(rows.map((r) => [r.sku, stateOfJson(r.state)]));
}
