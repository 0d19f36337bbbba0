import type { Sql, TransactionSql } from "postgres";
import { GENESIS_HASH, entryHash } from "./hash.ts";
import { verifyHolds } from "./verifyHolds.ts";
import { type VerifyProblem, skuProblem } from "./verifyProblem.ts";
import { type EntryRow, hashedEntry } from "./entryRow.ts";
import { type LocationValue, noValue, valueLeg } from "./valuation.ts";

export type { VerifyProblem };

export interface VerifyReport {
  readonly ok: boolean;
  readonly entries: number;
  readonly skus: number;
  readonly balances: number;
  /** The first problem found, in (sku, sequence) order. */
  readonly problem: VerifyProblem | null;
}

/** What verify reads in: one transaction, so every statement sees the same snapshot. */
export const VERIFY_ISOLATION = "isolation level repeatable read read only";

/**
 * Recomputes every SKU's hash chain and every balance from the entries (streamed with a cursor, so
 * memory stays flat), and compares them with `balances` and `sku_heads` — all read in one
 * REPEATABLE READ snapshot. Entries and balances are read by separate statements; under READ
 * COMMITTED a batch committing between them made a healthy ledger look broken (a balance ahead of
 * the entries already read).
 */
export async function verifyLedger(sql: Sql, opts: { onProgress?: (entries: number) => void } = {}): Promise<VerifyReport> {
  return sql.begin(VERIFY_ISOLATION, (tx) => verifySnapshot(tx, opts));
}

/** The checks themselves, on a connection whose transaction holds one snapshot. */
async function verifySnapshot(sql: TransactionSql, opts: { onProgress?: (entries: number) => void }): Promise<VerifyReport> {
  const chains = await checkChains(sql, opts);
  const { entries, skus } = chains;
  if (chains.problem) return { ok: false, entries, skus, balances: 0, problem: chains.problem };
  const balances = await checkBalances(sql, chains.sums);
  const problem =
    balances.problem ?? missingBalanceRow(chains.sums, balances.seen) ?? (await checkHeads(sql, chains.heads)) ?? (await verifyHolds(sql));
  return { ok: problem === null, entries, skus, balances: balances.rows, problem };
}

/** The key (`location\0$value`) under which a SKU's sums keep a location's total value. */
const VALUE = "$value";

/** Per SKU, per `location\0bucket` (and `location\0$value`): what its entries sum to. */
type Sums = Map<string, Map<string, bigint>>;
type Heads = Map<string, { seq: number; hash: string }>;

/** Walks every SKU's chain in order: sequence, prev_hash, running balance and hash of each entry. */
async function checkChains(
  sql: TransactionSql,
  opts: { onProgress?: (entries: number) => void },
): Promise<{ entries: number; skus: number; problem: VerifyProblem | null; sums: Sums; heads: Heads }> {
  let entries = 0;
  let skus = 0;
  let sku: string | null = null;
  let prevHash = GENESIS_HASH;
  let expectedSeq = 1;
  let sums = new Map<string, bigint>();
  let values = new Map<string, LocationValue>();
  const heads: Heads = new Map();
  const allSums: Sums = new Map();
  const finishSku = () => {
    if (sku !== null) {
      heads.set(sku, { seq: expectedSeq - 1, hash: prevHash });
      allSums.set(sku, sums);
    }
  };

  const cursor = sql<Array<EntryRow>>`
    select entry_id, command_id, leg, sku, location, bucket, delta, balance_after, movement, source_system,
           source_ref, occurred_at, recorded_at, sku_seq, value, unit_cost, valuation_flag, prev_hash, hash
      from ledger_entries order by sku, sku_seq`.cursor(2000);
  for await (const rows of cursor) {
    for (const r of rows) {
      entries++;
      if (r.sku !== sku) {
        finishSku();
        sku = r.sku;
        skus++;
        prevHash = GENESIS_HASH;
        expectedSeq = 1;
        sums = new Map();
        values = new Map();
      }
      const key = `${r.location}\u0000${r.bucket}`;
      // Exact: a balance may pass 2^53 (the driver returns such values as bigints).
      const running = (sums.get(key) ?? 0n) + BigInt(r.delta);
      sums.set(key, running);
      // Each on_hand entry's value adds to its location's value (kept under a key no bucket has).
      if (r.value !== null && r.value !== undefined) {
        const valueKey = `${r.location}\u0000${VALUE}`;
        sums.set(valueKey, (sums.get(valueKey) ?? 0n) + BigInt(r.value));
      }
      const message = entryProblem(r, prevHash, expectedSeq, running) ?? valuationProblem(r, values);
      if (message !== null) {
        return { entries, skus, problem: { sku: r.sku, entryId: r.entry_id, commandId: r.command_id, message }, sums: allSums, heads };
      }
      prevHash = r.hash;
      expectedSeq++;
      if (entries % 100_000 === 0) opts.onProgress?.(entries);
    }
  }
  finishSku();
  return { entries, skus, problem: null, sums: allSums, heads };
}

