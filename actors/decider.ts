/**
 * The per-SKU rules as an Emmett-style decider: `decide` turns a command and
 * the current state into events (ledger legs, transfer and policy facts, status
 * crossings and notifications) or a rejection; `evolve` folds one event into
 * the state. Both are pure: no I/O, no clock, no randomness, no mutation.
 */
import type { Command, LocationId } from "./command.ts";
import {
  locationAvailable,
  locationOf,
  type Bucket,
  type LocationState,
  type Movement,
  type SkuEvent,
  type SkuState,
  type StockMoved,
} from "./state.ts";
import { levelsOf, nextStatus } from "./statusMachine.ts";

export type RejectionReason =
  | "insufficient_stock"
  | "exceeds_reserved"
  | "unknown_transfer"
  | "exceeds_in_transit"
  | "transfer_mismatch"
  | "sku_mismatch";

/** Why a command was refused; nothing is written for it. */
export interface Rejection {
  readonly reason: RejectionReason;
  readonly message: string;
  /** For `insufficient_stock`: what could have been reserved (clamped at 0). */
  readonly available?: number;
  /** For `insufficient_stock` of a scoped reserve: what the channel may sell in all its locations. */
  readonly channelAvailable?: number;
  /** For `exceeds_reserved`: what is reserved at the location. */
  readonly reserved?: number;
}

export type Decision =
  | { readonly ok: true; readonly events: ReadonlyArray<SkuEvent> }
  | { readonly ok: false; readonly rejection: Rejection };

const accept = (events: ReadonlyArray<SkuEvent>): Decision => ({ ok: true, events });
const reject = (rejection: Rejection): Decision => ({ ok: false, rejection });

const unreachable = (value: never, what: string): never => {
  throw new Error(`unhandled ${what}: ${JSON.stringify(value)}`);
};

/** The events a command causes before status is considered, or why it is refused. */
const legsFor = (state: SkuState, command: Command): Decision => {
  const { sku, location } = command;
  const here = locationOf(state, location);
  const leg = (at: LocationId, bucket: Bucket, delta: number, movement: Movement): StockMoved => ({
    type: "stock_moved",
    sku,
    location: at,
    bucket,
    delta,
    movement,
  });
  const exceedsReserved = (verb: string, qty: number): Decision =>
    reject({
      reason: "exceeds_reserved",
      message: `cannot ${verb} ${qty} of ${sku} at ${location}: only ${here.reserved} reserved`,
      reserved: here.reserved,
    });

  switch (command.type) {
    case "receive":
      return accept([leg(location, "on_hand", command.qty, "receive")]);
    case "sell":
      return accept([leg(location, "on_hand", -command.qty, "sell")]);
    case "return":
      return accept([
        command.restockable
          ? leg(location, "on_hand", command.qty, "return")
          : leg(location, "damaged", command.qty, "return_damaged"),
      ]);
    case "reserve": {
      const available = Math.max(0, locationAvailable(here));
      const scope = command.scope;
      if (scope) {
        const channelAvailable = Math.max(0, scope.locations.reduce((n, at) => n + Math.max(0, locationAvailable(locationOf(state, at))), 0) - scope.buffer);
        if (channelAvailable < command.qty || available < command.qty) {
          return reject({
            reason: "insufficient_stock",
            message:
              channelAvailable < command.qty
                ? `cannot reserve ${command.qty} of ${sku} for channel ${scope.channel}: only ${channelAvailable} available to it`
                : `cannot reserve ${command.qty} of ${sku} at ${location}: only ${available} available`,
            available: Math.min(available, channelAvailable),
            channelAvailable,
          });
        }
      } else if (available < command.qty) {
        return reject({
          reason: "insufficient_stock",
          message: `cannot reserve ${command.qty} of ${sku} at ${location}: only ${available} available`,
          available,
        });
      }
      return accept([leg(location, "reserved", command.qty, "reserve")]);
    }
    case "release":
      if (command.qty > here.reserved) return exceedsReserved("release", command.qty);
      return accept([leg(location, "reserved", -command.qty, "release")]);
    case "fulfill":
      if (command.qty > here.reserved) return exceedsReserved("fulfill", command.qty);
      return accept([
        leg(location, "reserved", -command.qty, "fulfill"),
        leg(location, "on_hand", -command.qty, "fulfill"),
      ]);
    case "adjust":
      return accept([leg(location, "on_hand", command.qty, "adjust")]);
    case "count": {
      const variance = command.qty - here.onHand;
      return accept(variance === 0 ? [] : [leg(location, "on_hand", variance, "count_variance")]);
    }
    case "transfer_out": {
      const open = state.transfers[command.transferId];
      if (open !== undefined && (open.from !== location || open.to !== command.to)) {
        return reject({
          reason: "transfer_mismatch",
          message: `transfer ${command.transferId} of ${sku} goes ${open.from} → ${open.to}, not ${location} → ${command.to}`,
        });
      }
      return accept([
        leg(location, "on_hand", -command.qty, "transfer_out"),
        leg(command.to, "in_transit", command.qty, "transfer_out"),
        {
          type: "transfer_shipped",
          sku,
          location,
          transferId: command.transferId,
          from: location,
          to: command.to,
          qty: command.qty,
        },
      ]);
    }
    case "transfer_in": {
      const open = state.transfers[command.transferId];
      if (open === undefined) {
        return reject({
          reason: "unknown_transfer",
          message: `transfer ${command.transferId} of ${sku} is not open (never shipped or already settled)`,
        });
      }
      if (open.from !== command.from || open.to !== location) {
        return reject({
          reason: "transfer_mismatch",
          message: `transfer ${command.transferId} of ${sku} goes ${open.from} → ${open.to}, not ${command.from} → ${location}`,
        });
      }
      const outstanding = open.shipped - open.received;
      if (command.qty > outstanding) {
        return reject({
          reason: "exceeds_in_transit",
          message: `cannot receive ${command.qty} of transfer ${command.transferId} of ${sku}: only ${outstanding} in transit`,
        });
      }
      return accept([
        leg(location, "in_transit", -command.qty, "transfer_in"),
        leg(location, "on_hand", command.qty, "transfer_in"),
        { type: "transfer_received", sku, location, transferId: command.transferId, qty: command.qty },
      ]);
    }
    case "set_policy":
      return accept([
        {
          type: "policy_set",
          sku,
          location,
          safetyStock: command.safetyStock,
          reorderPoint: command.reorderPoint,
        },
      ]);
    default:
      return unreachable(command, "command type");
  }
};

