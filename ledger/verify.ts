import type { Sql, TransactionSql } from "postgres";
import { GENESIS_HASH, entryHash } from "./hash.ts";
import { verifyHolds } from "./verifyHolds.ts";
import { type VerifyProblem, skuProblem } from "./verifyProblem.ts";
import { type EntryRow, hashedEntry } from "./entryRow.ts";
import { type ChainState, readCut } from "./archiveCut.ts";

export type { ChainState };
import type { CostLayer, LocationValue, ValuationMethod } from "./valuation.ts";
import { ValuationReplay, VALUED_BUCKETS, bucketKey } from "./verifyValuation.ts";

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
  const method = await recordedValuationMethod(sql);
  const cursor = sql<Array<EntryRow>>`
    select entry_id, command_id, leg, sku, location, bucket, delta, balance_after, movement, source_system,
           source_ref, occurred_at, recorded_at, sku_seq, value, unit_cost, valuation_flag, prev_hash, hash
      from ledger_entries order by sku, sku_seq`.cursor(2000);
  const chains = await walkChains(cursor, method, await readCut(sql), opts);
  const { entries, skus } = chains;
  if (chains.problem) return { ok: false, entries, skus, balances: 0, problem: chains.problem };
  const balances = await checkBalances(sql, chains.sums, chains.valuations);
  const problem =
    balances.problem ??
    missingBalanceRow(chains.sums, balances.seen) ??
    (await checkTransitValues(sql)) ??
    (await checkHeads(sql, chains.heads)) ??
    (await verifyHolds(sql));
  return { ok: problem === null, entries, skus, balances: balances.rows, problem };
}

/** The ledger's recorded valuation method (moving average when none is: nothing was valued by another). */
async function recordedValuationMethod(sql: TransactionSql): Promise<ValuationMethod> {
  const [row] = await sql<Array<{ value: string }>>`select value from tally_meta where key = 'valuation_method'`;
  return row?.value === "fifo" ? "fifo" : "moving_average";
}

/** The last part of the key (`location\u0000bucket\u0000$value`) under which a SKU's sums keep a bucket's total value. */
const VALUE = "$value";
const valueKey = (location: string, bucket: string): string => `${location}\u0000${bucket}\u0000${VALUE}`;

/** Per SKU, per `location\u0000bucket` (and `location\u0000bucket\u0000$value`): what its entries sum to. */
type Sums = Map<string, Map<string, bigint>>;
/** Per SKU, per `location\u0000bucket`: the valuation its entries replay to. */
type Valuations = Map<string, ReadonlyMap<string, LocationValue>>;
type Heads = Map<string, { seq: number; hash: string }>;

/** What a walk over chains found: the first problem, and each SKU's state at the end. */
export interface ChainWalk {
  readonly entries: number;
  readonly skus: number;
  readonly problem: VerifyProblem | null;
  readonly sums: Sums;
  readonly heads: Heads;
  readonly valuations: Valuations;
}

/**
 * Walks every SKU's chain in order (rows in (sku, sku_seq) order): sequence, prev_hash, running
 * balance, valuation and hash of each entry. A SKU in `start` resumes from that state (the archive's
 * cut) instead of the genesis hash; one with no entries in `rows` ends where it started.
 */
