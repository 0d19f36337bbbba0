import type { BatchWrite, HoldRow, LedgerEntry, OutboxRow, OutcomeRow, StoredSku } from "../ledger/index.ts";
import { entryHash, GENESIS_HASH } from "../ledger/index.ts";
import type {
  AlertEvent,
  Availability,
  Command,
  CommandRejectedEvent,
  FulfillUnreservedEvent,
  HoldRefusedEvent,
  LocationId,
  Sku,
  StatusEvent,
} from "../src/contract/index.ts";
import { locationAvailable } from "../src/contract/index.ts";
import { decide, evolve, type Decision } from "./decider.ts";
import type { Bucket, HoldState, HoldStatus, LocationState, SkuEvent, SkuState, StockStatus, TransferState } from "./state.ts";
import { atLeastZero, emptyLocation, initialSkuState } from "./state.ts";
import { noValue, type LocationValue } from "../ledger/index.ts";
import { CommandValuation, DEFAULT_VALUATION, poolKey, type TransferValue, type ValuationSettings } from "./valuation.ts";

/** A live SKU actor's memory: its rules state and the head of its ledger chain. */
export interface LiveSku {
  readonly state: SkuState;
  /** Ledger sequence of the SKU's last entry (0: none yet). */
  readonly seq: number;
  readonly lastHash: string;
  /** Bumped by every applied command, including those without legs (set_policy). */
  readonly version: number;
  /** The valuation of on_hand per location (absent: nothing valued yet, value 0). */
  readonly values?: Readonly<Record<string, LocationValue>>;
  /** The valuation of damaged and in_transit per `poolKey(location, bucket)`. */
  readonly pools?: Readonly<Record<string, LocationValue>>;
  /** What each open transfer carried and what its receipts took (absent: shipped before transfers were valued). */
  readonly transferValues?: Readonly<Record<string, TransferValue>>;
}

/** One command taken from the stream, with the stream sequence of the message that carried it. */
export interface IncomingCommand {
  readonly command: Command;
  readonly streamSeq: number;
}

export interface ChannelView {
  readonly name: string;
  readonly locations: ReadonlyArray<string>;
  readonly buffer: number;
}

/** The NATS names a batch needs for its outbox rows. */
export interface OutboxNames {
  eventSubject(type: string): string;
  availabilitySubject(channel: string, sku: string): string;
  availabilityKey(channel: string, sku: string): string;
}

export interface PlanInput {
  readonly partition: number;
  readonly epoch: number;
  readonly lastSeq: number;
  readonly recordedAt: Date;
  readonly commands: ReadonlyArray<IncomingCommand>;
  /** Every SKU of `commands`, activated. */
  readonly actors: ReadonlyMap<string, LiveSku>;
  readonly channels: ReadonlyArray<ChannelView>;
  readonly names: OutboxNames;
  /** The company's valuation method and currency (default: moving average, EUR). */
  readonly valuation?: ValuationSettings;
}

export interface Plan {
  readonly write: BatchWrite;
  /** The actors after the batch: to be kept only once the batch has committed. */
  readonly actors: ReadonlyMap<string, LiveSku>;
  readonly applied: number;
  readonly rejected: number;
  /** Reserves refused (each recorded as a `refused` hold and published as `hold_refused`). */
  readonly holdsRefused: number;
}

const BUCKET_FIELD: Record<Bucket, "onHand" | "reserved" | "inTransit" | "damaged"> = {
  on_hand: "onHand",
  reserved: "reserved",
  in_transit: "inTransit",
  damaged: "damaged",
};

/**
 * The published payload of a notification an applied command raised (a status crossing or an
 * unreserved fulfilment), typed by the contract's event schemas; null for an event that is not published.
 * (`hold_refused` comes only with a rejection: `recordRejected`.)
 */
function notificationPayload(event: SkuEvent, command: Command, seq: number): StatusEvent | FulfillUnreservedEvent | null {
  const by = { commandId: command.id, occurredAt: command.occurredAt };
  switch (event.type) {
    case "fulfill_unreserved":
      return { ...event, ...by, source: command.source, seq };
    case "low_stock":
    case "out_of_stock":
    case "back_in_stock":
    case "negative_stock":
      return { ...event, ...by, seq };
    default:
      return null;
  }
}

