/**
 * Every recipe for a command id, one function per origin. A command id is the command's idempotency
 * key: JetStream's duplicate window and the ledger's unique `command_id` both drop a repeat, so the
 * same input must always give the same id, byte for byte, across processes and releases (existing
 * ledgers hold these ids). Change a recipe here and a re-sent input is applied twice: don't.
 * Pure (hashing only); commandIds.test.ts pins each recipe to literal strings.
 */
import { createHash } from "node:crypto";

/** A change captured from a CDC source: `<source>:<commit lsn>:<index in the transaction>`. */
export const cdcChangeCommandId = (source: string, commitLsn: string, index: number): string => `${source}:${commitLsn}:${index}`;

/**
 * A row read by a source's initial snapshot: `<source>:snapshot:<consistent point>:<table>:<key>`,
 * the key being the row's key column values joined with `/` (null as empty). A replayed snapshot
 * dead letter rebuilds it from the letter (`tally dlq replay`), so it must come out the same.
 */
export const snapshotCommandId = (source: string, consistentPoint: string, table: string, keyText: string): string =>
  `${source}:snapshot:${consistentPoint}:${table}:${keyText}`;

/** The key text of a snapshot row: its key column values in key order, joined with `/` (null: empty). */
export const snapshotKeyText = (key: ReadonlyArray<string>, row: Readonly<Record<string, string | null>>): string =>
  key.map((k) => row[k] ?? "").join("/");

/** The k-th of several commands one mapped change (or row) produced: `<default id>:<k>` (a single one keeps the default id). */
export const mappedCommandId = (defaultId: string, k: number, of: number): string => (of > 1 ? `${defaultId}:${k}` : defaultId);

/** One component of a bundle: `<id>#<component sku>`. */
export const bundleComponentCommandId = (id: string, componentSku: string): string => `${id}#${componentSku}`;

/** A POS transaction line: `pos:<store>:<terminal>:<transaction id>:<line>`. */
export const posLineCommandId = (t: { readonly store: string; readonly terminal: string; readonly id: string }, line: number): string =>
  `pos:${t.store}:${t.terminal}:${t.id}:${line}`;

/** An API reservation line's reserve, per attempt (a channel line may try several locations): `res:<reservation>:<line>:<attempt>`. */
export const reserveCommandId = (reservationId: string, line: number, attempt: number): string => `res:${reservationId}:${line}:${attempt}`;

/** An API reservation line's release or fulfil: `res:<reservation>:<line>:<release|fulfill>`. */
export const settleCommandId = (reservationId: string, line: number, type: "release" | "fulfill"): string => `res:${reservationId}:${line}:${type}`;

/** The release that expires a hold: a hash, since a hold id may hold characters a command id may not. */
export const holdExpiryCommandId = (sku: string, holdId: string): string =>
  `hold-expiry:${createHash("sha256").update(sku).update("\u0000").update(holdId).digest("hex").slice(0, 40)}`;

/** The release of a bundle component's hold whose sibling component was refused (all or none): a hash, as above. */
export const bundleHoldReleaseCommandId = (sku: string, holdId: string): string =>
  `bundle-release:${createHash("sha256").update(sku).update("\u0000").update(holdId).digest("hex").slice(0, 40)}`;

/** The id the reservation route resolves a SKU through the crosswalk with (never published). */
export const RESOLVE_PROBE_COMMAND_ID = "res:resolve";