export async function walkChains(
  rows: AsyncIterable<ReadonlyArray<EntryRow>>,
  method: ValuationMethod,
  start: ReadonlyMap<string, ChainState>,
  opts: { onProgress?: (entries: number) => void } = {},
): Promise<ChainWalk> {
  let entries = 0;
  let skus = 0;
  let sku: string | null = null;
  let prevHash = GENESIS_HASH;
  let expectedSeq = 1;
  /** The entry id of the SKU's previous entry in this walk: chain order and entry order agree. */
  let prevEntryId = 0;
  let sums = new Map<string, bigint>();
  let replay = new ValuationReplay(method);
  const heads: Heads = new Map();
  const allSums: Sums = new Map();
  const valuations: Valuations = new Map();
  const finishSku = () => {
    if (sku !== null) {
      heads.set(sku, { seq: expectedSeq - 1, hash: prevHash });
      allSums.set(sku, sums);
      valuations.set(sku, replay.states);
    }
  };
  const onHandOf = (location: string) => sums.get(bucketKey(location, "on_hand")) ?? 0n;
  const endOfRows = () => {
    finishSku();
    for (const [s, state] of start) {
      if (heads.has(s)) continue;
      heads.set(s, { seq: state.seq, hash: state.hash });
      allSums.set(s, new Map(state.sums));
      valuations.set(s, state.valuations);
    }
  };

  for await (const batch of rows) {
    for (const r of batch) {
      entries++;
      if (r.sku !== sku) {
        finishSku();
        sku = r.sku;
        skus++;
        const from = start.get(r.sku);
        prevHash = from?.hash ?? GENESIS_HASH;
        expectedSeq = (from?.seq ?? 0) + 1;
        prevEntryId = 0;
        sums = new Map(from?.sums ?? []);
        replay = new ValuationReplay(method);
        for (const [k, v] of from?.valuations ?? []) replay.states.set(k, v);
      }
      const key = `${r.location}\u0000${r.bucket}`;
      // Exact: a balance may pass 2^53 (the driver returns such values as bigints).
      const running = (sums.get(key) ?? 0n) + BigInt(r.delta);
      sums.set(key, running);
      // Each valued entry's value adds to its bucket's value (kept under a key no bucket has).
      if (r.value !== null && r.value !== undefined) {
        const vk = valueKey(r.location, r.bucket);
        sums.set(vk, (sums.get(vk) ?? 0n) + BigInt(r.value));
      }
      // on_hand before this entry (a damaged return is valued at the location's current cost).
      const onHandBefore = (location: string) => onHandOf(location) - (r.bucket === "on_hand" ? BigInt(r.delta) : 0n);
      const message = entryProblem(r, prevHash, expectedSeq, prevEntryId, running) ?? replay.check(r, onHandBefore);
      if (message !== null) {
        const problem = { sku: r.sku, entryId: r.entry_id, commandId: r.command_id, message };
        return { entries, skus, problem, sums: allSums, heads, valuations };
      }
      prevHash = r.hash;
      prevEntryId = Number(r.entry_id);
      expectedSeq++;
      if (entries % 100_000 === 0) opts.onProgress?.(entries);
    }
  }
  endOfRows();
  return { entries, skus, problem: null, sums: allSums, heads, valuations };
}

/** What is wrong with one entry, given the chain before it; null when nothing is. */
function entryProblem(r: EntryRow, prevHash: string, expectedSeq: number, prevEntryId: number, running: bigint): string | null {
  if (r.sku_seq !== expectedSeq) return `sequence ${r.sku_seq} where ${expectedSeq} was expected (entry missing or reordered)`;
  // The entries API pages one SKU in sku_seq order as entry order (migration 0104): they must agree.
  if (Number(r.entry_id) <= prevEntryId)
    return `entry ${r.entry_id} at sequence ${r.sku_seq} is numbered before entry ${prevEntryId} at the sequence before it (entry re-inserted, or written out of order)`;
  if (r.prev_hash !== prevHash) return `prev_hash does not match the hash of sequence ${expectedSeq - 1}`;
  if (running !== BigInt(r.balance_after)) return `balance_after ${r.balance_after} but the entries sum to ${running} (${r.location}/${r.bucket})`;
  const recomputed = entryHash(prevHash, hashedEntry(r));
  return recomputed !== r.hash ? "hash does not match its contents (entry altered)" : null;
}

