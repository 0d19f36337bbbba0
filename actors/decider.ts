/**
 * The per-SKU rules as an Emmett-style decider: `decide` turns a command and
 * the current state into events (ledger legs, transfer and policy facts, status
 * crossings and notifications) or a rejection; `evolve` folds one event into
 * the state. Both are pure: no I/O, no clock, no randomness, no mutation.
 */
import type { Command, LocationId } from "../src/contract/index.ts";
import { locationAvailable } from "../src/contract/index.ts";
import {
  atLeastZero,
  legacyHoldId,
  locationOf,
  type Bucket,
  type HoldState,
  type HoldStatus,
  type LocationState,
  type Movement,
  type SkuEvent,
  type SkuState,
  type StockMoved,
} from "./state.ts";
import { isClosed, nextHoldStatus } from "./holdMachine.ts";
import { levelsOf, nextStatus } from "./statusMachine.ts";

export type RejectionReason =
  | "insufficient_stock"
  /** A release naming a hold that never held anything (never reserved, or refused). */
  | "unknown_hold"
  /** A release naming a hold already released, fulfilled or expired. */
  | "hold_closed"
  /** A release naming a hold at another location. */
  | "hold_elsewhere"
  /** A reserve naming a hold that already exists. */
  | "hold_exists"
  | "unknown_transfer"
  | "exceeds_in_transit"
  | "transfer_mismatch"
  | "sku_mismatch";

/** Why a command was refused; nothing is written for it. */
export interface Rejection {
  readonly reason: RejectionReason;
  readonly message: string;
  /** For `insufficient_stock`: what could have been reserved (clamped at 0). */
  readonly available?: bigint;
  /** For `insufficient_stock` of a scoped reserve: what the channel may sell in all its locations. */
  readonly channelAvailable?: bigint;
  /** For a rejected release: the hold it named, and the status that hold is in. */
  readonly holdStatus?: HoldStatus;
}

/**
 * A rejection writes no ledger leg; its `events` (only `hold_refused`, for a refused reserve) record
 * the refused hold and are published.
 */
export type Decision =
  | { readonly ok: true; readonly events: ReadonlyArray<SkuEvent> }
  | { readonly ok: false; readonly rejection: Rejection; readonly events?: ReadonlyArray<SkuEvent> };

const accept = (events: ReadonlyArray<SkuEvent>): Decision => ({ ok: true, events });
const reject = (rejection: Rejection): Decision => ({ ok: false, rejection });

/**
 * The hold a release or fulfill acts on: the one it names; or, when the ledger has never seen that
 * name, the location's legacy hold (a ledger migrated from before per-line holds keeps its reserved
 * units there until the orders placed before the migration are shipped or cancelled).
 */
const holdNamed = (state: SkuState, holdId: string, location: string): { id: string; hold: HoldState | undefined } => {
  const hold = state.holds[holdId];
  if (hold !== undefined) return { id: holdId, hold };
  const legacyId = legacyHoldId(location);
  const legacy = state.holds[legacyId];
  return legacy !== undefined && legacy.status === "open" ? { id: legacyId, hold: legacy } : { id: holdId, hold: undefined };
};

/** Why a hold cannot give up units, or null when it can. */
const holdProblem = (hold: HoldState | undefined, location: string): "unknown_hold" | "hold_closed" | "hold_elsewhere" | null => {
  if (hold === undefined || hold.status === "refused") return "unknown_hold";
  if (isClosed(hold.status)) return "hold_closed";
  return hold.location === location ? null : "hold_elsewhere";
};

const unreachable = (value: never, what: string): never => {
  throw new Error(`unhandled ${what}: ${JSON.stringify(value)}`);
};

/** Where an open hold is after `by` left it holding `open`. */
const holdStatusAfter = (by: "release" | "fulfill" | "expire", open: number): HoldStatus =>
  nextHoldStatus("open", { type: "reduced", by, remaining: open }) as HoldStatus;

