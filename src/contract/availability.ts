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

/** An item's status in the item master (the catalog's `status`). */
export type ItemStatus = "active" | "discontinued" | "blocked";

/** Why a channel shows 0 of an item whatever its stock: the item's status. */
export type Withheld = "discontinued" | "blocked";

/** What a channel does with items that are not active (`channels.<name>.discontinued` in the config file). */
export interface StatusPolicy {
  /** True: the channel keeps selling a discontinued item's remaining stock. A blocked item is never sold. */
  readonly sellsDiscontinued: boolean;
}

/**
 * The one rule of availability and item status: a blocked item is withheld from every channel, a
 * discontinued one from every channel that does not sell remaining stock, an active one from none.
 * Null: the channel may sell what the stock allows.
 */
export function withheldBy(status: string, policy: StatusPolicy): Withheld | null {
  if (status === "blocked") return "blocked";
  if (status === "discontinued" && !policy.sellsDiscontinued) return "discontinued";
  return null;
}

/** The fields of an availability payload the status rule reads and writes (any other field is kept as it is). */
interface StatusFields {
  available: number | string;
  status: string;
  reason?: string;
  stock?: { available: number | string; status: string };
}

/**
 * An availability payload under the status rule (`withheldBy`): withheld, it shows available 0 and
 * status `out`, says why (`reason`) and keeps what the stock alone allows (`stock`); not withheld, it
 * shows the stock's figure again. Idempotent, so the relay may apply it to any payload, again.
 */
export function applyWithheld<T extends StatusFields>(payload: T, reason: Withheld | null): T {
  const { reason: _reason, stock, ...rest } = payload;
  const base = { ...rest, ...(stock ? { available: stock.available, status: stock.status } : {}) } as T;
  if (reason === null) return base;
  return { ...base, available: 0, status: "out", reason, stock: { available: base.available, status: base.status } };
}