/** Every balance row against its entries' sum; also which rows exist (`sku\0location\0bucket`). */
async function checkBalances(
  sql: TransactionSql,
  allSums: Sums,
  valuations: Valuations,
): Promise<{ rows: number; seen: Set<string>; problem: VerifyProblem | null }> {
  let rows = 0;
  const seen = new Set<string>();
  const balanceCursor = sql<Array<BalanceValueRow & { qty: number | bigint }>>`
    select sku, location, bucket, qty, value, last_unit_cost, cost_layers from balances order by sku, location, bucket`.cursor(5000);
  for await (const batch of balanceCursor) {
    for (const b of batch) {
      rows++;
      const key = `${b.location}\u0000${b.bucket}`;
      seen.add(`${b.sku}\u0000${key}`);
      const expected = allSums.get(b.sku)?.get(key) ?? 0n;
      const message =
        expected !== BigInt(b.qty)
          ? `balance ${b.location}/${b.bucket} is ${b.qty} but its entries sum to ${expected}`
          : (valueProblem(b, allSums) ?? costProblem(b, valuations.get(b.sku)?.get(key)));
      if (message !== null) return { rows, seen, problem: skuProblem(b.sku, message) };
    }
  }
  return { rows, seen, problem: null };
}

interface BalanceValueRow {
  sku: string;
  location: string;
  bucket: string;
  value: string | null;
  last_unit_cost: string | null;
  cost_layers: ReadonlyArray<[string, string]> | null;
}

/** A valued row's value against the sum of its entries' values (a null value, from before valuation, is 0). */
function valueProblem(b: BalanceValueRow, allSums: Sums): string | null {
  if (!VALUED_BUCKETS.has(b.bucket)) return null;
  const expected = allSums.get(b.sku)?.get(valueKey(b.location, b.bucket)) ?? 0n;
  const stored = b.value === null ? 0n : BigInt(b.value);
  const where = b.bucket === "on_hand" ? b.location : `${b.location}/${b.bucket}`;
  return stored === expected ? null : `value of ${where} is ${stored} but its entries' values sum to ${expected}`;
}

const layersText = (layers: ReadonlyArray<CostLayer> | undefined): string => (layers ?? []).map((l) => `${l.qty}@${l.value}`).join(" ");

/**
 * What the next entries will be valued from, against the replay: the last unit cost (on_hand,
 * damaged) and the FIFO layers (on_hand), where valued entries touched the row.
 */
function costProblem(b: BalanceValueRow, replayed: LocationValue | undefined): string | null {
  if (replayed === undefined || (b.bucket !== "on_hand" && b.bucket !== "damaged")) return null;
  const where = b.bucket === "on_hand" ? b.location : `${b.location}/${b.bucket}`;
  const last = b.last_unit_cost === null ? null : BigInt(b.last_unit_cost);
  if (last !== replayed.lastUnitCost) return `last unit cost of ${where} is ${last} but its entries give ${replayed.lastUnitCost}`;
  if (b.bucket !== "on_hand" || (b.cost_layers === null && replayed.layers === undefined)) return null;
  const stored = layersText((b.cost_layers ?? []).map(([qty, value]) => ({ qty: BigInt(qty), value: BigInt(value) })));
  const expected = layersText(replayed.layers);
  return stored === expected ? null : `FIFO layers of ${where} are [${stored}] but its entries give [${expected}]`;
}

/** What is in transit to each location is worth what its open transfers still carry (shipped − received value). */
async function checkTransitValues(sql: TransactionSql): Promise<VerifyProblem | null> {
  const [row] = await sql<Array<{ sku: string; location: string; value: string; carried: string }>>`
    select b.sku, b.location, coalesce(b.value, 0)::text as value, coalesce(t.carried, 0)::text as carried
      from balances b
      left join (select sku, to_location, sum(coalesce(shipped_value, 0) - coalesce(received_value, 0)) as carried
                   from transfers group by sku, to_location) t on t.sku = b.sku and t.to_location = b.location
     where b.bucket = 'in_transit' and coalesce(b.value, 0) <> coalesce(t.carried, 0)
     order by b.sku, b.location limit 1`;
  return row ? skuProblem(row.sku, `value in transit to ${row.location} is ${row.value} but its open transfers carry ${row.carried}`) : null;
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