/** Rebuilds an actor from its stored rows (activation); its open holds are added with `withStoredHolds`. */
export function actorFromStored(sku: string, stored: StoredSku | undefined): LiveSku {
  const base = initialSkuState(sku as Sku);
  if (!stored) return { state: base, seq: 0, lastHash: GENESIS_HASH, version: 0 };
  const locations: Record<string, LocationState> = {};
  const at = (loc: string): LocationState => locations[loc] ?? emptyLocation;
  for (const l of stored.locations)
    locations[l.location] = {
      ...at(l.location),
      safetyStock: l.safetyStock,
      reorderPoint: l.reorderPoint,
      status: l.status as StockStatus,
    };
  const values: Record<string, LocationValue> = {};
  const pools: Record<string, LocationValue> = {};
  for (const b of stored.balances) {
    const field = BUCKET_FIELD[b.bucket as Bucket];
    if (field) locations[b.location] = { ...at(b.location), [field]: BigInt(b.qty) };
    const valued = { value: b.value ?? 0n, lastUnitCost: b.lastUnitCost ?? null };
    if (b.bucket === "on_hand") values[b.location] = b.layers ? { ...valued, layers: b.layers } : valued;
    else if (b.bucket === "damaged" || b.bucket === "in_transit") pools[poolKey(b.location, b.bucket)] = valued;
  }
  const transfers: Record<string, TransferState> = {};
  const transferValues: Record<string, TransferValue> = {};
  for (const t of stored.transfers) {
    transfers[t.transferId] = {
      from: t.from as LocationId,
      to: t.to as LocationId,
      shipped: t.shipped,
      received: t.received,
    };
    if (t.shippedValue !== null && t.shippedValue !== undefined)
      transferValues[t.transferId] = { shipped: t.shippedValue, received: t.receivedValue ?? 0n };
  }
  return {
    state: { ...base, locations, transfers },
    seq: stored.head?.seq ?? 0,
    lastHash: stored.head?.lastHash ?? GENESIS_HASH,
    version: stored.head?.version ?? 0,
    values,
    pools,
    transferValues,
  };
}

const holdFromRow = (h: HoldRow): HoldState => ({
  location: h.location as LocationId,
  channel: h.channel,
  qty: h.qty,
  open: h.open,
  status: h.status as HoldStatus,
  expiresAt: h.expiresAt,
});

/**
 * The actor with these stored holds (the closed ones a batch's commands name, loaded for it) added
 * to the ones it keeps in memory, which win: they may be newer than the rows.
 */
export function withStoredHolds(actor: LiveSku, rows: ReadonlyArray<HoldRow>): LiveSku {
  if (rows.length === 0) return actor;
  const holds: Record<string, HoldState> = {};
  for (const h of rows) holds[h.holdId] = holdFromRow(h);
  return { ...actor, state: { ...actor.state, holds: { ...holds, ...actor.state.holds } } };
}

/** The hold ids a command names (a reserve, release or fulfill names one). */
export const holdIdOf = (command: Command): string | null =>
  command.type === "reserve" || command.type === "release" || command.type === "fulfill" ? command.reservationId : null;

/** The actor as it is kept between batches: only its open holds (closed ones live in the `holds` table). */
function withOpenHoldsOnly(actor: LiveSku): LiveSku {
  const holds = actor.state.holds;
  let closed = false;
  for (const id in holds) if (holds[id]!.status !== "open") closed = true;
  if (!closed) return actor;
  const open: Record<string, HoldState> = {};
  for (const id in holds) if (holds[id]!.status === "open") open[id] = holds[id]!;
  return { ...actor, state: { ...actor.state, holds: open } };
}

/**
 * Decides every command of a batch in stream order against its SKU's actor and turns the outcome
 * into the rows of one ledger transaction. Pure: no I/O, the clock comes in as `recordedAt`.
 */
