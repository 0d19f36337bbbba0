/**
 * Valuation per (SKU, location), in integer minor units, by the company's method: moving weighted
 * average cost (default) or FIFO by receipt layer. Pure: the SKU's actor values each `on_hand`,
 * `damaged` and `in_transit` leg with `valueLeg` while it plans the batch, so an entry's value is
 * committed in the same statement as its quantity. (It lives with the ledger so that `tally ledger
 * verify` replays the same rules.)
 *
 * Moving average: the location keeps its total `value` exact; the average is derived (value /
 * on_hand). An incoming leg with a cost adds qty × cost; one without adds round(qty × value /
 * on_hand) (the average, which it leaves unchanged). An outgoing leg takes round(qty × value /
 * on_hand), so the last unit out takes exactly what is left. Units beyond what is on hand (a sale out
 * of empty or negative stock) go at the last known unit cost, flagged. Whenever on_hand comes to
 * exactly 0 the leg takes (or gives back) whatever value is left, so value is 0 at zero stock.
 *
 * FIFO: each incoming leg opens a layer (its qty and exact value) at the end; an outgoing leg takes
 * the oldest layers first, a layer it takes only part of giving round(part × value / qty) (so the
 * layer's last unit takes what is left of it); its value is the exact sum of what it took and its
 * unit cost their rounded average. Beyond stock, as above, at the last known cost (the newest layer's).
 *
 * A leg whose value is given (`amount`: a transfer's units arriving with the value they left the
 * origin with, or a damaged return at the location's current cost) adds exactly that.
 */

/** How a company values its stock (`finance.method` of tally.config.ts). */
export type ValuationMethod = "moving_average" | "fifo";

/** A FIFO layer: units that came in together, and their exact remaining value. */
export interface CostLayer {
  readonly qty: bigint;
  readonly value: bigint;
}

/** The valuation of one (SKU, location, bucket)'s stock. */
export interface LocationValue {
  /** Total value, in minor units (negative when the quantity is, at the last unit cost). */
  readonly value: bigint;
  /** The last known unit cost (what units beyond stock go at), or null if never known. */
  readonly lastUnitCost: bigint | null;
  /** FIFO on_hand only: the layers, oldest first (their quantities sum to on_hand when it is positive). */
  readonly layers?: ReadonlyArray<CostLayer>;
}

export const noValue: LocationValue = { value: 0n, lastUnitCost: null };

/**
 * Why an entry's value is not a plain qty × known cost: `no_cost` (an incoming leg of a receipt
 * that named no cost, or any leg with no cost known at all, valued at 0), `negative_stock` (units
 * out of empty or negative stock, valued at the last known cost), `currency_mismatch` (a receipt
 * whose currency is not the company's: applied, but valued as a receipt without cost).
 */
export type ValuationFlag = "no_cost" | "negative_stock" | "currency_mismatch";

export interface LegValue {
  /** Signed: what the leg adds to (or takes from) the location's value. */
  readonly value: bigint;
  /** The unit cost the leg was valued at. */
  readonly unitCost: bigint;
  readonly flag: ValuationFlag | null;
  /** The location's valuation after the leg. */
  readonly after: LocationValue;
}

export interface LegOptions {
  /** Default `moving_average`. */
  readonly method?: ValuationMethod;
  /** The leg's exact value, when it is given rather than computed (signed like the leg). */
  readonly amount?: bigint;
}

/** n / d rounded to the nearest integer, halves away from zero (d > 0). */
export function roundDiv(n: bigint, d: bigint): bigint {
  if (d <= 0n) throw new RangeError(`roundDiv: divisor ${d} must be positive`);
  const q = (2n * (n < 0n ? -n : n) + d) / (2n * d);
  return n < 0n ? -q : q;
}

const abs = (n: bigint): bigint => (n < 0n ? -n : n);

/** What a unit costs at the location now: the average of what is on hand, else the last known cost. */
export function currentCost(qty: bigint, at: LocationValue): bigint | null {
  return qty > 0n ? roundDiv(at.value, qty) : at.lastUnitCost;
}

/**
 * Values one leg of `delta` units, given the quantity before it and the valuation. `cost` is the
 * receipt's unit cost, or null; `receipt` says the leg is a goods receipt (which is flagged
 * `no_cost` when it has none).
 */
export function valueLeg(
  onHand: bigint,
  before: LocationValue,
  delta: bigint,
  cost: bigint | null,
  receipt: boolean,
  opts: LegOptions = {},
): LegValue {
  if (opts.method === "fifo" && (delta > 0n || opts.amount === undefined)) return fifoLeg(onHand, before, delta, cost, receipt, opts.amount);
  if (opts.amount !== undefined) return givenLeg(onHand, before, delta, opts.amount);
  return averageLeg(onHand, before, delta, cost, receipt);
}

/** A leg whose value is given, under moving average (or out of a pool). */
function givenLeg(onHand: bigint, before: LocationValue, delta: bigint, amount: bigint): LegValue {
  const onHandAfter = onHand + delta;
  const unitCost = roundDiv(abs(amount), abs(delta));
  const valueAfter = before.value + amount;
  const lastUnitCost = onHandAfter > 0n ? roundDiv(valueAfter, onHandAfter) : delta > 0n ? unitCost : (before.lastUnitCost ?? unitCost);
  return { value: amount, unitCost, flag: null, after: { value: valueAfter, lastUnitCost } };
}

