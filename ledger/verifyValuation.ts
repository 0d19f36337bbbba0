import type { EntryRow } from "./entryRow.ts";
import { currentCost, noValue, valueLeg, type LegValue, type LocationValue, type ValuationMethod } from "./valuation.ts";

/** The buckets whose entries carry a value. */
export const VALUED_BUCKETS: ReadonlySet<string> = new Set(["on_hand", "damaged", "in_transit"]);

/** The key of one (location, bucket) of a SKU. */
export const bucketKey = (location: string, bucket: string): string => `${location}\u0000${bucket}`;

interface Carried {
  readonly value: bigint;
  readonly flag: string | null;
}

const METHOD_NAME: Record<ValuationMethod, string> = { moving_average: "the moving average", fifo: "FIFO" };

/**
 * Replays one SKU's valuation over its entries, in sequence, by the rules the actor valued them by
 * (ledger/valuation.ts, and the hand-over between the legs of one command of actors/valuation.ts):
 * every value, unit cost and flag must be what the rules give from the entries before it. A transfer
 * receipt's share of what its transfer carried is checked through its sum instead (what is in
 * transit at a location is worth what its open transfers still carry, and nothing once it is empty).
 * Entries from before valuation have no value and change nothing.
 */
export class ValuationReplay {
  /** Per `bucketKey(location, bucket)`: the replayed valuation. */
  readonly states = new Map<string, LocationValue>();
  #command: string | null = null;
  #carried: Carried | null = null;

  constructor(readonly method: ValuationMethod) {}

  /** What is wrong with the entry's valuation, or null. `onHandQty(location)`: on_hand before the entry. */
  check(r: EntryRow, onHandQty: (location: string) => bigint): string | null {
    if (!VALUED_BUCKETS.has(r.bucket) || r.value === null || r.value === undefined) return null;
    if (r.command_id !== this.#command) {
      this.#command = r.command_id;
      this.#carried = null;
    }
    const delta = BigInt(r.delta);
    const before = BigInt(r.balance_after) - delta;
    const key = bucketKey(r.location, r.bucket);
    const at = this.states.get(key) ?? noValue;
    const given = this.#carried;
    let v: LegValue;
    let flag: string | null;
    if (r.bucket === "on_hand") [v, flag] = this.#onHand(r, before, at, delta, given);
    else if (r.bucket === "damaged") [v, flag] = this.#damaged(r, before, at, delta, given, onHandQty(r.location));
    else {
      if (delta < 0n && (BigInt(r.value) > 0n || (r.valuation_flag !== null && r.valuation_flag !== "no_cost")))
        return `value ${r.value} (${r.valuation_flag ?? "no flag"}) cannot come out of transit (${r.location})`;
      const amount: Carried =
        delta > 0n
          ? given
            ? { value: -given.value, flag: given.flag }
            : { value: 0n, flag: "no_cost" }
          : { value: BigInt(r.value), flag: r.valuation_flag ?? null };
      v = valueLeg(before, at, delta, null, false, { amount: amount.value });
      flag = amount.flag;
    }
    if (delta < 0n) this.#carried = { value: v.value, flag };
    this.states.set(key, v.after);
    const stored = `${r.value} at ${r.unit_cost} (${r.valuation_flag ?? "no flag"})`;
    const replayed = `${v.value} at ${v.unitCost} (${flag ?? "no flag"})`;
    const where = r.bucket === "on_hand" ? r.location : `${r.location}/${r.bucket}`;
    if (stored !== replayed) return `value ${stored} but ${METHOD_NAME[this.method]} gives ${replayed} (${where})`;
    if (r.bucket === "in_transit" && before + delta === 0n && v.after.value !== 0n)
      return `nothing is in transit to ${r.location} but its value is ${v.after.value}`;
    return null;
  }

  #onHand(r: EntryRow, before: bigint, at: LocationValue, delta: bigint, given: Carried | null): [LegValue, string | null] {
    if (delta > 0n && given) return [valueLeg(before, at, delta, null, false, { method: this.method, amount: -given.value }), given.flag];
    const receipt = r.movement === "receive";
    const mismatch = receipt && r.valuation_flag === "currency_mismatch";
    const known = receipt && !mismatch && r.valuation_flag !== "no_cost" && r.unit_cost !== null && r.unit_cost !== undefined;
    const v = valueLeg(before, at, delta, known ? BigInt(r.unit_cost!) : null, receipt, { method: this.method });
    return [v, mismatch ? "currency_mismatch" : v.flag];
  }

  #damaged(r: EntryRow, before: bigint, at: LocationValue, delta: bigint, given: Carried | null, onHand: bigint): [LegValue, string | null] {
    if (delta < 0n) {
      const v = valueLeg(before, at, delta, null, false);
      return [v, v.flag];
    }
    if (given) return [valueLeg(before, at, delta, null, false, { amount: -given.value }), given.flag];
    const cost = currentCost(onHand, this.states.get(bucketKey(r.location, "on_hand")) ?? noValue);
    return [valueLeg(before, at, delta, null, false, { amount: delta * (cost ?? 0n) }), cost === null ? "no_cost" : null];
  }
}
