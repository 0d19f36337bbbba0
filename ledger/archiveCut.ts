import type { Sql, TransactionSql } from "postgres";
import type { CostLayer, LocationValue } from "./valuation.ts";
import type { ChainState } from "./verify.ts";

/**
 * A chain state as JSON (the archive manifest and `ledger_archive_heads.state`): every integer a
 * decimal string, so nothing is rounded past 2^53.
 */
export interface ChainStateJson {
  readonly seq: number;
  readonly hash: string;
  /** [`location\u0000bucket` (or `…\u0000$value`), sum]. */
  readonly sums: ReadonlyArray<readonly [string, string]>;
  /** [`location\u0000bucket`, value, last unit cost, FIFO layers as [qty, value] or null]. */
  readonly valuations: ReadonlyArray<readonly [string, string, string | null, ReadonlyArray<readonly [string, string]> | null]>;
}

export const stateJson = (s: ChainState): ChainStateJson => ({
  seq: s.seq,
  hash: s.hash,
  sums: [...s.sums].map(([k, v]) => [k, String(v)] as const),
  valuations: [...s.valuations].map(
    ([k, v]) =>
      [
        k,
        String(v.value),
        v.lastUnitCost === null ? null : String(v.lastUnitCost),
        v.layers === undefined ? null : v.layers.map((l) => [String(l.qty), String(l.value)] as const),
      ] as const,
  ),
});

export const stateOfJson = (j: ChainStateJson): ChainState => ({
  seq: Number(j.seq),
  hash: j.hash,
  sums: new Map(j.sums.map(([k, v]) => [k, BigInt(v)])),
  valuations: new Map(
    j.valuations.map(([k, value, last, layers]) => {
      const v: LocationValue = {
        value: BigInt(value),
        lastUnitCost: last === null ? null : BigInt(last),
        ...(layers === null ? {} : { layers: layers.map(([qty, val]): CostLayer => ({ qty: BigInt(qty), value: BigInt(val) })) }),
      };
      return [k, v];
    }),
  ),
});

/** Every SKU's chain state at the cut of the archived months (empty when nothing is archived). */
export async function readCut(sql: Sql | TransactionSql): Promise<Map<string, ChainState>> {
  const rows = await sql<Array<{ sku: string; state: ChainStateJson }>>`select sku, state from ledger_archive_heads order by sku`;
  return new Map(rows.map((r) => [r.sku, stateOfJson(r.state)]));
}
