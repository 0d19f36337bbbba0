import { initialTransition, transition } from "xstate";
import { describe, expect, it } from "vitest";
import {
  INITIAL_STATUS,
  LIFECYCLE_EVENTS,
  RESERVATION_STATUSES,
  isFinal,
  lifecycleMachine,
  movesFrom,
  nextStatus,
  type LifecycleEventType,
  type ReservationStatus,
} from "./lifecycle.ts";

/** Every status change the lifecycle allows: [from, event, to]. */
const MOVES: ReadonlyArray<readonly [ReservationStatus, LifecycleEventType, ReservationStatus]> = [
  ["pending", "hold", "held"],
  ["pending", "reject", "rejected"],
  ["held", "commit", "committed"],
  ["held", "release", "released"],
  ["held", "fulfill", "fulfilled"],
  ["held", "expire", "expired"],
  ["committed", "release", "released"],
  ["committed", "fulfill", "fulfilled"],
];

/** Requests answered again, unchanged: [status, event]. */
const REPEATS: ReadonlyArray<readonly [ReservationStatus, LifecycleEventType]> = [
  ["committed", "commit"],
  ["fulfilled", "fulfill"],
  ["released", "release"],
  ["expired", "release"],
  ["rejected", "release"],
];

const FINAL: ReadonlyArray<ReservationStatus> = ["fulfilled", "released", "expired", "rejected"];

const listed = (
  list: ReadonlyArray<readonly [ReservationStatus, LifecycleEventType, ...Array<unknown>]>,
  s: ReservationStatus,
  e: LifecycleEventType,
) => list.some(([from, event]) => from === s && event === e);

describe("lifecycleMachine", () => {
  it("starts pending", () => {
    const [snapshot, actions] = initialTransition(lifecycleMachine);
    expect(snapshot.value).toBe("pending");
    expect(actions).toEqual([]);
    expect(INITIAL_STATUS).toBe("pending");
  });

  it("is driven through xstate's pure transition()", () => {
    const [pending] = initialTransition(lifecycleMachine);
    const [held] = transition(lifecycleMachine, pending, { type: "hold" });
    expect(held.value).toBe("held");
    const [committed] = transition(lifecycleMachine, held, { type: "commit" });
    expect(committed.value).toBe("committed");
    const [fulfilled] = transition(lifecycleMachine, committed, { type: "fulfill" });
    expect(fulfilled.value).toBe("fulfilled");
    expect(fulfilled.status).toBe("done");
  });
});

describe("nextStatus", () => {
  it.each(MOVES)("%s --%s--> %s", (from, event, to) => {
    expect(nextStatus(from, event)).toEqual({ kind: "move", event, from, to });
    expect(nextStatus(from, { type: event })).toEqual({ kind: "move", event, from, to });
  });

  it.each(REPEATS)("%s answers %s again, unchanged", (status, event) => {
    expect(nextStatus(status, event)).toEqual({ kind: "repeat", event, status });
  });

  it("refuses every other (status, event) pair", () => {
    const refused: Array<string> = [];
    for (const status of RESERVATION_STATUSES)
      for (const event of LIFECYCLE_EVENTS) {
        if (listed(MOVES, status, event) || listed(REPEATS, status, event)) continue;
        expect(nextStatus(status, event)).toEqual({ kind: "refused", event, status });
        refused.push(`${status}:${event}`);
      }
    // 7 statuses × 6 events, less the 8 moves and 5 repeats.
    expect(refused).toHaveLength(7 * 6 - MOVES.length - REPEATS.length);
    expect(refused).toEqual(
      expect.arrayContaining([
        "pending:commit",
        "pending:release",
        "pending:fulfill",
        "pending:expire",
        "committed:expire",
        "held:hold",
        "fulfilled:release",
        "released:fulfill",
      ]),
    );
  });

  it("a lapsed hold is expired only by the sweeper: commit stays a move (the SQL guards the expiry)", () => {
    expect(nextStatus("held", "commit").kind).toBe("move");
    expect(nextStatus("committed", "expire").kind).toBe("refused");
  });
});

describe("final states", () => {
  it("are exactly fulfilled, released, expired and rejected", () => {
    expect(RESERVATION_STATUSES.filter(isFinal)).toEqual(FINAL);
  });

  it.each(FINAL)("%s accepts nothing: no event leaves it", (status) => {
    const snapshot = lifecycleMachine.resolveState({ value: status });
    expect(snapshot.status).toBe("done");
    for (const event of LIFECYCLE_EVENTS) {
      const [next, actions] = transition(lifecycleMachine, snapshot, { type: event });
      expect(next.value).toBe(status);
      expect(actions).toEqual([]);
      expect(nextStatus(status, event).kind).not.toBe("move");
    }
  });
});

describe("movesFrom", () => {
  it("names the statuses an event moves out of", () => {
    expect(movesFrom("hold")).toEqual(["pending"]);
    expect(movesFrom("reject")).toEqual(["pending"]);
    expect(movesFrom("commit")).toEqual(["held"]);
    expect(movesFrom("release")).toEqual(["held", "committed"]);
    expect(movesFrom("fulfill")).toEqual(["held", "committed"]);
    expect(movesFrom("expire")).toEqual(["held"]);
  });
});
