import { Either } from "effect";
import { describe, expect, it } from "vitest";
import { decodeCommand, LocationId, Sku, type Command, type CommandType } from "../src/contract/command.ts";
import { locationAvailable } from "../src/contract/availability.ts";
import { decide, evolve, type Decision, type Rejection, type RejectionReason } from "./decider.ts";
import {
  emptyLocation,
  initialSkuState,
  type Bucket,
  type HoldStatus,
  type Movement,
  type SkuEvent,
  type SkuState,
  type StockStatus,
} from "./state.ts";
import { hysteresisBand } from "./statusMachine.ts";

const SKU = Sku.make("SKU-1");
const L1 = LocationId.make("L1");
const L2 = LocationId.make("L2");
const L3 = LocationId.make("L3");

// ---- commands, built from plain JSON through the real decoder ----

let commandSeq = 0;
type Fields = Readonly<Record<string, unknown>>;

const command = (type: CommandType, fields: Fields = {}): Command => {
  const decoded = decodeCommand({
    id: `test:${++commandSeq}`,
    type,
    sku: SKU,
    location: L1,
    source: { system: "test", ref: `r-${commandSeq}` },
    occurredAt: "2024-05-01T12:00:00Z",
    ...fields,
  });
  if (Either.isLeft(decoded)) throw decoded.left;
  return decoded.right;
};

const receive = (qty: number, location: string = L1) => command("receive", { qty, location });
const sell = (qty: number, location: string = L1) => command("sell", { qty, location });
/** A reserve opening hold `hold` (a fresh one unless named). */
const reserve = (qty: number, location: string = L1, hold = `h-${commandSeq + 1}`) => command("reserve", { qty, location, reservationId: hold });
const release = (hold: string, qty: number, location: string = L1, fields: Fields = {}) =>
  command("release", { qty, location, reservationId: hold, ...fields });
const fulfill = (hold: string, qty: number, location: string = L1) => command("fulfill", { qty, location, reservationId: hold });
const policy = (safetyStock: number, reorderPoint: number, location: string = L1) => command("set_policy", { safetyStock, reorderPoint, location });
const ship = (transferId: string, qty: number, from: string, to: string) => command("transfer_out", { transferId, qty, location: from, to });
const arrive = (transferId: string, qty: number, from: string, to: string) => command("transfer_in", { transferId, qty, from, location: to });

// ---- events ----

const moved = (location: LocationId, bucket: Bucket, delta: number, movement: Movement): SkuEvent => ({
  type: "stock_moved",
  sku: SKU,
  location,
  bucket,
  delta: BigInt(delta),
  movement,
});
const statusChanged = (location: LocationId, from: StockStatus, to: StockStatus): SkuEvent => ({
  type: "status_changed",
  sku: SKU,
  location,
  from,
  to,
});
const lowStock = (location: LocationId, available: number, reorderPoint: number): SkuEvent => ({
  type: "low_stock",
  sku: SKU,
  location,
  available: BigInt(available),
  reorderPoint,
  replenishmentRequested: { reorderPoint, shortfall: BigInt(Math.max(1, reorderPoint - available)) },
});
const outOfStock = (location: LocationId): SkuEvent => ({ type: "out_of_stock", sku: SKU, location });
const backInStock = (location: LocationId, available: number): SkuEvent => ({
  type: "back_in_stock",
  sku: SKU,
  location,
  available: BigInt(available),
});
const opened = (location: LocationId, holdId: string, qty: number, channel: string | null = null): SkuEvent => ({
  type: "hold_opened",
  sku: SKU,
  location,
  holdId,
  qty,
  channel,
  expiresAt: null,
});
const reduced = (location: LocationId, holdId: string, qty: number, open: number, status: HoldStatus): SkuEvent => ({
  type: "hold_reduced",
  sku: SKU,
  location,
  holdId,
  qty,
  open,
  status,
});
const negativeStock = (location: LocationId, onHand: number): SkuEvent => ({
  type: "negative_stock",
  sku: SKU,
  location,
  onHand: BigInt(onHand),
});

// ---- given / when / then ----

const deepFreeze = <T>(value: T): T => {
  if (typeof value === "object" && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const child of Object.values(value)) deepFreeze(child);
  }
  return value;
};

const fold = (events: ReadonlyArray<SkuEvent>, state: SkuState = initialSkuState(SKU)): SkuState => events.reduce(evolve, state);

/** `prior` followed by the events that accepting `commands` after it produces. */
const extend = (prior: ReadonlyArray<SkuEvent>, ...commands: ReadonlyArray<Command>): Array<SkuEvent> => {
  const events: Array<SkuEvent> = [...prior];
  for (const c of commands) {
    const decision = decide(fold(events), c);
    if (!decision.ok) throw new Error(`history command ${c.type} rejected: ${decision.rejection.message}`);
    events.push(...decision.events);
  }
  return events;
};

