/**
 * The lifecycle of one hold as a statechart. Like the stock status chart it stores nothing: the
 * decider asks it, through xstate's pure `transition()`, where a hold goes next, and the hold's
 * status lives in the actor state (and the `holds` table). A hold is opened or refused once; an
 * open hold loses units to releases and fulfilments and ends, when nothing is left open, in the
 * terminal state of the step that emptied it. Terminal states accept nothing.
 */
import { setup, transition } from "xstate";
import type { HoldStatus } from "./state.ts";

/** What can happen to a hold. `remaining` is what it still holds after the step. */
export type HoldInput =
  | { readonly type: "granted" }
  | { readonly type: "refused" }
  | { readonly type: "reduced"; readonly by: "release" | "fulfill" | "expire"; readonly remaining: number };

const emptiedBy =
  (by: "release" | "fulfill" | "expire") =>
  ({ event }: { event: HoldInput }) =>
    event.type === "reduced" && event.remaining <= 0 && event.by === by;

export const holdMachine = setup({
  types: { events: {} as HoldInput },
  guards: {
    stillOpen: ({ event }) => event.type === "reduced" && event.remaining > 0,
    releasedAll: emptiedBy("release"),
    fulfilledAll: emptiedBy("fulfill"),
    expiredAll: emptiedBy("expire"),
  },
}).createMachine({
  id: "hold",
  initial: "requested",
  states: {
    requested: {
      description: "a reserve named the hold; its SKU's actor has not decided it",
      on: { granted: { target: "open" }, refused: { target: "refused" } },
    },
    open: {
      description: "units held for the order line",
      on: {
        reduced: [
          { guard: "stillOpen" },
          { guard: "releasedAll", target: "released" },
          { guard: "fulfilledAll", target: "fulfilled" },
          { guard: "expiredAll", target: "expired" },
        ],
      },
    },
    released: { type: "final", description: "cancelled: its units went back to available" },
    fulfilled: { type: "final", description: "shipped" },
    expired: { type: "final", description: "lapsed: its units went back to available" },
    refused: { type: "final", description: "never held anything: not enough was available" },
  },
});

type HoldSnapshot = ReturnType<typeof holdMachine.resolveState>;
type HoldMachineStatus = HoldStatus | "requested";

// Snapshots are immutable and `transition()` never mutates its input, so one per status is enough.
const snapshots = new Map<HoldMachineStatus, HoldSnapshot>();
const snapshotOf = (status: HoldMachineStatus): HoldSnapshot => {
  let snapshot = snapshots.get(status);
  if (snapshot === undefined) {
    snapshot = holdMachine.resolveState({ value: status });
    snapshots.set(status, snapshot);
  }
  return snapshot;
};

/** The hold's status after `input`, from `current` (`requested` for a hold not yet decided). Pure. */
export const nextHoldStatus = (current: HoldMachineStatus, input: HoldInput): HoldMachineStatus => {
  const [next] = transition(holdMachine, snapshotOf(current), input);
  return next.value as HoldMachineStatus;
};

/** True for the four states a hold ends in. */
export const isClosed = (status: HoldStatus): boolean => status !== "open";
