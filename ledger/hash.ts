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
  readonly delta: number;
  readonly balanceAfter: number;
  readonly movement: string;
  readonly sourceSystem: string;
  readonly sourceRef: string;
  readonly occurredAt: Date;
  readonly recordedAt: Date;
  readonly skuSeq: number;
}

/** A fixed-order JSON array: the canonical byte form of an entry. */
export function canonicalEntry(e: HashedEntry): string {
  return JSON.stringify([
    e.commandId,
    e.leg,
    e.sku,
    e.location,
    e.bucket,
    e.delta,
    e.balanceAfter,
    e.movement,
    e.sourceSystem,
    e.sourceRef,
    e.occurredAt.toISOString(),
    e.recordedAt.toISOString(),
    e.skuSeq,
  ]);
}

/** hash = sha256(prev_hash ‖ canonical entry), hex. */
export function entryHash(prevHash: string, e: HashedEntry): string {
  return createHash("sha256").update(prevHash).update(canonicalEntry(e)).digest("hex");
}
