/**
 * The state of one SKU across its locations, and the events that change it.
 * Pure data: `decider.ts` decides events from commands and folds them with `evolve`.
 */
import type { LocationId, Sku } from "../src/contract/index.ts";

/** A ledger bucket at one location. */
export type Bucket = "on_hand" | "reserved" | "in_transit" | "damaged";

/**
 * Sellability of one (SKU, location), driven by the status machine. `new`: it never had anything
 * to promise (its first stock is not a return to stock, so it raises no `back_in_stock`).
 */
export type StockStatus = "new" | "in_stock" | "low" | "out" | "negative";

/**
 * Balances and policy of one SKU at one location. Balances are `bigint`: one command's quantity is
 * at most 1e12, but a balance is a running sum and may pass 2^53, where a `number` would round.
 */
export interface LocationState {
  readonly onHand: bigint;
  readonly reserved: bigint;
  /** Stock shipped to this location and not yet received here. */
  readonly inTransit: bigint;
  readonly damaged: bigint;
  readonly safetyStock: number;
  readonly reorderPoint: number;
  readonly status: StockStatus;
}

/** An open transfer: some of `shipped` has not been received yet. */
export interface TransferState {
  readonly from: LocationId;
  readonly to: LocationId;
  readonly shipped: number;
  readonly received: number;
}

/** Where a hold is in its life: `open` until it ends in exactly one of the other four. */
export type HoldStatus = "open" | "released" | "fulfilled" | "expired" | "refused";

/**
 * One hold (an order line or checkout line) on units of the SKU at one location. The location's
 * `reserved` is always the sum of `open` over its open holds.
 */
export interface HoldState {
  readonly location: LocationId;
  /** The channel the hold was made for, when the reserve named one. */
  readonly channel: string | null;
  /** What the reserve asked for. */
  readonly qty: number;
  /** What the hold still holds (0 once it is closed or refused). */
  readonly open: number;
  readonly status: HoldStatus;
  /** When the hold lapses if nothing closes it first (ISO-8601), or null. */
  readonly expiresAt: string | null;
}

/** The hold id of the one hold per SKU and location a ledger from before per-line holds migrated its reserved units to. */
export const legacyHoldId = (location: LocationId | string): string => `legacy:${location}`;

/** Everything the per-SKU rules need to decide a command. */
export interface SkuState {
  readonly sku: Sku;
  /** Keyed by location id. */
  readonly locations: Readonly<Record<string, LocationState>>;
  /** Open transfers, keyed by transfer id; settled ones are removed. */
  readonly transfers: Readonly<Record<string, TransferState>>;
  /**
   * Holds keyed by hold id: every open one, and the closed ones a batch loaded or closed (a live
   * actor keeps only its open holds between batches; closed ones are looked up when named).
   */
  readonly holds: Readonly<Record<string, HoldState>>;
}

/** A location never seen before: all zeros, and nothing to sell yet. */
export const emptyLocation: LocationState = {
  onHand: 0n,
  reserved: 0n,
  inTransit: 0n,
  damaged: 0n,
  safetyStock: 0,
  reorderPoint: 0,
  status: "new",
};

export const initialSkuState = (sku: Sku): SkuState => ({ sku, locations: {}, transfers: {}, holds: {} });

/** The location's state, or `emptyLocation` when it has none yet. */
export const locationOf = (state: SkuState, location: LocationId): LocationState => state.locations[location] ?? emptyLocation;

/** The larger of `n` and 0. */
export const atLeastZero = (n: bigint): bigint => (n > 0n ? n : 0n);

/** The kind of business movement a ledger leg records. */
export type Movement =
  | "receive"
  | "sell"
  | "return"
  | "return_damaged"
  | "reserve"
  | "release"
  | "fulfill"
  /** Goods shipped for an order line whose hold did not cover them: on hand only. */
  | "fulfill_unreserved"
  | "adjust"
  | "count_variance"
  | "transfer_out"
  | "transfer_in";