/** What is wrong with one entry, given the chain before it; null when nothing is. */
function entryProblem(r: EntryRow, prevHash: string, expectedSeq: number, running: bigint): string | null {
  if (r.sku_seq !== expectedSeq) return `sequence ${r.sku_seq} where ${expectedSeq} was expected (entry missing or reordered)`;
  if (r.prev_hash !== prevHash) return `prev_hash does not match the hash of sequence ${expectedSeq - 1}`;
  if (running !== BigInt(r.balance_after)) return `balance_after ${r.balance_after} but the entries sum to ${running} (${r.location}/${r.bucket})`;
  const recomputed = entryHash(prevHash, hashedEntry(r));
  return recomputed !== r.hash ? "hash does not match its contents (entry altered)" : null;
}

/**
 * Replays the moving average over one on_hand entry: its value, unit cost and flag must be what the
 * rules give from the location's entries before it (entries from before valuation have none and
 * leave the location's value as it is). Updates `values`; null when the entry agrees.
 */
function valuationProblem(r: EntryRow, values: Map<string, LocationValue>): string | null {
  if (r.bucket !== "on_hand" || r.value === null || r.value === undefined) return null;
  const delta = BigInt(r.delta);
  const receipt = r.movement === "receive";
  const cost = receipt && r.valuation_flag !== "no_cost" && r.unit_cost !== null && r.unit_cost !== undefined ? BigInt(r.unit_cost) : null;
  const v = valueLeg(BigInt(r.balance_after) - delta, values.get(r.location) ?? noValue, delta, cost, receipt);
  values.set(r.location, v.after);
  const stored = `${r.value} at ${r.unit_cost} (${r.valuation_flag ?? "no flag"})`;
  const replayed = `${v.value} at ${v.unitCost} (${v.flag ?? "no flag"})`;
  return stored === replayed ? null : `value ${stored} but the moving average gives ${replayed} (${r.location})`;
}

/** Every balance row against its entries' sum; also which rows exist (`sku\0location\0bucket`). */
async function checkBalances(sql: TransactionSql, allSums: Sums): Promise<{ rows: number; seen: Set<string>; problem: VerifyProblem | null }> {
  let rows = 0;
  const seen = new Set<string>();
  const balanceCursor = sql<Array<{ sku: string; location: string; bucket: string; qty: number | bigint; value: string | null }>>`
    select sku, location, bucket, qty, value from balances order by sku, location, bucket`.cursor(5000);
  for await (const batch of balanceCursor) {
    for (const b of batch) {
      rows++;
      const key = `${b.location}\u0000${b.bucket}`;
      seen.add(`${b.sku}\u0000${key}`);
      const expected = allSums.get(b.sku)?.get(key) ?? 0n;
      const message =
        expected !== BigInt(b.qty) ? `balance ${b.location}/${b.bucket} is ${b.qty} but its entries sum to ${expected}` : valueProblem(b, allSums);
      if (message !== null) return { rows, seen, problem: skuProblem(b.sku, message) };
    }
  }
  return { rows, seen, problem: null };
}

/** An on_hand row's value against the sum of its location's entry values (a null value, from before valuation, is 0). */
function valueProblem(b: { sku: string; location: string; bucket: string; value: string | null }, allSums: Sums): string | null {
  if (b.bucket !== "on_hand") return null;
  const expected = allSums.get(b.sku)?.get(`${b.location}\u0000${VALUE}`) ?? 0n;
  const stored = b.value === null ? 0n : BigInt(b.value);
  return stored === expected ? null : `value of ${b.location} is ${stored} but its entries' values sum to ${expected}`;
}

/** A non-zero sum of entries with no balance row. */
function missingBalanceRow(allSums: Sums, seen: ReadonlySet<string>): VerifyProblem | null {
  for (const [s, m] of allSums) {
    for (const [key, total] of m) {
      if (total !== 0n && !key.endsWith(`\u0000${VALUE}`) && !seen.has(`${s}\u0000${key}`)) {
        const [location, bucket] = key.split("\u0000");
        return skuProblem(s, `entries sum to ${total} for ${location}/${bucket} but there is no balance row`);
      }
    }
  }
  return null;
}

/** `sku_heads` against the chains' ends, both ways. */
async function checkHeads(sql: TransactionSql, heads: Heads): Promise<VerifyProblem | null> {
  const storedHeads = await sql<Array<{ sku: string; seq: number; last_hash: string }>>`
    select sku, seq, last_hash from sku_heads where seq > 0 order by sku`;
  for (const h of storedHeads) {
    const computed = heads.get(h.sku);
    if (!computed || computed.seq !== h.seq || computed.hash !== h.last_hash) {
      return skuProblem(h.sku, `head says sequence ${h.seq} but the chain ends at ${computed?.seq ?? 0} (entries missing or head altered)`);
    }
  }
  if (storedHeads.length !== heads.size) {
    const stored = new Set(storedHeads.map((h) => h.sku));
    const missing = [...heads.keys()].find((s) => !stored.has(s));
    if (missing) return skuProblem(missing, "entries exist but the SKU has no head");
  }
  return null;
}