const given = (...events: ReadonlyArray<SkuEvent>) => ({
  when: (c: Command) => {
    // Frozen: decide must not mutate the state it is given.
    const state = deepFreeze(fold(events));
    const decision: Decision = decide(state, c);
    const after = (): SkuState => fold(decision.events ?? [], state);
    return {
      then: (expected: ReadonlyArray<SkuEvent>) => {
        expect(decision).toEqual({ ok: true, events: expected });
        return { state: after() };
      },
      thenRejected: (reason: RejectionReason, details: Partial<Rejection> = {}) => {
        expect(decision).toMatchObject({ ok: false, rejection: { reason, ...details } });
        return decision.ok ? undefined : decision.rejection;
      },
      /** The state after the decision (a rejection may still record a refused hold). */
      state: after,
    };
  },
});

/** The events a sequence of accepted commands produces, from an empty SKU. */
const history = (...commands: ReadonlyArray<Command>): Array<SkuEvent> => extend([], ...commands);

/** In stock at L1 with `onHand` units and the given policy. */
const stocked = (onHand: number, reorderPoint = 0, safetyStock = 0) => history(policy(safetyStock, reorderPoint), receive(onHand));

describe("receive", () => {
  it("adds to on hand; a first receipt is not a return to stock: the location leaves `new` silently", () => {
    given()
      .when(receive(10))
      .then([moved(L1, "on_hand", 10, "receive"), statusChanged(L1, "new", "in_stock")]);
    // A policy first (as onboarding sends it), then the opening count: still no notification.
    given(...history(policy(0, 20)))
      .when(command("count", { qty: 5 }))
      .then([moved(L1, "on_hand", 5, "count_variance"), statusChanged(L1, "new", "low")]);
  });

  it("a receipt after the location ran out is back in stock", () => {
    given(...extend(stocked(2), sell(2)))
      .when(receive(10))
      .then([moved(L1, "on_hand", 10, "receive"), statusChanged(L1, "out", "in_stock"), backInStock(L1, 10)]);
  });

  it("overselling a never-stocked location is still raised", () => {
    given()
      .when(sell(1))
      .then([moved(L1, "on_hand", -1, "sell"), statusChanged(L1, "new", "negative"), negativeStock(L1, -1)]);
  });

  it("adds silently when the location is already in stock", () => {
    const { state } = given(...stocked(10))
      .when(receive(5))
      .then([moved(L1, "on_hand", 5, "receive")]);
    expect(state.locations[L1]).toMatchObject({ onHand: 15n, status: "in_stock" });
  });
});

describe("sell", () => {
  it("takes from on hand", () => {
    given(...stocked(10))
      .when(sell(3))
      .then([moved(L1, "on_hand", -3, "sell")]);
  });

  it("is never rejected: selling more than on hand goes negative", () => {
    const { state } = given(...stocked(2))
      .when(sell(5))
      .then([moved(L1, "on_hand", -5, "sell"), statusChanged(L1, "in_stock", "negative"), negativeStock(L1, -3)]);
    expect(state.locations[L1]?.onHand).toBe(-3n);
  });

  it("selling to exactly zero is out of stock", () => {
    given(...stocked(2))
      .when(sell(2))
      .then([moved(L1, "on_hand", -2, "sell"), statusChanged(L1, "in_stock", "out"), outOfStock(L1)]);
  });
});

describe("return", () => {
  it("restocks on hand by default", () => {
    given(...stocked(10))
      .when(command("return", { qty: 2 }))
      .then([moved(L1, "on_hand", 2, "return")]);
  });

  it("goes to damaged when not restockable, leaving status alone", () => {
    const { state } = given(...stocked(10))
      .when(command("return", { qty: 2, restockable: false }))
      .then([moved(L1, "damaged", 2, "return_damaged")]);
    expect(state.locations[L1]).toMatchObject({ onHand: 10n, damaged: 2n });
  });
});

