import { describe, expect, it } from "vitest";
import { judgeSlot, type RecordedSlot, type ServerSlot } from "./slotIdentity.ts";

const DB = "erp";
const recorded = (over: Partial<RecordedSlot> = {}): RecordedSlot => ({
  snapshotDone: true,
  boundLsn: "0/5000",
  boundAt: new Date("2026-11-26T10:00:00Z"),
  halted: null,
  ...over,
});
const slot = (over: Partial<ServerSlot> = {}): ServerSlot => ({
  database: DB,
  plugin: "pgoutput",
  confirmedFlushLsn: "0/5000",
  walStatus: "reserved",
  ...over,
});

describe("judgeSlot: is the slot on the server the one Tally confirmed to?", () => {
  it("streams from its own slot, at or behind the bound (a crash may leave the slot behind what was recorded)", () => {
    expect(judgeSlot("s", DB, recorded(), slot())).toEqual({ kind: "stream", adopt: null });
    expect(judgeSlot("s", DB, recorded(), slot({ confirmedFlushLsn: "0/4000" }))).toEqual({ kind: "stream", adopt: null });
  });

  it("halts on a slot past the bound: created anew, and what was committed in between is missing", () => {
    const v = judgeSlot("s", DB, recorded(), slot({ confirmedFlushLsn: "0/5001" }));
    expect(v).toMatchObject({
      kind: "halt",
      reason: "slot_replaced",
      gap: { slot: "s", lastConfirmedLsn: "0/5000", lastConfirmedAt: "2026-11-26T10:00:00.000Z", slotConfirmedLsn: "0/5001" },
    });
    // LSNs compare as numbers, not text.
    expect(judgeSlot("s", DB, recorded({ boundLsn: "0/FFFFFFFF" }), slot({ confirmedFlushLsn: "1/0" })).kind).toBe("halt");
    expect(judgeSlot("s", DB, recorded({ boundLsn: "1/0" }), slot({ confirmedFlushLsn: "0/FFFFFFFF" })).kind).toBe("stream");
  });

  it("halts when the slot is gone, invalidated, or someone else's", () => {
    expect(judgeSlot("s", DB, recorded(), undefined)).toMatchObject({ kind: "halt", reason: "slot_lost", gap: { slotConfirmedLsn: null } });
    expect(judgeSlot("s", DB, recorded(), slot({ walStatus: "lost" }))).toMatchObject({ kind: "halt", reason: "slot_invalidated" });
    expect(judgeSlot("s", DB, recorded(), slot({ database: "other" }))).toMatchObject({ kind: "halt", reason: "slot_replaced" });
    expect(judgeSlot("s", DB, recorded(), slot({ plugin: "wal2json" }))).toMatchObject({ kind: "halt", reason: "slot_replaced" });
  });

  it("snapshots on the first start whatever slot exists; stays halted once halted; adopts the slot of a row from before the bound", () => {
    expect(judgeSlot("s", DB, recorded({ snapshotDone: false, boundLsn: null }), slot({ confirmedFlushLsn: "9/0" }))).toEqual({ kind: "snapshot" });
    const halted = recorded({
      halted: {
        reason: "slot_lost",
        at: new Date(),
        detail: { slot: "s", lastConfirmedLsn: "0/1", lastConfirmedAt: null, slotConfirmedLsn: null, message: "gone" },
      },
    });
    expect(judgeSlot("s", DB, halted, slot())).toMatchObject({ kind: "halt", reason: "slot_lost", gap: { message: "gone" } });
    expect(judgeSlot("s", DB, recorded({ boundLsn: null }), slot({ confirmedFlushLsn: "3/0" }))).toEqual({ kind: "stream", adopt: "3/0" });
  });
});