export function planBatch(input: PlanInput): Plan {
  const g: Gathered = {
    actors: new Map(input.actors),
    entries: [],
    outcomes: [],
    outbox: [],
    touched: new Map(),
    transfersTouched: new Map(),
    holdsTouched: new Map(),
    origins: new Map(),
    applied: 0,
    rejected: 0,
    holdsRefused: 0,
  };
  for (const { command, streamSeq } of input.commands) {
    const actor = g.actors.get(command.sku);
    if (!actor) throw new Error(`planBatch: SKU ${command.sku} was not activated`);
    const decision = decide(actor.state, command);
    if (decision.ok) applyDecided(g, input, command, streamSeq, actor, decision.events);
    else recordRejected(g, input, command, streamSeq, actor, decision);
  }
  const { balances, skuLocations, heads } = stateRows(g, input);
  const { transfers, settledTransfers } = transferRows(g);
  const holds = holdRows(g);
  forgetClosedHolds(g, input);

  const lastSeq = input.commands.reduce((m, c) => Math.max(m, c.streamSeq), input.lastSeq);
  return {
    write: {
      partition: input.partition,
      epoch: input.epoch,
      lastSeq,
      recordedAt: input.recordedAt,
      entries: g.entries,
      balances,
      heads,
      skuLocations,
      transfers,
      settledTransfers,
      holds,
      outcomes: g.outcomes,
      outbox: g.outbox,
    },
    actors: g.actors,
    applied: g.applied,
    rejected: g.rejected,
    holdsRefused: g.holdsRefused,
  };
}

/** What planBatch gathers while it decides a batch's commands. */
interface Gathered {
  readonly actors: Map<string, LiveSku>;
  readonly entries: Array<LedgerEntry>;
  readonly outcomes: Array<OutcomeRow>;
  readonly outbox: Array<OutboxRow>;
  /** sku → locations touched */
  readonly touched: Map<string, Set<string>>;
  /** sku → transfer ids touched */
  readonly transfersTouched: Map<string, Set<string>>;
  /** sku → hold ids opened, refused or reduced */
  readonly holdsTouched: Map<string, Set<string>>;
  /** sku → its oldest applied command's source time */
  readonly origins: Map<string, { at: number; source: string }>;
  applied: number;
  rejected: number;
  holdsRefused: number;
}

/** A rejected command: its outcome and a command_rejected event; a refused reserve still records its hold (as refused). */
function recordRejected(
  g: Gathered,
  input: PlanInput,
  command: Command,
  streamSeq: number,
  actor: LiveSku,
  decision: Extract<Decision, { ok: false }>,
): void {
  g.rejected++;
  g.outcomes.push({
    commandId: command.id,
    streamSeq,
    sku: command.sku,
    type: command.type,
    status: "rejected",
    reason: decision.rejection.reason,
    detail: decision.rejection,
  });
  g.outbox.push({
    kind: "event",
    subject: input.names.eventSubject("command_rejected"),
    kvKey: null,
    payload: {
      type: "command_rejected",
      commandId: command.id,
      commandType: command.type,
      sku: command.sku,
      location: command.location,
      reason: decision.rejection.reason,
      message: decision.rejection.message,
      source: command.source,
      occurredAt: command.occurredAt,
    } satisfies CommandRejectedEvent,
  });
  // A refused reserve still records its hold (as refused) and tells the order line's system.
  if (decision.events !== undefined && decision.events.length > 0) {
    let state = actor.state;
    for (const event of decision.events) {
      state = evolve(state, event);
      if (event.type === "hold_refused") {
        g.holdsRefused++;
        markTouched(g.holdsTouched, command.sku, event.holdId);
        g.outbox.push({
          kind: "event",
          subject: input.names.eventSubject(event.type),
          kvKey: null,
          payload: { ...event, commandId: command.id, source: command.source, occurredAt: command.occurredAt } satisfies HoldRefusedEvent,
        });
      }
    }
    g.actors.set(command.sku, { ...actor, state });
  }
}