/** A stock movement of the SKU: `delta` units into (or out of) `bucket` at `at`. */
type Leg = (at: LocationId, bucket: Bucket, delta: number | bigint, movement: Movement) => StockMoved;
const legsOf =
  (sku: Command["sku"]): Leg =>
  (at, bucket, delta, movement) => ({
    type: "stock_moved",
    sku,
    location: at,
    bucket,
    delta: BigInt(delta),
    movement,
  });

/** The events a command causes before status is considered, or why it is refused. */
const legsFor = (state: SkuState, command: Command): Decision => {
  const { sku, location } = command;
  const here = locationOf(state, location);
  const leg = legsOf(sku);

  switch (command.type) {
    case "receive":
      return accept([leg(location, "on_hand", command.qty, "receive")]);
    case "sell":
      return accept([leg(location, "on_hand", -command.qty, "sell")]);
    case "return":
      return accept([
        command.restockable ? leg(location, "on_hand", command.qty, "return") : leg(location, "damaged", command.qty, "return_damaged"),
      ]);
    case "reserve":
      return reserveDecision(state, command, leg);
    case "release":
      return releaseDecision(state, command, leg);
    case "fulfill":
      return fulfillDecision(state, command, leg);
    case "adjust":
      return accept([leg(location, "on_hand", command.qty, "adjust")]);
    case "count": {
      const variance = BigInt(command.qty) - here.onHand;
      return accept(variance === 0n ? [] : [leg(location, "on_hand", variance, "count_variance")]);
    }
    case "transfer_out":
      return transferOutDecision(state, command, leg);
    case "transfer_in":
      return transferInDecision(state, command, leg);
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

/** A reserve opens a hold when the location (and the channel, for a scoped one) has the units; else it is refused, as an event. */
function reserveDecision(state: SkuState, command: Extract<Command, { type: "reserve" }>, leg: Leg): Decision {
  const { sku, location } = command;
  const here = locationOf(state, location);
  const holdId = command.reservationId;
  const existing = state.holds[holdId];
  if (existing !== undefined) {
    return reject({
      reason: "hold_exists",
      message: `hold ${holdId} of ${sku} already exists (${existing.status}); a reserve opens a new hold`,
      holdStatus: existing.status,
    });
  }
  const channel = command.scope?.channel ?? null;
  const refuse = (rejection: Rejection): Decision => ({
    ok: false,
    rejection,
    events: [
      {
        type: "hold_refused",
        sku,
        location,
        holdId,
        qty: command.qty,
        channel,
        available: rejection.available ?? 0n,
        reason: rejection.reason,
      },
    ],
  });
  const available = atLeastZero(locationAvailable(here));
  const scope = command.scope;
  if (scope) {
    const sellable = scope.locations.reduce((n, at) => n + atLeastZero(locationAvailable(locationOf(state, at))), 0n);
    const channelAvailable = atLeastZero(sellable - BigInt(scope.buffer));
    if (channelAvailable < command.qty || available < command.qty) {
      return refuse({
        reason: "insufficient_stock",
        message:
          channelAvailable < command.qty
            ? `cannot reserve ${command.qty} of ${sku} for channel ${scope.channel}: only ${channelAvailable} available to it`
            : `cannot reserve ${command.qty} of ${sku} at ${location}: only ${available} available`,
        // biome-ignore lint/complexity/useMathMinMax: bigints (Math.min takes numbers only)
        available: available < channelAvailable ? available : channelAvailable,
        channelAvailable,
      });
    }
  } else if (available < command.qty) {
    return refuse({
      reason: "insufficient_stock",
      message: `cannot reserve ${command.qty} of ${sku} at ${location}: only ${available} available`,
      available,
    });
  }
  return accept([
    leg(location, "reserved", command.qty, "reserve"),
    { type: "hold_opened", sku, location, holdId, qty: command.qty, channel, expiresAt: command.expiresAt ?? null },
  ]);
}

/** A release (or expiry) gives back what an open hold here still holds. */
function releaseDecision(state: SkuState, command: Extract<Command, { type: "release" }>, leg: Leg): Decision {
  const { sku, location } = command;
  const { id, hold } = holdNamed(state, command.reservationId, location);
  const problem = holdProblem(hold, location);
  if (problem !== null || hold === undefined) {
    const what =
      problem === "hold_closed"
        ? `it is already ${hold!.status}`
        : problem === "hold_elsewhere"
          ? `it holds units at ${hold!.location}`
          : hold?.status === "refused"
            ? "its reserve was refused, so it holds nothing"
            : "no reserve opened it";
    return reject({
      reason: problem ?? "unknown_hold",
      message: `release of hold ${command.reservationId} of ${sku} at ${location} changes nothing: ${what}`,
      ...(hold ? { holdStatus: hold.status } : {}),
    });
  }
  const by = command.expired === true ? "expire" : "release";
  const taken = by === "expire" ? hold.open : Math.min(command.qty, hold.open);
  const open = hold.open - taken;
  return accept([
    leg(location, "reserved", -taken, "release"),
    { type: "hold_reduced", sku, location, holdId: id, qty: taken, open, status: holdStatusAfter(by, open) },
  ]);
}

/** A shipment is a fact: what the hold covers comes out of it, the rest leaves on hand regardless. */
function fulfillDecision(state: SkuState, command: Extract<Command, { type: "fulfill" }>, leg: Leg): Decision {
  const { sku, location } = command;
  // A shipment is a fact: what the hold covers comes out of it, the rest leaves on hand regardless.
  const { id, hold } = holdNamed(state, command.reservationId, location);
  const problem = holdProblem(hold, location);
  const covered = problem === null && hold !== undefined ? Math.min(command.qty, hold.open) : 0;
  const uncovered = command.qty - covered;
  const events: Array<SkuEvent> = [];
  if (covered > 0) {
    const open = hold!.open - covered;
    events.push(leg(location, "reserved", -covered, "fulfill"), leg(location, "on_hand", -covered, "fulfill"), {
      type: "hold_reduced",
      sku,
      location,
      holdId: id,
      qty: covered,
      open,
      status: holdStatusAfter("fulfill", open),
    });
  }
  if (uncovered > 0) {
    events.push(leg(location, "on_hand", -uncovered, "fulfill_unreserved"), {
      type: "fulfill_unreserved",
      sku,
      location,
      holdId: command.reservationId,
      qty: uncovered,
      reason: problem ?? "exceeds_hold",
    });
  }
  return accept(events);
}

/** Ships units into transit toward the destination (again under the same transfer id: more of it). */
function transferOutDecision(state: SkuState, command: Extract<Command, { type: "transfer_out" }>, leg: Leg): Decision {
  const { sku, location } = command;
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

/** Receives units of an open transfer, up to what is still in transit. */
function transferInDecision(state: SkuState, command: Extract<Command, { type: "transfer_in" }>, leg: Leg): Decision {
  const { sku, location } = command;
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

const withHold = (state: SkuState, holdId: string, hold: HoldState): SkuState => ({
  ...state,
  holds: { ...state.holds, [holdId]: hold },
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
            open === undefined ? { from: event.from, to: event.to, shipped: event.qty, received: 0 } : { ...open, shipped: open.shipped + event.qty },
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
    case "hold_opened":
      return withHold(state, event.holdId, {
        location: event.location,
        channel: event.channel,
        qty: event.qty,
        open: event.qty,
        status: "open",
        expiresAt: event.expiresAt,
      });
    case "hold_refused":
      return withHold(state, event.holdId, {
        location: event.location,
        channel: event.channel,
        qty: event.qty,
        open: 0,
        status: "refused",
        expiresAt: null,
      });
    case "hold_reduced": {
      const hold = state.holds[event.holdId];
      return hold === undefined ? state : withHold(state, event.holdId, { ...hold, open: event.open, status: event.status });
    }
    case "low_stock":
    case "out_of_stock":
    case "back_in_stock":
    case "negative_stock":
    case "fulfill_unreserved":
      return state;
    default:
      return unreachable(event, "event type");
  }
}
