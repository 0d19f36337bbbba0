/**
 * Values the stock legs of one applied command, in order, for the SKU's actor (the rules
 * themselves are ledger/valuation.ts, which verify replays). Legs of one command hand value to each
 * other: units leave one bucket with a value and arrive in the next with that same value (a transfer
 * out: origin on_hand → destination in_transit; a transfer in: in_transit → on_hand).
 */
import type { Command } from "../src/contract/index.ts";
import { currentCost, noValue, roundDiv, valueLeg, type LocationValue, type ValuationFlag, type ValuationMethod } from "../ledger/index.ts";
import type { SkuEvent, SkuState, StockMoved } from "./state.ts";
import { locationOf } from "./state.ts";

/** The company's valuation settings (`finance` of tally.config.ts). */
export interface ValuationSettings {
  readonly method: ValuationMethod;
  /** Receipts in another currency are applied but valued as receipts without cost. */
  readonly currency: string;
}

export const DEFAULT_VALUATION: ValuationSettings = { method: "moving_average", currency: "EUR" };

/** What an open transfer carried out of its origin, and what its receipts have taken of it. */
export interface TransferValue {
  readonly shipped: bigint;
  readonly received: bigint;
}

/** A SKU's valuation state, as its actor keeps it. */
export interface SkuValues {
  /** on_hand per location. */
  readonly values: Readonly<Record<string, LocationValue>>;
  /** damaged and in_transit per `poolKey(location, bucket)`. */
  readonly pools: Readonly<Record<string, LocationValue>>;
  /** Per open transfer; absent for one shipped before transfers were valued. */
  readonly transfers: Readonly<Record<string, TransferValue>>;
}

/** The valuation columns of one ledger entry. */
export interface EntryValue {
  readonly value: bigint;
  readonly unitCost: bigint;
  readonly valuationFlag: ValuationFlag | null;
}

export const poolKey = (location: string, bucket: string): string => `${location}\u0000${bucket}`;

interface Carried {
  readonly value: bigint;
  readonly flag: ValuationFlag | null;
}

/** Values one command's legs; `result()` is the SKU's valuation after them. */
export class CommandValuation {
  readonly #values: Record<string, LocationValue>;
  readonly #pools: Record<string, LocationValue>;
  readonly #transfers: Record<string, TransferValue>;
  /** The value the last leg that took units out handed on (negative), and its flag. */
  #carried: Carried | null = null;
  /** What the command's in_transit legs put into (or took out of) its transfer. */
  #transferAmount = 0n;
  /** True when a receipt's currency is not the company's. */
  readonly currencyMismatch: boolean;

  constructor(
    before: SkuValues,
    readonly command: Command,
    readonly settings: ValuationSettings,
  ) {
    this.#values = { ...before.values };
    this.#pools = { ...before.pools };
    this.#transfers = { ...before.transfers };
    this.currencyMismatch = command.type === "receive" && command.currency !== undefined && command.currency !== settings.currency;
  }

  result(): SkuValues {
    return { values: this.#values, pools: this.#pools, transfers: this.#transfers };
  }

  /** Values a leg, given the state before it; null for a bucket without value (reserved). */
  leg(state: SkuState, event: StockMoved): EntryValue | null {
    const here = locationOf(state, event.location);
    switch (event.bucket) {
      case "on_hand":
        return this.#onHand(here.onHand, event);
      case "in_transit":
        return this.#inTransit(state, here.inTransit, event);
      case "damaged":
        return this.#damaged(here.onHand, here.damaged, event);
      default:
        return null;
    }
  }

  #onHand(qty: bigint, event: StockMoved): EntryValue {
    const c = this.command;
    const receipt = c.type === "receive";
    const cost = c.type === "receive" && c.unitCost !== undefined && !this.currencyMismatch ? BigInt(c.unitCost) : null;
    // Units arriving from another bucket of the same command come with the value they left it with.
    const given = event.delta > 0n && this.#carried !== null ? this.#carried : null;
    const v = valueLeg(qty, this.#values[event.location] ?? noValue, event.delta, cost, receipt, {
      method: this.settings.method,
      ...(given ? { amount: -given.value } : {}),
    });
    this.#values[event.location] = v.after;
    const flag = this.currencyMismatch ? "currency_mismatch" : given ? given.flag : v.flag;
    if (event.delta < 0n) this.#carried = { value: v.value, flag };
    return { value: v.value, unitCost: v.unitCost, valuationFlag: flag };
  }

  #inTransit(state: SkuState, qty: bigint, event: StockMoved): EntryValue {
    let amount: Carried;
    if (event.delta > 0n) {
      amount = this.#carried ? { value: -this.#carried.value, flag: this.#carried.flag } : { value: 0n, flag: "no_cost" };
    } else {
      amount = this.#transferShare(state, -event.delta);
      this.#carried = amount;
    }
    this.#transferAmount += amount.value;
    return this.#pool(event, qty, amount);
  }

  /** What `qty` units of the command's transfer take out of transit: their share, the last receipt what is left. */
  #transferShare(state: SkuState, qty: bigint): Carried {
    const c = this.command;
    const id = c.type === "transfer_in" ? c.transferId : "";
    const open = state.transfers[id];
    const tv = this.#transfers[id];
    if (open === undefined || tv === undefined) return { value: 0n, flag: "no_cost" };
    const outstanding = BigInt(open.shipped - open.received);
    const left = tv.shipped - tv.received;
    return { value: -(qty >= outstanding ? left : roundDiv(qty * left, outstanding)), flag: null };
  }

  #damaged(onHand: bigint, qty: bigint, event: StockMoved): EntryValue {
    if (event.delta < 0n) {
      // A write-off out of damaged takes units at damaged's average.
      const key = poolKey(event.location, "damaged");
      const v = valueLeg(qty, this.#pools[key] ?? noValue, event.delta, null, false);
      this.#pools[key] = v.after;
      this.#carried = { value: v.value, flag: v.flag };
      return { value: v.value, unitCost: v.unitCost, valuationFlag: v.flag };
    }
    if (this.#carried) return this.#pool(event, qty, { value: -this.#carried.value, flag: this.#carried.flag });
    // From outside (a damaged return): at what a unit costs at the location now.
    const cost = currentCost(onHand, this.#values[event.location] ?? noValue);
    return this.#pool(event, qty, { value: event.delta * (cost ?? 0n), flag: cost === null ? "no_cost" : null });
  }

  /** A damaged or in_transit leg of a given value. */
  #pool(event: StockMoved, qty: bigint, amount: Carried): EntryValue {
    const key = poolKey(event.location, event.bucket);
    const v = valueLeg(qty, this.#pools[key] ?? noValue, event.delta, null, false, { amount: amount.value });
    this.#pools[key] = v.after;
    return { value: v.value, unitCost: v.unitCost, valuationFlag: amount.flag };
  }

  /** Keeps the transfer's value: what a shipment carried, what a receipt took (settled: forgotten). */
  transfer(event: SkuEvent, after: SkuState): void {
    if (event.type === "transfer_shipped") {
      // (One shipped before transfers were valued starts carrying value now: its receipts share it.)
      const tv = this.#transfers[event.transferId];
      this.#transfers[event.transferId] = { shipped: (tv?.shipped ?? 0n) + this.#transferAmount, received: tv?.received ?? 0n };
    } else if (event.type === "transfer_received") {
      const tv = this.#transfers[event.transferId];
      if (tv === undefined) return;
      if (after.transfers[event.transferId] === undefined) delete this.#transfers[event.transferId];
      else this.#transfers[event.transferId] = { ...tv, received: tv.received - this.#transferAmount };
    }
  }
}
