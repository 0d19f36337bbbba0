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