/** One ledger leg: `delta` (non-zero) applied to `bucket` at `location`. */
export interface StockMoved {
  readonly type: "stock_moved";
  readonly sku: Sku;
  readonly location: LocationId;
  readonly bucket: Bucket;
  /** A count's variance is counted − on hand, so a leg is as wide as a balance. */
  readonly delta: bigint;
  readonly movement: Movement;
}

export interface PolicySet {
  readonly type: "policy_set";
  readonly sku: Sku;
  readonly location: LocationId;
  readonly safetyStock: number;
  readonly reorderPoint: number;
}

/** `location` is the origin (`from`). */
export interface TransferShipped {
  readonly type: "transfer_shipped";
  readonly sku: Sku;
  readonly location: LocationId;
  readonly transferId: string;
  readonly from: LocationId;
  readonly to: LocationId;
  readonly qty: number;
}

/** `location` is the destination. */
export interface TransferReceived {
  readonly type: "transfer_received";
  readonly sku: Sku;
  readonly location: LocationId;
  readonly transferId: string;
  readonly qty: number;
}

/** A reserve granted: hold `holdId` opens with `qty` (its reserved leg is a separate `stock_moved`). */
export interface HoldOpened {
  readonly type: "hold_opened";
  readonly sku: Sku;
  readonly location: LocationId;
  readonly holdId: string;
  readonly qty: number;
  readonly channel: string | null;
  readonly expiresAt: string | null;
}

/**
 * A reserve refused (nothing written to the buckets): the hold is recorded as `refused`, and the
 * event is published so the system that placed the order line can backorder or cancel it.
 */
export interface HoldRefused {
  readonly type: "hold_refused";
  readonly sku: Sku;
  readonly location: LocationId;
  readonly holdId: string;
  readonly qty: number;
  readonly channel: string | null;
  /** What could have been held (clamped at 0). */
  readonly available: bigint;
  readonly reason: string;
}

/** A release or fulfill took `qty` from hold `holdId`; `open` is what it still holds, `status` where it is now. */
export interface HoldReduced {
  readonly type: "hold_reduced";
  readonly sku: Sku;
  readonly location: LocationId;
  readonly holdId: string;
  readonly qty: number;
  readonly open: number;
  readonly status: HoldStatus;
}

/**
 * Goods shipped that no open hold covered (the hold was missing, closed, at another location or
 * too small): recorded anyway, as `fulfill_unreserved`, and published naming the order line.
 */
export interface FulfillUnreserved {
  readonly type: "fulfill_unreserved";
  readonly sku: Sku;
  readonly location: LocationId;
  readonly holdId: string;
  readonly qty: number;
  /** Why the hold did not cover it. */
  readonly reason: "unknown_hold" | "hold_closed" | "hold_elsewhere" | "exceeds_hold";
}

export interface StatusChanged {
  readonly type: "status_changed";
  readonly sku: Sku;
  readonly location: LocationId;
  readonly from: StockStatus;
  readonly to: StockStatus;
}

/** Available fell to the reorder point or below: ask for `shortfall` (≥ 1) more. */
export interface LowStock {
  readonly type: "low_stock";
  readonly sku: Sku;
  readonly location: LocationId;
  readonly available: bigint;
  readonly reorderPoint: number;
  readonly replenishmentRequested: { readonly reorderPoint: number; readonly shortfall: bigint };
}

export interface OutOfStock {
  readonly type: "out_of_stock";
  readonly sku: Sku;
  readonly location: LocationId;
}

export interface BackInStock {
  readonly type: "back_in_stock";
  readonly sku: Sku;
  readonly location: LocationId;
  readonly available: bigint;
}

/** More was sold than was on hand (oversold). */
export interface NegativeStock {
  readonly type: "negative_stock";
  readonly sku: Sku;
  readonly location: LocationId;
  readonly onHand: bigint;
}

/** Published to channels; `evolve` ignores them. */
export type StockNotification = LowStock | OutOfStock | BackInStock | NegativeStock | FulfillUnreserved;

/** A change to one hold (`hold_refused` is also published). */
export type HoldEvent = HoldOpened | HoldRefused | HoldReduced;

/** Everything `decide` can emit for a SKU. */
export type SkuEvent = StockMoved | PolicySet | TransferShipped | TransferReceived | StatusChanged | HoldEvent | StockNotification;
