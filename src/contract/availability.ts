/**
 * What may still be promised, and how an availability travels. The one definition of
 * "available = on hand − reserved − safety stock": the apply rules (actors/), the availability
 * route and anything else that shows or checks availability call `locationAvailable`.
 */
import type { AvailabilityValue } from "./natsPayloads.ts";

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
 * Defined by the schema `AvailabilityValue` (natsPayloads.ts), which `schemas/nats/availability.json` is generated from.
 */
export type Availability = typeof AvailabilityValue.Type;

/** An availability as it travels (KV, subjects, SSE, webhooks): each quantity a number, or a decimal string past 2^53. */
export type AvailabilityJson = typeof AvailabilityValue.Encoded;

/** One component of a bundle as the bundle rule sees it: how many go into one bundle, and what is available of it (null: unknown). */
export interface BundlePart {
  readonly qty: number | bigint;
  readonly available: bigint | null;
}

/**
 * What may be promised of a bundle: min over its components of ⌊component available / quantity per bundle⌋.
 * 0 when any component is out, oversold or unknown, when a quantity is not a positive whole number, or when
 * there are no components; never negative. `available` is whatever scope the caller asks about: a
 * channel's available of each component gives the bundle's for the channel, a location's gives the location's.
 */
export function bundleAvailable(parts: ReadonlyArray<BundlePart>): bigint {
  let least: bigint | null = null;
  for (const p of parts) {
    if (p.available === null || p.available <= 0n) return 0n;
    if (typeof p.qty === "number" && !Number.isSafeInteger(p.qty)) return 0n;
    const per = BigInt(p.qty);
    if (per <= 0n) return 0n;
    const whole = p.available / per; // both positive: truncation is the floor
    if (least === null || whole < least) least = whole;
  }
  return least ?? 0n;
}
