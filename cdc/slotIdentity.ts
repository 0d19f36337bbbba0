/**
 * Whether the replication slot on the source is the one this reader has been confirming.
 *
 * A slot is known by its name, but a name says nothing about its history: a slot dropped behind
 * Tally's back and created again (by `tally source enable`, a DBA, `tally dev`'s demo init) has the
 * same name and starts at the moment of its creation, so whatever was committed while there was no
 * slot never reaches the reader. What identifies Tally's slot is its position: the reader records
 * the highest LSN it has confirmed, or is about to confirm, BEFORE telling Postgres (the *bound*),
 * so its own slot's `confirmed_flush_lsn` is never past the bound. A new slot starts at the WAL
 * position of its creation, which is past every LSN that existed before it, so a slot past the
 * bound is a new one (or one someone else advanced) — unless nothing at all was written in between,
 * in which case it sits exactly at the bound and nothing was missed.
 */
import { parseLsn } from "./lsn.ts";

/** Why a source stopped being captured. */
export type HaltReason = "slot_lost" | "slot_replaced" | "slot_invalidated";

/** What the ledger's `cdc_sources` row says about the slot. */
export interface RecordedSlot {
  readonly snapshotDone: boolean;
  /** The highest LSN confirmed or about to be confirmed to the slot; null on a row from before it was tracked. */
  readonly boundLsn: string | null;
  readonly boundAt: Date | null;
  /** Set while the source is halted (waiting for an operator). */
  readonly halted: { readonly reason: HaltReason; readonly at: Date; readonly detail: SlotGap } | null;
}

/** The slot of that name on the source server, as `pg_replication_slots` shows it. */
export interface ServerSlot {
  readonly database: string | null;
  readonly plugin: string | null;
  readonly confirmedFlushLsn: string | null;
  /** `reserved`, `extended`, `unreserved` or `lost` (Postgres 13+). */
  readonly walStatus: string | null;
}

/** What an alert about a halted source says: from where changes may be missing, and what the slot is now. */
export interface SlotGap {
  readonly slot: string;
  /** Everything up to here reached JetStream; changes committed after it may never have. */
  readonly lastConfirmedLsn: string | null;
  readonly lastConfirmedAt: string | null;
  /** Where the slot found on the server stands (null: there is none). */
  readonly slotConfirmedLsn: string | null;
  readonly message: string;
}

export type SlotVerdict =
  /** No snapshot has been completed: the first start (or an operator's re-snapshot) takes one with a new slot. */
  | { readonly kind: "snapshot" }
  /** The slot is Tally's: stream from it. `adopt`: a row from before the bound was tracked starts tracking here. */
  | { readonly kind: "stream"; readonly adopt: string | null }
  /** Stop capturing the source until an operator decides. */
  | { readonly kind: "halt"; readonly reason: HaltReason; readonly gap: SlotGap };

/** Decides from the ledger's record and the server's slot whether to snapshot, stream or halt. */
export function judgeSlot(slotName: string, database: string, recorded: RecordedSlot, slot: ServerSlot | undefined): SlotVerdict {
  if (recorded.halted) return { kind: "halt", reason: recorded.halted.reason, gap: recorded.halted.detail };
  if (!recorded.snapshotDone) return { kind: "snapshot" };
  const gap = (message: string): SlotGap => ({
    slot: slotName,
    lastConfirmedLsn: recorded.boundLsn,
    lastConfirmedAt: recorded.boundAt?.toISOString() ?? null,
    slotConfirmedLsn: slot?.confirmedFlushLsn ?? null,
    message,
  });
  const since = recorded.boundLsn
    ? `changes committed after ${recorded.boundLsn}${recorded.boundAt ? ` (confirmed ${recorded.boundAt.toISOString()})` : ""}`
    : "changes committed since the slot was last streamed";
  if (!slot)
    return { kind: "halt", reason: "slot_lost", gap: gap(`replication slot ${slotName} is gone: ${since} may never have reached the ledger`) };
  if (slot.database !== database || slot.plugin !== "pgoutput")
    return {
      kind: "halt",
      reason: "slot_replaced",
      gap: gap(
        `replication slot ${slotName} is now a ${slot.plugin ?? "physical"} slot of database ${slot.database ?? "(none)"}, not Tally's: ${since} may never have reached the ledger`,
      ),
    };
  if (slot.walStatus === "lost")
    return {
      kind: "halt",
      reason: "slot_invalidated",
      gap: gap(
        `replication slot ${slotName} was invalidated (its WAL exceeded max_slot_wal_keep_size and was removed): ${since} may never have reached the ledger`,
      ),
    };
  if (recorded.boundLsn === null) return { kind: "stream", adopt: slot.confirmedFlushLsn };
  if (slot.confirmedFlushLsn === null || parseLsn(slot.confirmedFlushLsn) > parseLsn(recorded.boundLsn))
    return {
      kind: "halt",
      reason: "slot_replaced",
      gap: gap(
        `replication slot ${slotName} starts at ${slot.confirmedFlushLsn ?? "(none)"}, past the last position Tally confirmed to it (${recorded.boundLsn}): ` +
          `it was created anew (or advanced by someone else), and ${since} up to ${slot.confirmedFlushLsn ?? "its start"} never reached the ledger`,
      ),
    };
  return { kind: "stream", adopt: null };
}