describe("reserve", () => {
  it("holds stock that is available", () => {
    const { state } = given(...stocked(10))
      .when(reserve(4, L1, "A"))
      .then([moved(L1, "reserved", 4, "reserve"), opened(L1, "A", 4)]);
    expect(locationAvailable(state.locations[L1] ?? emptyLocation)).toBe(6n);
    expect(state.holds["A"]).toEqual({ location: L1, channel: null, qty: 4, open: 4, status: "open", expiresAt: null });
  });

  it("may take the last available unit", () => {
    given(...stocked(4))
      .when(reserve(4, L1, "A"))
      .then([moved(L1, "reserved", 4, "reserve"), opened(L1, "A", 4), statusChanged(L1, "in_stock", "out"), outOfStock(L1)]);
  });

  it("is rejected as insufficient_stock beyond on hand − reserved − safety stock, recording the hold as refused", () => {
    const outcome = given(...extend(stocked(10, 0, 3), reserve(5))).when(reserve(3, L1, "B"));
    const rejection = outcome.thenRejected("insufficient_stock", { available: 2n });
    expect(rejection?.message).toBe("cannot reserve 3 of SKU-1 at L1: only 2 available");
    const decision = decide(fold(extend(stocked(10, 0, 3), reserve(5))), reserve(3, L1, "B"));
    expect(decision.events).toEqual([
      { type: "hold_refused", sku: SKU, location: L1, holdId: "B", qty: 3, channel: null, available: 2n, reason: "insufficient_stock" },
    ]);
    expect(outcome.state().holds["B"]).toMatchObject({ status: "refused", open: 0, qty: 3 });
    expect(outcome.state().locations[L1]?.reserved).toBe(5n);
  });

  it("carries the expiry it was given", () => {
    given(...stocked(10))
      .when(command("reserve", { qty: 1, reservationId: "A", expiresAt: "2024-05-01T13:00:00Z" }))
      .then([moved(L1, "reserved", 1, "reserve"), { ...opened(L1, "A", 1), expiresAt: "2024-05-01T13:00:00Z" } as SkuEvent]);
  });

  it("reports 0 available, not a negative figure, when oversold", () => {
    given(...extend(stocked(1), sell(4)))
      .when(reserve(1))
      .thenRejected("insufficient_stock", { available: 0n });
  });

  describe("for a channel (scoped)", () => {
    const web = { channel: "web", locations: [L1, L2], buffer: 3 };
    const scoped = (qty: number, location: string = L1) => command("reserve", { qty, location, scope: web, reservationId: "W" });

    it("holds what the channel shows: its locations' available, each clamped at 0, less its buffer", () => {
      // L1 6 and L2 −2 (oversold: counts as 0, not −2): the channel shows 6 − 3 = 3.
      const prior = extend(stocked(6), receive(1, L2), sell(3, L2));
      given(...prior)
        .when(scoped(3))
        .then([moved(L1, "reserved", 3, "reserve"), opened(L1, "W", 3, "web")]);
      const rejection = given(...prior)
        .when(scoped(4))
        .thenRejected("insufficient_stock", { available: 3n, channelAvailable: 3n });
      expect(rejection?.message).toBe("cannot reserve 4 of SKU-1 for channel web: only 3 available to it");
      // Unscoped, the location alone decides: the buffer is the channel's, not the location's.
      given(...prior)
        .when(reserve(4, L1, "U"))
        .then([moved(L1, "reserved", 4, "reserve"), opened(L1, "U", 4)]);
    });

    it("still needs the units at the location it holds them in", () => {
      const rejection = given(...extend(stocked(2), receive(8, L2)))
        .when(scoped(3))
        .thenRejected("insufficient_stock", { available: 2n, channelAvailable: 7n });
      expect(rejection?.message).toBe("cannot reserve 3 of SKU-1 at L1: only 2 available");
    });
  });
});

describe("release", () => {
  it("returns units of the hold it names, and closes the hold when it has none left", () => {
    const prior = extend(stocked(10), reserve(4, L1, "A"));
    const { state } = given(...prior)
      .when(release("A", 3))
      .then([moved(L1, "reserved", -3, "release"), reduced(L1, "A", 3, 1, "open")]);
    expect(state.holds["A"]).toMatchObject({ open: 1, status: "open" });
    const closed = given(...extend(prior, release("A", 3)))
      .when(release("A", 1))
      .then([moved(L1, "reserved", -1, "release"), reduced(L1, "A", 1, 0, "released")]);
    expect(closed.state.holds["A"]).toMatchObject({ open: 0, status: "released" });
  });

  it("never takes more than the hold has open, nor from another hold", () => {
    const { state } = given(...extend(stocked(10), reserve(4, L1, "A"), reserve(5, L1, "B")))
      .when(release("A", 9))
      .then([moved(L1, "reserved", -4, "release"), reduced(L1, "A", 4, 0, "released")]);
    expect(state.locations[L1]?.reserved).toBe(5n);
    expect(state.holds["B"]).toMatchObject({ open: 5, status: "open" });
  });

  it("of a hold never opened, refused or at another location is a no-op rejected with the reason", () => {
    given(...extend(stocked(10), reserve(4, L1, "A")))
      .when(release("X", 1))
      .thenRejected("unknown_hold");
    const refused = given(...stocked(2)).when(reserve(3, L1, "B"));
    refused.thenRejected("insufficient_stock");
    const afterRefusal = refused.state();
    expect(afterRefusal.holds["B"]).toMatchObject({ status: "refused", open: 0, qty: 3 });
    const decision = decide(afterRefusal, release("B", 3));
    expect(decision).toMatchObject({ ok: false, rejection: { reason: "unknown_hold", holdStatus: "refused" } });
    expect(decision.ok ? "" : decision.rejection.message).toBe(
      "release of hold B of SKU-1 at L1 changes nothing: its reserve was refused, so it holds nothing",
    );
    given(...extend(stocked(10), receive(5, L2), reserve(4, L1, "A")))
      .when(release("A", 4, L2))
      .thenRejected("hold_elsewhere");
  });

  it("of a closed hold is a no-op rejected as hold_closed", () => {
    given(...extend(stocked(10), reserve(4, L1, "A"), fulfill("A", 4)))
      .when(release("A", 4))
      .thenRejected("hold_closed", { holdStatus: "fulfilled" });
  });

  it("an expiry releases all the hold has open and ends it `expired`", () => {
    given(...extend(stocked(10), reserve(4, L1, "A")))
      .when(release("A", 1, L1, { expired: true }))
      .then([moved(L1, "reserved", -4, "release"), reduced(L1, "A", 4, 0, "expired")]);
  });
});