/** Locations whose balances or policy the events change, in first-touched order. */
const touchedLocations = (events: ReadonlyArray<SkuEvent>): Array<LocationId> => {
  const seen = new Set<LocationId>();
  for (const event of events) {
    if (event.type === "stock_moved" || event.type === "policy_set") seen.add(event.location);
  }
  return [...seen];
};

/**
 * Decides what `command` does to the SKU in `state`: the ledger legs and facts,
 * then for every touched location the status crossing (if any) with its
 * notifications. A rejection writes nothing.
 */
export function decide(state: SkuState, command: Command): Decision {
  if (command.sku !== state.sku) {
    return reject({
      reason: "sku_mismatch",
      message: `command ${command.id} is for SKU ${command.sku}, not ${state.sku}`,
    });
  }
  const decision = legsFor(state, command);
  if (!decision.ok) return decision;

  const events: Array<SkuEvent> = [...decision.events];
  const after = decision.events.reduce(evolve, state);
  for (const location of touchedLocations(decision.events)) {
    const current = locationOf(after, location);
    const next = nextStatus(current.status, levelsOf(current));
    if (next.status === current.status) continue;
    events.push({ type: "status_changed", sku: state.sku, location, from: current.status, to: next.status });
    for (const notification of next.notifications) events.push({ ...notification, sku: state.sku, location });
  }
  return accept(events);
}

const BUCKET_FIELD = {
  on_hand: "onHand",
  reserved: "reserved",
  in_transit: "inTransit",
  damaged: "damaged",
} as const satisfies Record<Bucket, keyof LocationState>;

const withLocation = (state: SkuState, location: LocationId, change: (l: LocationState) => LocationState): SkuState => ({
  ...state,
  locations: { ...state.locations, [location]: change(locationOf(state, location)) },
});

/** Folds one event into the state, returning new objects. Notifications leave the state as is. */
export function evolve(state: SkuState, event: SkuEvent): SkuState {
  switch (event.type) {
    case "stock_moved": {
      const field = BUCKET_FIELD[event.bucket];
      return withLocation(state, event.location, (l) => ({ ...l, [field]: l[field] + event.delta }));
    }
    case "policy_set":
      return withLocation(state, event.location, (l) => ({
        ...l,
        safetyStock: event.safetyStock,
        reorderPoint: event.reorderPoint,
      }));
    case "status_changed":
      return withLocation(state, event.location, (l) => ({ ...l, status: event.to }));
    case "transfer_shipped": {
      const open = state.transfers[event.transferId];
      return {
        ...state,
        transfers: {
          ...state.transfers,
          [event.transferId]:
            open === undefined
              ? { from: event.from, to: event.to, shipped: event.qty, received: 0 }
              : { ...open, shipped: open.shipped + event.qty },
        },
      };
    }
    case "transfer_received": {
      const open = state.transfers[event.transferId];
      if (open === undefined) return state;
      const { [event.transferId]: _settled, ...others } = state.transfers;
      const received = open.received + event.qty;
      return {
        ...state,
        transfers: received >= open.shipped ? others : { ...others, [event.transferId]: { ...open, received } },
      };
    }
    case "low_stock":
    case "out_of_stock":
    case "back_in_stock":
    case "negative_stock":
      return state;
    default:
      return unreachable(event, "event type");
  }
}