/** An applied command: its events evolve the actor; stock legs become chained ledger entries, notifications outbox rows. */
function applyDecided(g: Gathered, input: PlanInput, command: Command, streamSeq: number, actor: LiveSku, events: ReadonlyArray<SkuEvent>): void {
  g.applied++;
  let { state, seq, lastHash } = actor;
  let leg = 0;
  const occurredAt = new Date(command.occurredAt);
  const origin = g.origins.get(command.sku);
  if (!origin || occurredAt.getTime() < origin.at) g.origins.set(command.sku, { at: occurredAt.getTime(), source: command.source.system });
  const valuation = new CommandValuation(
    { values: actor.values ?? {}, pools: actor.pools ?? {}, transfers: actor.transferValues ?? {} },
    command,
    input.valuation ?? DEFAULT_VALUATION,
  );
  for (const event of events) {
    const before = state;
    state = evolve(state, event);
    markTouched(g.touched, command.sku, event.location);
    if (event.type === "stock_moved") {
      leg++;
      seq++;
      const loc = state.locations[event.location] ?? emptyLocation;
      const valued = valuation.leg(before, event) ?? {};
      const body = {
        commandId: command.id,
        leg,
        sku: command.sku,
        location: event.location,
        bucket: event.bucket,
        delta: event.delta,
        balanceAfter: loc[BUCKET_FIELD[event.bucket]],
        movement: event.movement,
        sourceSystem: command.source.system,
        sourceRef: command.source.ref,
        occurredAt,
        recordedAt: input.recordedAt,
        skuSeq: seq,
        ...valued,
      };
      const hash = entryHash(lastHash, body);
      g.entries.push({ ...body, prevHash: lastHash, hash });
      lastHash = hash;
    } else if (event.type === "hold_opened" || event.type === "hold_reduced") {
      markTouched(g.holdsTouched, command.sku, event.holdId);
    } else if (event.type === "transfer_shipped" || event.type === "transfer_received") {
      valuation.transfer(event, state);
      markTouched(g.transfersTouched, command.sku, event.transferId);
      if (event.type === "transfer_shipped") markTouched(g.touched, command.sku, event.to);
    } else {
      const payload = notificationPayload(event, command, seq);
      if (payload !== null) g.outbox.push({ kind: "event", subject: input.names.eventSubject(event.type), kvKey: null, payload });
    }
  }
  g.outcomes.push({
    commandId: command.id,
    streamSeq,
    sku: command.sku,
    type: command.type,
    status: "applied",
    reason: null,
    detail: leg > 0 ? { legs: leg } : null,
  });
  if (valuation.currencyMismatch) alertCurrencyMismatch(g, input, command);
  const { values, pools, transfers } = valuation.result();
  g.actors.set(command.sku, { state, seq, lastHash, version: actor.version + 1, values, pools, transferValues: transfers });
}

/**
 * A receipt in another currency than the company's is a fact: applied, valued as a receipt
 * without cost and flagged `currency_mismatch`; an operator is told by an alert event, written with
 * the batch (the relay publishes it, exactly once).
 */
function alertCurrencyMismatch(g: Gathered, input: PlanInput, command: Command): void {
  if (command.type !== "receive") return;
  const currency = (input.valuation ?? DEFAULT_VALUATION).currency;
  g.outbox.push({
    kind: "event",
    subject: input.names.eventSubject("alert"),
    kvKey: null,
    payload: {
      type: "alert",
      kind: "valuation_currency_mismatch",
      commandId: command.id,
      sku: command.sku,
      location: command.location,
      currency: command.currency,
      expected: currency,
      message: `receipt ${command.id} of ${command.sku} at ${command.location} is in ${command.currency}, not the company's ${currency}: applied, but valued as a receipt without cost (flag currency_mismatch); correct its value in the ERP`,
      at: input.recordedAt.toISOString(),
    } satisfies AlertEvent,
  });
}

/** Balances, SKU locations and heads of the touched SKUs, and each affected channel's availability (outbox). */
function stateRows(g: Gathered, input: PlanInput): Pick<BatchWrite, "balances" | "skuLocations" | "heads"> {
  const balances: Array<BatchWrite["balances"][number]> = [];
  const skuLocations: Array<BatchWrite["skuLocations"][number]> = [];
  const heads: Array<BatchWrite["heads"][number]> = [];
  for (const [sku, locations] of g.touched) {
    const actor = g.actors.get(sku)!;
    heads.push({ sku, seq: actor.seq, lastHash: actor.lastHash, version: actor.version });
    for (const location of locations) {
      const l = actor.state.locations[location] ?? emptyLocation;
      for (const bucket of Object.keys(BUCKET_FIELD) as Array<Bucket>)
        balances.push({ sku, location, bucket, qty: l[BUCKET_FIELD[bucket]], ...balanceValue(actor, location, bucket, input) });
      skuLocations.push({ sku, location, safetyStock: l.safetyStock, reorderPoint: l.reorderPoint, status: l.status });
    }
    for (const channel of input.channels) {
      if (!channel.locations.some((loc) => locations.has(loc))) continue;
      const view = channelAvailability(actor, channel, input.recordedAt);
      const origin = g.origins.get(sku);
      g.outbox.push({
        kind: "availability",
        subject: input.names.availabilitySubject(channel.name, sku),
        kvKey: input.names.availabilityKey(channel.name, sku),
        payload: view,
        ...(origin ? { sourceAt: new Date(origin.at), source: origin.source } : {}),
      });
    }
  }
  return { balances, skuLocations, heads };
}