describe("fulfill", () => {
  it("takes from its hold's reserved units and from on hand: two legs, and the hold is fulfilled", () => {
    const { state } = given(...extend(stocked(10), reserve(4, L1, "A")))
      .when(fulfill("A", 4))
      .then([moved(L1, "reserved", -4, "fulfill"), moved(L1, "on_hand", -4, "fulfill"), reduced(L1, "A", 4, 0, "fulfilled")]);
    expect(state.locations[L1]).toMatchObject({ onHand: 6n, reserved: 0n, status: "in_stock" });
  });

  it("a partial fulfilment leaves the rest of the hold open", () => {
    const { state } = given(...extend(stocked(10), reserve(4, L1, "A")))
      .when(fulfill("A", 1))
      .then([moved(L1, "reserved", -1, "fulfill"), moved(L1, "on_hand", -1, "fulfill"), reduced(L1, "A", 1, 3, "open")]);
    expect(state.holds["A"]).toMatchObject({ open: 3, status: "open" });
    expect(state.locations[L1]).toMatchObject({ onHand: 9n, reserved: 3n });
  });

  it("is a fact: with no hold, the goods still leave on hand (fulfill_unreserved), naming the order line", () => {
    given(...stocked(10))
      .when(fulfill("shop:O-9:1", 3))
      .then([
        moved(L1, "on_hand", -3, "fulfill_unreserved"),
        { type: "fulfill_unreserved", sku: SKU, location: L1, holdId: "shop:O-9:1", qty: 3, reason: "unknown_hold" },
      ]);
  });

  it("beyond what its hold covers, the rest leaves on hand unreserved", () => {
    const { state } = given(...extend(stocked(10), reserve(2, L1, "A")))
      .when(fulfill("A", 5))
      .then([
        moved(L1, "reserved", -2, "fulfill"),
        moved(L1, "on_hand", -2, "fulfill"),
        reduced(L1, "A", 2, 0, "fulfilled"),
        moved(L1, "on_hand", -3, "fulfill_unreserved"),
        { type: "fulfill_unreserved", sku: SKU, location: L1, holdId: "A", qty: 3, reason: "exceeds_hold" },
      ]);
    expect(state.locations[L1]).toMatchObject({ onHand: 5n, reserved: 0n });
  });

  it("after the hold was released, ships unreserved and leaves the hold released", () => {
    const { state } = given(...extend(stocked(10), reserve(2, L1, "A"), release("A", 2)))
      .when(fulfill("A", 2))
      .then([
        moved(L1, "on_hand", -2, "fulfill_unreserved"),
        { type: "fulfill_unreserved", sku: SKU, location: L1, holdId: "A", qty: 2, reason: "hold_closed" },
      ]);
    expect(state.holds["A"]?.status).toBe("released");
  });
});

describe("holds: the A/B order lines", () => {
  it("B's refused hold cannot release A's units; A ships all 5", () => {
    let events = stocked(5);
    const step = (c: Command) => {
      const decision = decide(fold(events), c);
      events = [...events, ...(decision.events ?? [])];
      return decision;
    };
    expect(step(reserve(5, L1, "A")).ok).toBe(true);
    expect(step(reserve(3, L1, "B"))).toMatchObject({ ok: false, rejection: { reason: "insufficient_stock" } });
    expect(step(release("B", 3))).toMatchObject({ ok: false, rejection: { reason: "unknown_hold" } });
    expect(step(fulfill("A", 5)).ok).toBe(true);
    const state = fold(events);
    expect(state.locations[L1]).toMatchObject({ onHand: 0n, reserved: 0n });
    expect(state.holds["A"]).toMatchObject({ status: "fulfilled", open: 0 });
    expect(state.holds["B"]).toMatchObject({ status: "refused", open: 0 });
  });

  it("a reserve naming an existing hold is rejected as hold_exists, recording nothing", () => {
    const prior = extend(stocked(10), reserve(2, L1, "A"));
    const outcome = given(...prior).when(reserve(1, L1, "A"));
    outcome.thenRejected("hold_exists", { holdStatus: "open" });
    expect(outcome.state()).toEqual(fold(prior));
  });

  it("a release or fulfil naming a hold the ledger never saw draws on the location's legacy hold", () => {
    const legacy = { type: "hold_opened", sku: SKU, location: L1, holdId: "legacy:L1", qty: 4, channel: null, expiresAt: null } as const;
    const prior = extend(stocked(10), reserve(4, L1, "x"));
    // A migrated ledger: the reserved units of before are one open legacy hold.
    const migrated = fold([legacy], fold(prior));
    const decision = decide(migrated, release("old-order:1", 3));
    expect(decision).toMatchObject({ ok: true, events: [moved(L1, "reserved", -3, "release"), reduced(L1, "legacy:L1", 3, 1, "open")] });
    expect(decide(migrated, release("x", 1))).toMatchObject({
      ok: true,
      events: [moved(L1, "reserved", -1, "release"), reduced(L1, "x", 1, 3, "open")],
    });
  });
});

