/**
 * The state of one SKU across its locations, and the events that change it.
 * Pure data: `decider.ts` decides events from commands and folds them with `evolve`.
 */
import type { LocationId, Sku } from "./command.ts";

/** A ledger bucket at one location. */
export type Bucket = "on_hand" | "reserved" | "in_transit" | "damaged";

/** Sellability of one (SKU, location), driven by the status machine. */
export type StockStatus = "in_stock" | "low" | "out" | "negative";

/** Balances and policy of one SKU at one location. */
export interface LocationState {
  readonly onHand: number;
  readonly reserved: number;
  /** Stock shipped to this location and not yet received here. */
  readonly inTransit: number;
  readonly damaged: number;
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

/** Everything the per-SKU rules need to decide a command. */
export interface SkuState {
  readonly sku: Sku;
  /** Keyed by location id. */
  readonly locations: Readonly<Record<string, LocationState>>;
  /** Open transfers, keyed by transfer id; settled ones are removed. */
  readonly transfers: Readonly<Record<string, TransferState>>;
}

/** A location never seen before: all zeros, and nothing to sell. */
export const emptyLocation: LocationState = {
  onHand: 0,
  reserved: 0,
  inTransit: 0,
  damaged: 0,
  safetyStock: 0,
  reorderPoint: 0,
  status: "out",
};

export const initialSkuState = (sku: Sku): SkuState => ({ sku, locations: {}, transfers: {} });

/** The location's state, or `emptyLocation` when it has none yet. */
export const locationOf = (state: SkuState, location: LocationId): LocationState =>
  state.locations[location] ?? emptyLocation;

/** What may still be promised: on_hand − reserved − safety stock. May be negative; channels clamp at 0. */
export const locationAvailable = (l: LocationState): number => l.onHand - l.reserved - l.safetyStock;

/** The kind of business movement a ledger leg records. */
export type Movement =
  | "receive"
  | "sell"
  | "return"
  | "return_damaged"
  | "reserve"
  | "release"
  | "fulfill"
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
  readonly delta: number;
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
  readonly available: number;
  readonly reorderPoint: number;
  readonly replenishment_requested: { readonly reorderPoint: number; readonly shortfall: number };
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
  readonly available: number;
}

/** More was sold than was on hand (oversold). */
export interface NegativeStock {
  readonly type: "negative_stock";
  readonly sku: Sku;
  readonly location: LocationId;
  readonly onHand: number;
}

/** Published to channels; `evolve` ignores them. */
export type StockNotification = LowStock | OutOfStock | BackInStock | NegativeStock;

/** Everything `decide` can emit for a SKU. */
export type SkuEvent = StockMoved | PolicySet | TransferShipped | TransferReceived | StatusChanged | StockNotification;

export type SkuEventType = SkuEvent["type"];
