/**
 * What may still be promised, and how an availability travels. The one definition of
 * "available = on hand − reserved − safety stock": the apply rules (actors/), the availability
 * route and anything else that shows or checks availability call `locationAvailable`.
 */

/** The quantities of one SKU at one location that availability is made of (base units). */
export interface StockAtLocation {
  readonly onHand: bigint;
  readonly reserved: bigint;
  readonly safetyStock: number | bigint;
}

/** What may still be promised at a location: on hand − reserved − safety stock. May be negative; channels clamp at 0. */
export const locationAvailable = (l: StockAtLocation): bigint => l.onHand - l.reserved - BigInt(l.safetyStock);

/**
 * What one channel may sell of a SKU: the sum over its locations, each clamped at 0, less the buffer.
 * Quantities are exact (bigint); as JSON they are numbers, or decimal strings past 2^53 (`AvailabilityJson`).
 */
export interface Availability {
  readonly channel: string;
  readonly sku: string;
  readonly available: bigint;
  readonly onHand: bigint;
  readonly reserved: bigint;
  readonly status: "in_stock" | "low" | "out";
  /** The SKU's ledger sequence: a reader drops a projection older than one it has. */
  readonly seq: number;
  /** Bumped by every applied command of the SKU (policies change availability without a ledger leg). */
  readonly version: number;
  readonly updatedAt: string;
}

/** An availability as it travels (KV, subjects, SSE, webhooks): each quantity a number, or a decimal string past 2^53. */
export type AvailabilityJson = Omit<Availability, "available" | "onHand" | "reserved"> & {
  readonly available: number | string;
  readonly onHand: number | string;
  readonly reserved: number | string;
};