describe("adjust", () => {
  it("adds found stock", () => {
    given(...stocked(10))
      .when(command("adjust", { qty: 2, reason: "found" }))
      .then([moved(L1, "on_hand", 2, "adjust")]);
  });

  it("shrinks, even below zero", () => {
    given(...stocked(3))
      .when(command("adjust", { qty: -5, reason: "shrink" }))
      .then([moved(L1, "on_hand", -5, "adjust"), statusChanged(L1, "in_stock", "negative"), negativeStock(L1, -2)]);
  });
});

describe("count", () => {
  it("records the variance between the count and on hand", () => {
    given(...stocked(10))
      .when(command("count", { qty: 7 }))
      .then([moved(L1, "on_hand", -3, "count_variance")]);
    given(...stocked(10))
      .when(command("count", { qty: 12 }))
      .then([moved(L1, "on_hand", 2, "count_variance")]);
  });

  it("records nothing when the count matches", () => {
    given(...stocked(10))
      .when(command("count", { qty: 10 }))
      .then([]);
  });

  it("a count of a negative location brings it back", () => {
    given(...extend(stocked(1), sell(3)))
      .when(command("count", { qty: 5 }))
      .then([moved(L1, "on_hand", 7, "count_variance"), statusChanged(L1, "negative", "in_stock"), backInStock(L1, 5)]);
  });
});

describe("set_policy", () => {
  it("records the policy for the location", () => {
    const { state } = given(...stocked(50))
      .when(policy(2, 10))
      .then([{ type: "policy_set", sku: SKU, location: L1, safetyStock: 2, reorderPoint: 10 }]);
    expect(state.locations[L1]).toMatchObject({ safetyStock: 2, reorderPoint: 10 });
  });

  it("can cause a crossing: a higher reorder point makes the location low", () => {
    given(...stocked(8))
      .when(policy(0, 10))
      .then([
        { type: "policy_set", sku: SKU, location: L1, safetyStock: 0, reorderPoint: 10 },
        statusChanged(L1, "in_stock", "low"),
        lowStock(L1, 8, 10),
      ]);
  });

  it("can cause a crossing: safety stock that covers on hand leaves nothing available", () => {
    given(...stocked(5))
      .when(policy(5, 0))
      .then([{ type: "policy_set", sku: SKU, location: L1, safetyStock: 5, reorderPoint: 0 }, statusChanged(L1, "in_stock", "out"), outOfStock(L1)]);
  });
});

