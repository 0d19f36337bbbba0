import { createHash } from "node:crypto";

/** The hash every SKU's chain starts from. */
export const GENESIS_HASH = "0".repeat(64);

/** The fields of an entry that its hash covers. */
export interface HashedEntry {
  readonly commandId: string;
  readonly leg: number;
  readonly sku: string;
  readonly location: string;
  readonly bucket: string;
  /** A bigint, or a number (as read back within the safe range): both hash alike. */
  readonly delta: bigint | number;
  readonly balanceAfter: bigint | number;
  readonly movement: string;
  readonly sourceSystem: string;
  readonly sourceRef: string;
  readonly occurredAt: Date;
  readonly recordedAt: Date;
  readonly skuSeq: number;
  /**
   * The leg's value and the unit cost it was valued at (integer minor units) and why it is flagged,
   * for an `on_hand` leg since valuation; absent (null) on other legs and on entries from before it.
   */
  readonly value?: bigint | null;
  readonly unitCost?: bigint | null;
  readonly valuationFlag?: string | null;
}

/**
 * A fixed-order JSON array: the canonical byte form of an entry. Integers are written as their
 * decimal digits, which is exactly what `JSON.stringify` wrote for them when they were numbers, so
 * every chain hashed before quantities became bigints still verifies; past 2^53 the digits are the
 * exact value (a JSON number, not a string).
 */
export function canonicalEntry(e: HashedEntry): string {
  const text = JSON.stringify;
  return (
    `[${text(e.commandId)},${integer(e.leg)},${text(e.sku)},${text(e.location)},${text(e.bucket)},` +
    `${integer(e.delta)},${integer(e.balanceAfter)},${text(e.movement)},${text(e.sourceSystem)},${text(e.sourceRef)},` +
    `${text(e.occurredAt.toISOString())},${text(e.recordedAt.toISOString())},${integer(e.skuSeq)}${valued(e)}]`
  );
}

/**
 * A valued entry's value, unit cost and flag, as three more elements; nothing for an entry without
 * a value, so every chain hashed before valuation still verifies.
 */
function valued(e: HashedEntry): string {
  if (e.value === null || e.value === undefined) return "";
  return `,${integer(e.value)},${e.unitCost === null || e.unitCost === undefined ? "null" : integer(e.unitCost)},${JSON.stringify(e.valuationFlag ?? null)}`;
}

/** An integer's digits, as JSON writes a number (and, unlike a double, exact past 2^53). */
function integer(n: bigint | number): string {
  if (typeof n === "number" && !Number.isSafeInteger(n)) throw new RangeError(`${n} is not an exact integer`);
  return String(n);
}

/** hash = sha256(prev_hash ‖ canonical entry), hex. */
export function entryHash(prevHash: string, e: HashedEntry): string {
  return createHash("sha256").update(prevHash).update(canonicalEntry(e)).digest("hex");
}
