/**
 * The lifecycle of one reservation (a checkout's hold on a cart) as a statechart. Like the hold and
 * stock status charts it stores nothing: the service asks it, through xstate's pure `transition()`,
 * where a reservation goes on a request, and the status lives in the `reservations` row (the SQL
 * still guards each write with `where status = <from>`, `from` and `to` coming from here).
 *
 * A reservation is created `pending`; the SKU actors' decision makes it `held` (every line held) or
 * `rejected` (a line refused, or no command could be made of it). A held reservation is committed
 * (order placed: no expiry), released, fulfilled or, past its time, expired; a committed one is
 * released or fulfilled. The four ends are final: they accept nothing. A request that repeats the one
 * that already happened (commit a committed reservation, release a released, expired or rejected
 * one, fulfil a fulfilled one) is answered again, unchanged: each state names these in its `meta`.
 */
import { initialTransition, setup, transition } from "xstate";

export type ReservationStatus = "pending" | "held" | "committed" | "fulfilled" | "released" | "expired" | "rejected";

/** Every status, in lifecycle order. */
export const RESERVATION_STATUSES: ReadonlyArray<ReservationStatus> = [
  "pending",
  "held",
  "committed",
  "fulfilled",
  "released",
  "expired",
  "rejected",
];

/** What can happen to a reservation. */
export type LifecycleEvent =
  | { readonly type: "hold" }
  | { readonly type: "reject" }
  | { readonly type: "commit" }
  | { readonly type: "release" }
  | { readonly type: "fulfill" }
  | { readonly type: "expire" };
export type LifecycleEventType = LifecycleEvent["type"];

export const LIFECYCLE_EVENTS: ReadonlyArray<LifecycleEventType> = ["hold", "reject", "commit", "release", "fulfill", "expire"];

interface StatusMeta {
  /** Requests this state already answers: repeated, they change nothing and are not refused. */
  readonly repeats?: ReadonlyArray<LifecycleEventType>;
}

export const lifecycleMachine = setup({
  types: { events: {} as LifecycleEvent, meta: {} as StatusMeta },
}).createMachine({
  id: "reservation",
  initial: "pending",
  states: {
    pending: {
      description: "created; its lines' reserve commands are not all decided",
      on: { hold: { target: "held" }, reject: { target: "rejected" } },
    },
    held: {
      description: "every line held, until its expiry",
      on: {
        commit: { target: "committed" },
        release: { target: "released" },
        fulfill: { target: "fulfilled" },
        expire: { target: "expired" },
      },
    },
    committed: {
      description: "order placed: held with no expiry, until fulfilled or released",
      meta: { repeats: ["commit"] },
      on: { release: { target: "released" }, fulfill: { target: "fulfilled" } },
    },
    fulfilled: { type: "final", description: "shipped", meta: { repeats: ["fulfill"] } },
    released: { type: "final", description: "cancelled: its units went back to available", meta: { repeats: ["release"] } },
    expired: { type: "final", description: "lapsed: its units went back to available", meta: { repeats: ["release"] } },
    rejected: { type: "final", description: "never held: a line refused or undrivable, the others released", meta: { repeats: ["release"] } },
  },
});

type LifecycleSnapshot = ReturnType<typeof lifecycleMachine.resolveState>;

// Snapshots are immutable and `transition()` never mutates its input, so one per status is enough.
const snapshots = new Map<ReservationStatus, LifecycleSnapshot>();
const snapshotOf = (status: ReservationStatus): LifecycleSnapshot => {
  let snapshot = snapshots.get(status);
  if (snapshot === undefined) {
    snapshot = lifecycleMachine.resolveState({ value: status });
    snapshots.set(status, snapshot);
  }
  return snapshot;
};

/** The status a reservation is created in. */
export const INITIAL_STATUS: ReservationStatus = initialTransition(lifecycleMachine)[0].value;

/** What a request does to a reservation in a given status. */
export type LifecycleStep =
  /** A status change: write `to` where the row is still `from`. */
  | { readonly kind: "move"; readonly event: LifecycleEventType; readonly from: ReservationStatus; readonly to: ReservationStatus }
  /** Already done: answered again, nothing written. */
  | { readonly kind: "repeat"; readonly event: LifecycleEventType; readonly status: ReservationStatus }
  /** Not allowed from this status. */
  | { readonly kind: "refused"; readonly event: LifecycleEventType; readonly status: ReservationStatus };

/** Where `event` takes a reservation that is `status`. Pure. */
export const nextStatus = (status: ReservationStatus, event: LifecycleEvent | LifecycleEventType): LifecycleStep => {
  const e: LifecycleEvent = typeof event === "string" ? { type: event } : event;
  const current = snapshotOf(status);
  const [next] = transition(lifecycleMachine, current, e);
  if (next.value !== status) return { kind: "move", event: e.type, from: status, to: next.value };
  const meta = current.getMeta()[`reservation.${status}`];
  if (meta?.repeats?.includes(e.type)) return { kind: "repeat", event: e.type, status };
  return { kind: "refused", event: e.type, status };
};

/** The statuses `event` moves a reservation out of (for a query that picks the rows it applies to). */
export const movesFrom = (event: LifecycleEventType): ReadonlyArray<ReservationStatus> =>
  RESERVATION_STATUSES.filter((s) => nextStatus(s, event).kind === "move");

/** True for the four statuses a reservation ends in: they accept nothing. */
export const isFinal = (status: ReservationStatus): boolean => snapshotOf(status).status === "done";