describe("transfers", () => {
  it("transfer_out moves origin on hand to the destination's in transit and opens the transfer", () => {
    const { state } = given(...stocked(10))
      .when(ship("T1", 4, L1, L2))
      .then([
        moved(L1, "on_hand", -4, "transfer_out"),
        moved(L2, "in_transit", 4, "transfer_out"),
        { type: "transfer_shipped", sku: SKU, location: L1, transferId: "T1", from: L1, to: L2, qty: 4 },
      ]);
    expect(state.transfers).toEqual({ T1: { from: L1, to: L2, shipped: 4, received: 0 } });
    expect(state.locations[L2]).toMatchObject({ onHand: 0n, inTransit: 4n, status: "new" });
  });

  it("shipping more on an open transfer adds to it", () => {
    const { state } = given(...extend(stocked(10), ship("T1", 4, L1, L2)))
      .when(ship("T1", 3, L1, L2))
      .then([
        moved(L1, "on_hand", -3, "transfer_out"),
        moved(L2, "in_transit", 3, "transfer_out"),
        { type: "transfer_shipped", sku: SKU, location: L1, transferId: "T1", from: L1, to: L2, qty: 3 },
      ]);
    expect(state.transfers["T1"]).toEqual({ from: L1, to: L2, shipped: 7, received: 0 });
  });

  it("shipping an open transfer id between other locations is a transfer_mismatch", () => {
    given(...extend(stocked(10), ship("T1", 4, L1, L2)))
      .when(ship("T1", 1, L1, L3))
      .thenRejected("transfer_mismatch");
  });

  it("a partial receipt keeps the transfer open", () => {
    const { state } = given(...extend(stocked(10), ship("T1", 4, L1, L2)))
      .when(arrive("T1", 3, L1, L2))
      .then([
        moved(L2, "in_transit", -3, "transfer_in"),
        moved(L2, "on_hand", 3, "transfer_in"),
        { type: "transfer_received", sku: SKU, location: L2, transferId: "T1", qty: 3 },
        statusChanged(L2, "new", "in_stock"),
      ]);
    expect(state.transfers["T1"]).toEqual({ from: L1, to: L2, shipped: 4, received: 3 });
    expect(state.locations[L2]).toMatchObject({ onHand: 3n, inTransit: 1n });
  });

  it("the receipt that settles the transfer removes it", () => {
    const { state } = given(...extend(stocked(10), ship("T1", 4, L1, L2), arrive("T1", 3, L1, L2)))
      .when(arrive("T1", 1, L1, L2))
      .then([
        moved(L2, "in_transit", -1, "transfer_in"),
        moved(L2, "on_hand", 1, "transfer_in"),
        { type: "transfer_received", sku: SKU, location: L2, transferId: "T1", qty: 1 },
      ]);
    expect(state.transfers).toEqual({});
    expect(state.locations[L2]).toMatchObject({ onHand: 4n, inTransit: 0n });
    expect(state.locations[L1]).toMatchObject({ onHand: 6n });
  });

  it("receiving more than is still in transit is exceeds_in_transit", () => {
    const rejection = given(...extend(stocked(10), ship("T1", 4, L1, L2), arrive("T1", 3, L1, L2)))
      .when(arrive("T1", 2, L1, L2))
      .thenRejected("exceeds_in_transit");
    expect(rejection?.message).toBe("cannot receive 2 of transfer T1 of SKU-1: only 1 in transit");
  });

  it("receiving an unknown or settled transfer is unknown_transfer", () => {
    given(...stocked(10))
      .when(arrive("T9", 1, L1, L2))
      .thenRejected("unknown_transfer");
    given(...extend(stocked(10), ship("T1", 4, L1, L2), arrive("T1", 4, L1, L2)))
      .when(arrive("T1", 1, L1, L2))
      .thenRejected("unknown_transfer");
  });

  it("receiving from another origin or at another location is a transfer_mismatch", () => {
    const shipped = [...extend(stocked(10), ship("T1", 4, L1, L2))];
    given(...shipped)
      .when(arrive("T1", 1, L3, L2))
      .thenRejected("transfer_mismatch", { message: "transfer T1 of SKU-1 goes L1 → L2, not L3 → L2" });
    given(...shipped)
      .when(arrive("T1", 1, L1, L3))
      .thenRejected("transfer_mismatch");
  });
});

describe("a command for another SKU", () => {
  it("is a sku_mismatch", () => {
    given(...stocked(10))
      .when(command("sell", { qty: 1, sku: "SKU-2" }))
      .thenRejected("sku_mismatch");
  });
});

describe("status crossings", () => {
  // reorder point 20, band 2: low at ≤ 20, back in stock at ≥ 22.
  const atThirty = () => stocked(30, 20);

  it("selling down into low raises low_stock once; more sales in low raise nothing", () => {
    const intoLow = [...extend(atThirty(), sell(10))];
    expect(intoLow.slice(-3)).toEqual([moved(L1, "on_hand", -10, "sell"), statusChanged(L1, "in_stock", "low"), lowStock(L1, 20, 20)]);
    given(...intoLow)
      .when(sell(1))
      .then([moved(L1, "on_hand", -1, "sell")]);
    given(...extend(intoLow, sell(1), sell(1)))
      .when(sell(5))
      .then([moved(L1, "on_hand", -5, "sell")]);
  });

  it("receiving a little above the reorder point but within the band stays low", () => {
    const low = [...extend(atThirty(), sell(15))]; // 15 on hand
    given(...low)
      .when(receive(6)) // 21 < 22
      .then([moved(L1, "on_hand", 6, "receive")]);
  });

  it("receiving past the band returns to in_stock without a notification", () => {
    const low = [...extend(atThirty(), sell(15))];
    expect(hysteresisBand(20)).toBe(2);
    given(...low)
      .when(receive(7)) // 22
      .then([moved(L1, "on_hand", 7, "receive"), statusChanged(L1, "low", "in_stock")]);
  });

  it("out → back_in_stock, and low_stock too when landing in low", () => {
    const out = [...extend(atThirty(), sell(30))];
    given(...out)
      .when(receive(50))
      .then([moved(L1, "on_hand", 50, "receive"), statusChanged(L1, "out", "in_stock"), backInStock(L1, 50)]);
    given(...out)
      .when(receive(5))
      .then([moved(L1, "on_hand", 5, "receive"), statusChanged(L1, "out", "low"), backInStock(L1, 5), lowStock(L1, 5, 20)]);
  });

  it("negative and back", () => {
    const negative = [...extend(atThirty(), sell(32))];
    expect(negative.slice(-3)).toEqual([moved(L1, "on_hand", -32, "sell"), statusChanged(L1, "in_stock", "negative"), negativeStock(L1, -2)]);
    given(...negative)
      .when(sell(1))
      .then([moved(L1, "on_hand", -1, "sell")]);
    given(...negative)
      .when(receive(2))
      .then([moved(L1, "on_hand", 2, "receive"), statusChanged(L1, "negative", "out"), outOfStock(L1)]);
    given(...negative)
      .when(receive(40))
      .then([moved(L1, "on_hand", 40, "receive"), statusChanged(L1, "negative", "in_stock"), backInStock(L1, 38)]);
  });

  it("a transfer checks the status of both ends", () => {
    given(...extend(stocked(30, 20), receive(5, L2)))
      .when(ship("T1", 12, L1, L2))
      .then([
        moved(L1, "on_hand", -12, "transfer_out"),
        moved(L2, "in_transit", 12, "transfer_out"),
        { type: "transfer_shipped", sku: SKU, location: L1, transferId: "T1", from: L1, to: L2, qty: 12 },
        statusChanged(L1, "in_stock", "low"),
        lowStock(L1, 18, 20),
      ]);
  });
});