function averageLeg(onHand: bigint, before: LocationValue, delta: bigint, cost: bigint | null, receipt: boolean): LegValue {
  const onHandAfter = onHand + delta;
  const average = currentCost(onHand, before);
  let value: bigint;
  let unitCost: bigint;
  let flag: ValuationFlag | null = null;
  if (delta > 0n) {
    if (cost !== null) {
      unitCost = cost;
      value = delta * cost;
    } else {
      unitCost = average ?? 0n;
      value = onHand > 0n ? roundDiv(delta * before.value, onHand) : delta * unitCost;
      if (receipt || average === null) flag = "no_cost";
    }
  } else {
    const qty = -delta;
    const covered = onHand > 0n ? (qty < onHand ? qty : onHand) : 0n;
    const beyond = qty - covered;
    const last = covered > 0n ? roundDiv(before.value, onHand) : (before.lastUnitCost ?? 0n);
    const coveredValue = covered === 0n ? 0n : covered === onHand ? before.value : roundDiv(covered * before.value, onHand);
    unitCost = covered > 0n ? last : (before.lastUnitCost ?? 0n);
    value = -(coveredValue + beyond * last);
    if (beyond > 0n) flag = before.lastUnitCost === null && covered === 0n ? "no_cost" : "negative_stock";
  }
  if (onHandAfter === 0n) value = -before.value;
  const valueAfter = before.value + value;
  const lastUnitCost = onHandAfter > 0n ? roundDiv(valueAfter, onHandAfter) : delta > 0n && cost !== null ? cost : (average ?? before.lastUnitCost);
  return { value, unitCost, flag, after: { value: valueAfter, lastUnitCost } };
}

/**
 * The layers of `onHand` units: none at zero or negative stock; the stored ones when they add up;
 * else (stock valued before FIFO layers were kept) one layer of all of it.
 */
function layersOf(onHand: bigint, before: LocationValue): ReadonlyArray<CostLayer> {
  if (onHand <= 0n) return [];
  const layers = before.layers ?? [];
  const qty = layers.reduce((n, l) => n + l.qty, 0n);
  return qty === onHand ? layers : [{ qty: onHand, value: before.value }];
}

const layerCost = (l: CostLayer): bigint => roundDiv(l.value, l.qty);

function fifoLeg(onHand: bigint, before: LocationValue, delta: bigint, cost: bigint | null, receipt: boolean, amount: bigint | undefined): LegValue {
  const layers = layersOf(onHand, before);
  return delta > 0n ? fifoIn(onHand, before, layers, delta, cost, receipt, amount) : fifoOut(onHand, before, layers, -delta);
}

/**
 * An incoming leg opens a layer. Into negative stock it first fills the hole: what is left on hand
 * is one layer holding the location's whole value after the leg.
 */
function fifoIn(
  onHand: bigint,
  before: LocationValue,
  layers: ReadonlyArray<CostLayer>,
  qty: bigint,
  cost: bigint | null,
  receipt: boolean,
  amount: bigint | undefined,
): LegValue {
  const onHandAfter = onHand + qty;
  const current = currentCost(onHand, before);
  let value: bigint;
  let unitCost: bigint;
  let flag: ValuationFlag | null = null;
  if (amount !== undefined) {
    value = amount;
    unitCost = roundDiv(abs(amount), qty);
  } else if (cost !== null) {
    value = qty * cost;
    unitCost = cost;
  } else {
    unitCost = current ?? 0n;
    value = onHand > 0n ? roundDiv(qty * before.value, onHand) : qty * unitCost;
    if (receipt || current === null) flag = "no_cost";
  }
  if (onHandAfter === 0n && amount === undefined) value = -before.value;
  const valueAfter = before.value + value;
  const after: ReadonlyArray<CostLayer> =
    onHandAfter <= 0n ? [] : onHand > 0n ? [...layers, { qty, value }] : [{ qty: onHandAfter, value: valueAfter }];
  const newest = after.at(-1);
  const lastUnitCost = newest ? layerCost(newest) : cost !== null || amount !== undefined ? unitCost : (current ?? before.lastUnitCost);
  return { value, unitCost, flag, after: { value: valueAfter, lastUnitCost, layers: after } };
}

/** An outgoing leg takes the oldest layers first; units beyond stock go at the last known cost. */
function fifoOut(onHand: bigint, before: LocationValue, layers: ReadonlyArray<CostLayer>, qty: bigint): LegValue {
  const covered = onHand > 0n ? (qty < onHand ? qty : onHand) : 0n;
  const beyond = qty - covered;
  const left = [...layers];
  let remaining = covered;
  let taken = 0n;
  while (remaining > 0n) {
    const oldest = left[0]!;
    if (oldest.qty <= remaining) {
      taken += oldest.value;
      remaining -= oldest.qty;
      left.shift();
    } else {
      const part = roundDiv(remaining * oldest.value, oldest.qty);
      taken += part;
      left[0] = { qty: oldest.qty - remaining, value: oldest.value - part };
      remaining = 0n;
    }
  }
  const last = before.lastUnitCost ?? (covered > 0n ? roundDiv(taken, covered) : null);
  let value = -(taken + beyond * (last ?? 0n));
  if (onHand + -qty === 0n) value = -before.value;
  const flag: ValuationFlag | null = beyond === 0n ? null : last === null ? "no_cost" : "negative_stock";
  const unitCost = roundDiv(-value, qty);
  return { value, unitCost, flag, after: { value: before.value + value, lastUnitCost: last, layers: left } };
}
