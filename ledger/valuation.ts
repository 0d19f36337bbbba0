/**
 * Moving weighted average cost per (SKU, location), in integer minor units. Pure: the SKU's actor
 * values each `on_hand` leg with `valueLeg` while it plans the batch, so an entry's value is
 * committed in the same statement as its quantity.
 *
 * The location keeps its total `value` exact; the average is derived (value / on_hand). An
 * incoming leg with a cost adds qty × cost; one without adds round(qty × value / on_hand) (the
 * average, which it leaves unchanged). An outgoing leg takes round(qty × value / on_hand), so the
 * last unit out takes exactly what is left. Units beyond what is on hand (a sale out of empty or
 * negative stock) go at the last known unit cost, flagged. Whenever on_hand comes to exactly 0 the
 * leg takes (or gives back) whatever value is left, so value is 0 at zero stock.
 * (It lives with the ledger so that `tally ledger verify` replays the same rules.)
 */

/** The valuation of one (SKU, location)'s on-hand stock. */
export interface LocationValue {
  /** Total value of on_hand, in minor units (negative when on_hand is, at the last unit cost). */
  readonly value: bigint;
  /** The last known unit cost (the average after the last leg that left stock), or null if never known. */
  readonly lastUnitCost: bigint | null;
}

export const noValue: LocationValue = { value: 0n, lastUnitCost: null };

/**
 * Why an entry's value is not a plain qty × known cost: `no_cost` (an incoming leg of a receipt
 * that named no cost, or any leg with no cost known at all, valued at 0), `negative_stock` (units
 * out of empty or negative stock, valued at the last known cost).
 */
export type ValuationFlag = "no_cost" | "negative_stock";

export interface LegValue {
  /** Signed: what the leg adds to (or takes from) the location's value. */
  readonly value: bigint;
  /** The unit cost the leg was valued at. */
  readonly unitCost: bigint;
  readonly flag: ValuationFlag | null;
  /** The location's valuation after the leg. */
  readonly after: LocationValue;
}

/** n / d rounded to the nearest integer, halves away from zero (d > 0). */
export function roundDiv(n: bigint, d: bigint): bigint {
  if (d <= 0n) throw new RangeError(`roundDiv: divisor ${d} must be positive`);
  const q = (2n * (n < 0n ? -n : n) + d) / (2n * d);
  return n < 0n ? -q : q;
}

/**
 * Values one `on_hand` leg of `delta` units, given on_hand before it and the location's valuation.
 * `cost` is the receipt's unit cost, or null; `receipt` says the leg is a goods receipt (which
 * is flagged `no_cost` when it has none).
 */
export function valueLeg(onHand: bigint, before: LocationValue, delta: bigint, cost: bigint | null, receipt: boolean): LegValue {
  const onHandAfter = onHand + delta;
  const average = onHand > 0n ? roundDiv(before.value, onHand) : before.lastUnitCost;
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