describe("purity", () => {
  it("decide is deterministic and leaves its state untouched; evolve returns new objects", () => {
    const state = deepFreeze(fold(stocked(10)));
    const c = ship("T1", 3, L1, L2);
    expect(decide(state, c)).toEqual(decide(state, c));
    const decision = decide(state, c);
    if (!decision.ok) throw new Error("rejected");
    const next = fold(decision.events, state);
    expect(next).not.toBe(state);
    expect(state.locations[L1]?.onHand).toBe(10n);
    expect(state.transfers).toEqual({});
  });

  it("evolve ignores notifications", () => {
    const state = fold(stocked(10));
    expect(evolve(state, lowStock(L1, 1, 2))).toBe(state);
    expect(evolve(state, outOfStock(L1))).toBe(state);
  });
});

// ---- property-style: random command sequences keep the invariants ----

/** mulberry32: a tiny seeded PRNG, so failures reproduce. */
const prng = (seed: number) => () => {
  seed = (seed + 0x6d2b79f5) | 0;
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
};

describe("random command sequences", () => {
  const LOCATIONS = [L1, L2, L3];

  const randomCommand = (rand: () => number, state: SkuState): Command => {
    const int = (lo: number, hi: number) => lo + Math.floor(rand() * (hi - lo + 1));
    const pick = <T>(xs: ReadonlyArray<T>): T => xs[Math.floor(rand() * xs.length)] as T;
    const location = pick(LOCATIONS);
    const other = pick(LOCATIONS.filter((l) => l !== location));
    const open = Object.keys(state.transfers);
    const transferId = open.length > 0 && rand() < 0.7 ? pick(open) : `T${int(1, 5)}`;
    const qty = int(1, 12);
    // Holds: a fresh one, or one already named (open, closed or refused), or one never seen.
    const named = Object.keys(state.holds);
    const holdId = named.length > 0 && rand() < 0.8 ? pick(named) : `H${int(1, 1000)}`;
    const holdLocation = state.holds[holdId]?.location ?? location;
    const type = pick([
      "receive",
      "sell",
      "return",
      "reserve",
      "reserve",
      "release",
      "fulfill",
      "adjust",
      "count",
      "transfer_out",
      "transfer_in",
      "transfer_in",
      "set_policy",
    ] as const);
    switch (type) {
      case "return":
        return command(type, { location, qty, restockable: rand() < 0.7 });
      case "adjust":
        return command(type, { location, qty: rand() < 0.5 ? qty : -qty, reason: "random" });
      case "count":
        return command(type, { location, qty: int(0, 30) });
      case "transfer_out": {
        const t = state.transfers[transferId];
        return t !== undefined && rand() < 0.8 ? ship(transferId, qty, t.from, t.to) : ship(transferId, qty, location, other);
      }
      case "transfer_in": {
        const t = state.transfers[transferId];
        return t !== undefined && rand() < 0.8
          ? arrive(transferId, int(1, Math.max(1, t.shipped - t.received + 1)), t.from, t.to)
          : arrive(transferId, qty, other, location);
      }
      case "set_policy":
        return command(type, { location, safetyStock: int(0, 3), reorderPoint: int(0, 15) });
      case "reserve":
        return reserve(qty, location, rand() < 0.8 ? `H${int(1, 1000)}` : holdId);
      case "release":
        return release(holdId, qty, rand() < 0.9 ? holdLocation : location, rand() < 0.1 ? { expired: true } : {});
      case "fulfill":
        return fulfill(holdId, qty, rand() < 0.9 ? holdLocation : location);
      default:
        return command(type, { location, qty });
    }
  };

  it("never break the ledger invariants", () => {
    const RESERVED_MOVEMENTS: ReadonlyArray<Movement> = ["reserve", "release", "fulfill"];
    let accepted = 0;
    let rejected = 0;
    for (let run = 1; run <= 100; run++) {
      const rand = prng(run);
      let state = initialSkuState(SKU);
      const log: Array<SkuEvent> = [];
      for (let step = 0; step < 60; step++) {
        const c = randomCommand(rand, state);
        const before = deepFreeze(state);
        const decision = decide(before, c);
        const context = `run ${run} step ${step}: ${c.type} ${JSON.stringify(c)}`;
        if (!decision.ok) {
          rejected++;
          if (c.type === "reserve" && decision.rejection.reason === "insufficient_stock") {
            expect(locationAvailable(before.locations[c.location] ?? emptyLocation), context).toBeLessThan(c.qty);
            expect(decision.events, context).toHaveLength(1);
          } else expect(decision.events ?? [], context).toEqual([]);
          if (c.type === "reserve")
            expect(before.holds[c.reservationId]?.status === undefined, context).toBe(decision.rejection.reason !== "hold_exists");
          if (c.type === "release") expect(["unknown_hold", "hold_closed", "hold_elsewhere"], context).toContain(decision.rejection.reason);
          expect(["sell", "receive", "return", "fulfill", "adjust", "count"], context).not.toContain(c.type);
          state = (decision.events ?? []).reduce(evolve, before);
          log.push(...(decision.events ?? []));
          continue;
        }
        accepted++;
        if (c.type === "reserve") {
          expect(locationAvailable(before.locations[c.location] ?? emptyLocation), context).toBeGreaterThanOrEqual(c.qty);
        }
        // decide's view of the state after its legs is evolve's: each status_changed starts from the folded status.
        let view = before;
        for (const event of decision.events) {
          if (event.type === "stock_moved") {
            expect(event.delta, context).not.toBe(0);
            if (event.bucket === "reserved") expect(RESERVED_MOVEMENTS, context).toContain(event.movement);
          }
          if (event.type === "status_changed") {
            expect(view.locations[event.location]?.status ?? "new", context).toBe(event.from);
          }
          view = evolve(view, event);
        }
        state = view;
        log.push(...decision.events);

        for (const [location, l] of Object.entries(state.locations)) {
          const where = `${context} at ${location}`;
          expect(l.reserved, where).toBeGreaterThanOrEqual(0);
          expect(l.inTransit, where).toBeGreaterThanOrEqual(0);
          expect(l.damaged, where).toBeGreaterThanOrEqual(0);
          const inTransit = Object.values(state.transfers)
            .filter((t) => t.to === location)
            .reduce((sum, t) => sum + t.shipped - t.received, 0);
          expect(l.inTransit, where).toBe(BigInt(inTransit));
          // reserved is the sum of the location's open holds, always; closed holds hold nothing.
          const held = Object.values(state.holds).filter((h) => h.location === location && h.status === "open");
          expect(l.reserved, where).toBe(BigInt(held.reduce((sum, h) => sum + h.open, 0)));
          for (const h of held) expect(h.open, where).toBeGreaterThan(0);
          const available = locationAvailable(l);
          const expectedStatus: Array<StockStatus> =
            l.onHand < 0
              ? ["negative"]
              : available <= 0
                ? ["out", "new"]
                : available <= l.reorderPoint
                  ? ["low"]
                  : available < l.reorderPoint + hysteresisBand(l.reorderPoint)
                    ? ["low", "in_stock"]
                    : ["in_stock"];
          expect(expectedStatus, where).toContain(l.status);
        }
        for (const t of Object.values(state.transfers)) {
          expect(t.received, context).toBeLessThan(t.shipped);
        }
        for (const h of Object.values(state.holds)) if (h.status !== "open") expect(h.open, context).toBe(0);
        // A hold, once closed, stays in the state it ended in.
        for (const [id, h] of Object.entries(before.holds)) if (h.status !== "open") expect(state.holds[id], context).toEqual(h);
      }
      // The whole log, folded from scratch, is the state the decisions were made on.
      expect(fold(log)).toEqual(state);
      // Every bucket is the sum of its legs.
      const sums = new Map<string, bigint>();
      for (const e of log) {
        if (e.type === "stock_moved") sums.set(`${e.location}/${e.bucket}`, (sums.get(`${e.location}/${e.bucket}`) ?? 0n) + e.delta);
      }
      for (const [location, l] of Object.entries(state.locations)) {
        expect(sums.get(`${location}/on_hand`) ?? 0n).toBe(l.onHand);
        expect(sums.get(`${location}/reserved`) ?? 0n).toBe(l.reserved);
        expect(sums.get(`${location}/in_transit`) ?? 0n).toBe(l.inTransit);
        expect(sums.get(`${location}/damaged`) ?? 0n).toBe(l.damaged);
      }
    }
    // The generator exercises both paths.
    expect(accepted).toBeGreaterThan(1000);
    expect(rejected).toBeGreaterThan(100);
  });
});