/** The valuation columns of a balance row: value, last unit cost and (FIFO on_hand) layers; none on reserved. */
function balanceValue(actor: LiveSku, location: string, bucket: Bucket, input: PlanInput): Partial<BatchWrite["balances"][number]> {
  if (bucket === "reserved") return {};
  if (bucket !== "on_hand") {
    const p = actor.pools?.[poolKey(location, bucket)] ?? noValue;
    return { value: p.value, lastUnitCost: bucket === "damaged" ? p.lastUnitCost : null };
  }
  const v = actor.values?.[location] ?? noValue;
  const fifo = (input.valuation ?? DEFAULT_VALUATION).method === "fifo";
  return { value: v.value, lastUnitCost: v.lastUnitCost, layers: fifo ? (v.layers ?? []) : null };
}

/** Open transfers touched by the batch, and those it settled. */
function transferRows(g: Gathered): Pick<BatchWrite, "transfers" | "settledTransfers"> {
  const transfers: Array<BatchWrite["transfers"][number]> = [];
  const settledTransfers: Array<BatchWrite["settledTransfers"][number]> = [];
  for (const [sku, ids] of g.transfersTouched) {
    const { state, transferValues } = g.actors.get(sku)!;
    for (const transferId of ids) {
      const t = state.transfers[transferId];
      const tv = transferValues?.[transferId];
      const valued = { shippedValue: tv?.shipped ?? null, receivedValue: tv?.received ?? null };
      if (t) transfers.push({ sku, transferId, from: t.from, to: t.to, shipped: t.shipped, received: t.received, ...valued });
      else settledTransfers.push({ sku, transferId });
    }
  }

  return { transfers, settledTransfers };
}

/** Holds opened, refused or reduced by the batch, as they stand after it. */
function holdRows(g: Gathered): BatchWrite["holds"] {
  const holds: Array<BatchWrite["holds"][number]> = [];
  for (const [sku, ids] of g.holdsTouched) {
    const state = g.actors.get(sku)!.state;
    for (const holdId of ids) {
      const h = state.holds[holdId]!;
      holds.push({ sku, holdId, location: h.location, channel: h.channel, qty: h.qty, open: h.open, status: h.status, expiresAt: h.expiresAt });
    }
  }
  return holds;
}

/** Closed holds this batch closed or had loaded are in the `holds` table now: the actor forgets them. */
function forgetClosedHolds(g: Gathered, input: PlanInput): void {
  const holdSkus = new Set<string>();
  for (const { command } of input.commands) if (holdIdOf(command) !== null) holdSkus.add(command.sku);
  for (const sku of holdSkus) g.actors.set(sku, withOpenHoldsOnly(g.actors.get(sku)!));
}

export function channelAvailability(actor: LiveSku, channel: ChannelView, at: Date): Availability {
  let sellable = 0n;
  let onHand = 0n;
  let reserved = 0n;
  let reorderPoints = 0;
  for (const location of channel.locations) {
    const l = actor.state.locations[location];
    if (!l) continue;
    sellable += atLeastZero(locationAvailable(l));
    onHand += l.onHand;
    reserved += l.reserved;
    reorderPoints += l.reorderPoint;
  }
  const available = atLeastZero(sellable - BigInt(channel.buffer));
  const status = available <= 0n ? "out" : available <= reorderPoints ? "low" : "in_stock";
  return {
    channel: channel.name,
    sku: actor.state.sku,
    available,
    onHand,
    reserved,
    status,
    seq: actor.seq,
    version: actor.version,
    updatedAt: at.toISOString(),
  };
}

function markTouched(map: Map<string, Set<string>>, key: string, value: string): void {
  let set = map.get(key);
  if (!set) map.set(key, (set = new Set()));
  set.add(value);
}
