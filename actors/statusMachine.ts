/**
 * The stock status statechart of one (SKU, location). It stores nothing: each
 * call resolves a snapshot for the current status, feeds it the new levels
 * through xstate's pure `transition()`, and reads the target state and the
 * `notify` actions it would run. Notifications fire once per crossing, never
 * per sale, and `low → in_stock` needs the reorder point plus a hysteresis band
 * so a SKU hovering around its reorder point does not flap. A location starts `new`: its first
 * stock (onboarding, a snapshot's opening count, a first receipt) is not a crossing back into
 * stock and notifies nothing; only an oversell of a never-stocked location is raised.
 */
import { setup, transition } from "xstate";
import { locationAvailable } from "../src/contract/index.ts";
import type { LocationState, StockStatus } from "./state.ts";

/** The inputs of the status decision for one location. */
export interface StockLevels {
  readonly onHand: bigint;
  /** `locationAvailable`: on_hand − reserved − safety stock. */
  readonly available: bigint;
  readonly reorderPoint: number;
}

/** The one event the machine accepts. */
export interface LevelsEvent extends StockLevels {
  readonly type: "levels";
}

export type NotificationKind = "low_stock" | "out_of_stock" | "back_in_stock" | "negative_stock";

/** A notification without its sku/location; `decide` adds those. */
export type StatusNotification =
  | {
      readonly type: "low_stock";
      readonly available: bigint;
      readonly reorderPoint: number;
      readonly replenishmentRequested: { readonly reorderPoint: number; readonly shortfall: bigint };
    }
  | { readonly type: "out_of_stock" }
  | { readonly type: "back_in_stock"; readonly available: bigint }
  | { readonly type: "negative_stock"; readonly onHand: bigint };

/** How far above the reorder point available must climb to leave `low`: max(1, ⌈10% of it⌉). */
export const hysteresisBand = (reorderPoint: number): number => Math.max(1, Math.ceil(reorderPoint * 0.1));

export const levelsOf = (l: LocationState): StockLevels => ({
  onHand: l.onHand,
  available: locationAvailable(l),
  reorderPoint: l.reorderPoint,
});

const atLeastOne = (n: bigint): bigint => (n > 1n ? n : 1n);

const notify = (kind: NotificationKind) => ({ type: "notify", params: { kind } }) as const;

export const statusMachine = setup({
  types: {
    events: {} as LevelsEvent,
  },
  guards: {
    isNegative: ({ event }) => event.onHand < 0n,
    isOut: ({ event }) => event.available <= 0n,
    isLow: ({ event }) => event.available <= event.reorderPoint,
    isBelowBand: ({ event }) => event.available < event.reorderPoint + hysteresisBand(event.reorderPoint),
  },
  actions: {
    // Never executed: `nextStatus` collects these from `transition()` and turns them into events.
    notify: (_, _params: { readonly kind: NotificationKind }) => {},
  },
}).createMachine({
  id: "stockStatus",
  initial: "new",
  states: {
    new: {
      description: "never had anything to promise: its first stock is not back in stock",
      on: {
        levels: [
          { guard: "isNegative", target: "negative", actions: notify("negative_stock") },
          { guard: "isOut" },
          { guard: "isLow", target: "low" },
          { target: "in_stock" },
        ],
      },
    },
    in_stock: {
      description: "available above the reorder point",
      on: {
        levels: [
          { guard: "isNegative", target: "negative", actions: notify("negative_stock") },
          { guard: "isOut", target: "out", actions: notify("out_of_stock") },
          { guard: "isLow", target: "low", actions: notify("low_stock") },
        ],
      },
    },
    low: {
      description: "available at or below the reorder point (until it clears the band)",
      on: {
        levels: [
          { guard: "isNegative", target: "negative", actions: notify("negative_stock") },
          { guard: "isOut", target: "out", actions: notify("out_of_stock") },
          { guard: "isBelowBand" },
          { target: "in_stock" },
        ],
      },
    },
    out: {
      description: "nothing available to promise",
      on: {
        levels: [
          { guard: "isNegative", target: "negative", actions: notify("negative_stock") },
          { guard: "isOut" },
          { guard: "isLow", target: "low", actions: [notify("back_in_stock"), notify("low_stock")] },
          { target: "in_stock", actions: notify("back_in_stock") },
        ],
      },
    },
    negative: {
      description: "on hand below zero (oversold); left only when on hand is back to zero or more",
      on: {
        levels: [
          { guard: "isNegative" },
          { guard: "isOut", target: "out", actions: notify("out_of_stock") },
          { guard: "isLow", target: "low", actions: [notify("back_in_stock"), notify("low_stock")] },
          { target: "in_stock", actions: notify("back_in_stock") },
        ],
      },
    },
  },
});

const notification = (kind: NotificationKind, levels: StockLevels): StatusNotification => {
  switch (kind) {
    case "low_stock":
      return {
        type: "low_stock",
        available: levels.available,
        reorderPoint: levels.reorderPoint,
        replenishmentRequested: {
          reorderPoint: levels.reorderPoint,
          shortfall: atLeastOne(BigInt(levels.reorderPoint) - levels.available),
        },
      };
    case "out_of_stock":
      return { type: "out_of_stock" };
    case "back_in_stock":
      return { type: "back_in_stock", available: levels.available };
    case "negative_stock":
      return { type: "negative_stock", onHand: levels.onHand };
    default: {
      const unreachable: never = kind;
      throw new Error(`unknown notification kind ${String(unreachable)}`);
    }
  }
};

type StatusSnapshot = ReturnType<typeof statusMachine.resolveState>;

// Snapshots are immutable and `transition()` never mutates its input, so one per status is enough.
const snapshots = new Map<StockStatus, StatusSnapshot>();
const snapshotOf = (status: StockStatus): StatusSnapshot => {
  let snapshot = snapshots.get(status);
  if (snapshot === undefined) {
    snapshot = statusMachine.resolveState({ value: status });
    snapshots.set(status, snapshot);
  }
  return snapshot;
};

/**
 * What `transition()` decided for one status and one reading of the guards: the target and the
 * notification kinds. The machine looks at an event only through its four guards, so the decision
 * is a function of (status, guards): it is asked of xstate once per combination (at most 5 × 16)
 * and remembered, instead of building an actor scope for every command. Only the notifications'
 * figures come from the levels themselves.
 */
const decisions = new Map<string, { readonly status: StockStatus; readonly kinds: ReadonlyArray<NotificationKind> }>();

/**
 * The status after `levels`, starting from `current`, and the notifications the
 * crossing raises (none when the status stays). Pure.
 */
export const nextStatus = (
  current: StockStatus,
  levels: StockLevels,
): { readonly status: StockStatus; readonly notifications: ReadonlyArray<StatusNotification> } => {
  const key =
    current +
    (levels.onHand < 0n ? "N" : "-") +
    (levels.available <= 0n ? "O" : "-") +
    (levels.available <= levels.reorderPoint ? "L" : "-") +
    (levels.available < levels.reorderPoint + hysteresisBand(levels.reorderPoint) ? "B" : "-");
  let decision = decisions.get(key);
  if (decision === undefined) {
    const [next, actions] = transition(statusMachine, snapshotOf(current), { type: "levels", ...levels });
    const kinds: Array<NotificationKind> = [];
    for (const action of actions) if (action.type === "notify") kinds.push(action.params.kind);
    decision = { status: next.value, kinds };
    decisions.set(key, decision);
  }
  return { status: decision.status, notifications: decision.kinds.length === 0 ? [] : decision.kinds.map((kind) => notification(kind, levels)) };
};
