/**
 * What Tally publishes for channels and integrators on NATS, as Effect schemas: the availability
 * value (KV bucket and availability subjects) and every event on `tally.<env>.events.<type>`.
 * `schemas/nats/*.json` are generated from these (`npm run schemas`); the code that builds a
 * payload is typed by them, so the two cannot drift.
 */
import { Schema } from "effect";
import { isIsoDateTimeWithZone } from "./command.ts";

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/** A quantity as it travels: a number within ±(2^53 − 1), beyond that a decimal string (exact either way). */
export const quantityValue = (n: bigint): number | string => (n <= MAX_SAFE && n >= -MAX_SAFE ? Number(n) : n.toString());

/** An exact quantity in base units: a JSON integer, or a decimal string past 2^53 − 1 (JSON readers parse numbers as doubles). */
export const Quantity = Schema.transform(Schema.Union(Schema.Int, Schema.String.pipe(Schema.pattern(/^-?[0-9]+$/))), Schema.BigIntFromSelf, {
  strict: true,
  decode: (q) => BigInt(q),
  encode: quantityValue,
}).annotations({
  identifier: "Quantity",
  description: "An exact quantity in base units: an integer up to ±(2^53 − 1), a decimal string beyond",
});

/** An ISO-8601 date-time with a zone. */
export const DateTime = Schema.String.pipe(
  Schema.filter(isIsoDateTimeWithZone, { jsonSchema: { format: "date-time" }, description: "an ISO-8601 date-time with a zone" }),
);

const Int = Schema.Int;
const described = <A, I>(schema: Schema.Schema<A, I>, description: string): Schema.Schema<A, I> => schema.annotations({ description });

/** Where a command came from, as on the command. */
const Source = Schema.Struct({
  system: Schema.String,
  ref: Schema.String,
  lsn: Schema.optional(described(Schema.String, "the WAL position, for a CDC change")),
}).annotations({ identifier: "Source", description: "where the command came from: the source system and its own reference" });

/**
 * What one channel may sell of a SKU: the KV value under `<channel>.<sku>` in `tally_<env>_availability`
 * and the message on `tally.<env>.availability.<channel>.<sku>`.
 */
export const AvailabilityValue = Schema.Struct({
  channel: Schema.String,
  sku: described(Schema.String, "the SKU as it is (not encoded)"),
  available: described(Quantity, "what the channel may sell: its locations' available, each clamped at 0, less its buffer; never negative"),
  onHand: described(Quantity, "on hand over the channel's locations (negative when oversold)"),
  reserved: described(Quantity, "held by open holds at the channel's locations"),
  status: Schema.Literal("in_stock", "low", "out"),
  seq: described(Int, "the SKU's ledger sequence: a reader drops a value older than one it has"),
  version: described(Int, "bumped by every applied command of the SKU (policies change availability without a ledger leg)"),
  updatedAt: DateTime,
  reason: Schema.optional(
    described(
      Schema.Literal("discontinued", "blocked"),
      "present when the item's status withholds it from this channel: available is 0 and status `out` whatever the stock " +
        "(blocked: every channel; discontinued: channels that do not sell remaining stock)",
    ),
  ),
  stock: Schema.optional(
    described(
      Schema.Struct({ available: Quantity, status: Schema.Literal("in_stock", "low", "out") }),
      "with `reason`: what the stock alone would allow (shown again once the item is active)",
    ),
  ),
  components: Schema.optional(
    described(
      Schema.Array(
        Schema.Struct({
          sku: Schema.String,
          qty: described(Int, "base units of the component in one bundle"),
        }).annotations({ identifier: "BundleComponent", description: "One component of a bundle" }),
      ),
      "only on a bundle: its components. Its available is min over them of ⌊component available / qty⌋ (0 when one is out); " +
        "onHand likewise over their on hand; reserved is 0 (a bundle is held as its components); seq and version count " +
        "the bundle's own publications",
    ),
  ),
}).annotations({ title: "Availability", description: "What one channel may sell of one SKU (or bundle)" });

/** What every event caused by a command carries after its own fields. */
const byCommand = {
  commandId: described(Schema.String, "the command that caused it (its idempotency key)"),
  occurredAt: described(DateTime, "when that command happened at its source"),
} as const;
/** …and, for a stock event, the SKU's ledger sequence after the command. */
const atSeq = { seq: described(Int, "the SKU's ledger sequence after the command") } as const;
const at = { sku: Schema.String, location: Schema.String } as const;

export const LowStockEvent = Schema.Struct({
  type: Schema.Literal("low_stock"),
  ...at,
  available: Quantity,
  reorderPoint: Int,
  replenishmentRequested: Schema.Struct({ reorderPoint: Int, shortfall: described(Quantity, "how much to order (at least 1)") }),
  ...byCommand,
  ...atSeq,
}).annotations({ title: "low_stock", description: "Available at a location fell to its reorder point or below" });

export const OutOfStockEvent = Schema.Struct({ type: Schema.Literal("out_of_stock"), ...at, ...byCommand, ...atSeq }).annotations({
  title: "out_of_stock",
  description: "Nothing is available at a location any more",
});

export const BackInStockEvent = Schema.Struct({
  type: Schema.Literal("back_in_stock"),
  ...at,
  available: Quantity,
  ...byCommand,
  ...atSeq,
}).annotations({ title: "back_in_stock", description: "A location that had run out (or was oversold) has stock again" });

export const NegativeStockEvent = Schema.Struct({
  type: Schema.Literal("negative_stock"),
  ...at,
  onHand: Quantity,
  ...byCommand,
  ...atSeq,
}).annotations({
  title: "negative_stock",
  description: "More was sold at a location than it had on hand (oversold)",
});

export const FulfillUnreservedEvent = Schema.Struct({
  type: Schema.Literal("fulfill_unreserved"),
  ...at,
  holdId: described(Schema.String, "the order line's hold"),
  qty: Int,
  reason: Schema.Literal("unknown_hold", "hold_closed", "hold_elsewhere", "exceeds_hold"),
  ...byCommand,
  source: Source,
  ...atSeq,
}).annotations({ title: "fulfill_unreserved", description: "Goods shipped that no open hold covered; recorded anyway" });

export const HoldRefusedEvent = Schema.Struct({
  type: Schema.Literal("hold_refused"),
  ...at,
  holdId: described(Schema.String, "the order line's hold, recorded as refused"),
  qty: Int,
  channel: Schema.NullOr(Schema.String),
  available: described(Quantity, "what could have been held (at least 0)"),
  reason: Schema.String,
  ...byCommand,
  source: Source,
}).annotations({ title: "hold_refused", description: "A reserve was refused: the order line's system can backorder or cancel it" });

export const CommandRejectedEvent = Schema.Struct({
  type: Schema.Literal("command_rejected"),
  commandId: Schema.String,
  commandType: Schema.String,
  sku: Schema.String,
  location: Schema.String,
  reason: described(Schema.String, "a stable code, e.g. insufficient_stock, hold_exists, unknown_hold, hold_closed"),
  message: described(Schema.String, "the reason in words"),
  source: Source,
  occurredAt: DateTime,
}).annotations({ title: "command_rejected", description: "A command was refused; nothing was written for it" });

/** Every alert kind Tally raises. */
export const ALERT_KINDS = [
  "partition_stuck",
  "commands_stream_replaced",
  "cdc_lag",
  "cdc_slot_lost",
  "cdc_slot_replaced",
  "cdc_slot_invalidated",
  "cdc_publication_incomplete",
  "cdc_table_recreated",
  "valuation_currency_mismatch",
] as const;

/** An alert (core NATS on `tally.<env>.events.alert`): its kind, when, and fields of that kind. */
export const AlertEvent = Schema.Struct(
  {
    type: Schema.Literal("alert"),
    kind: Schema.Literal(...ALERT_KINDS),
    message: Schema.optional(described(Schema.String, "what happened and what to do")),
    at: DateTime,
  },
  Schema.Record({ key: Schema.String, value: Schema.Unknown }),
).annotations({
  title: "alert",
  description: "Something an operator must see; each kind adds its own fields (partition, streamSeq, source, slot, action…)",
});

export type LowStockEvent = typeof LowStockEvent.Type;
export type StatusEvent = typeof LowStockEvent.Type | typeof OutOfStockEvent.Type | typeof BackInStockEvent.Type | typeof NegativeStockEvent.Type;
export type FulfillUnreservedEvent = typeof FulfillUnreservedEvent.Type;
export type HoldRefusedEvent = typeof HoldRefusedEvent.Type;
export type CommandRejectedEvent = typeof CommandRejectedEvent.Type;
export type AlertEvent = typeof AlertEvent.Type;

/** Every event subject's last token and the schema of its payloads. */
export const EVENT_SCHEMAS = {
  low_stock: LowStockEvent,
  out_of_stock: OutOfStockEvent,
  back_in_stock: BackInStockEvent,
  negative_stock: NegativeStockEvent,
  fulfill_unreserved: FulfillUnreservedEvent,
  hold_refused: HoldRefusedEvent,
  command_rejected: CommandRejectedEvent,
  alert: AlertEvent,
} as const;

/** An amount of money in integer minor units of its currency (cents for EUR): an integer, or a decimal string past 2^53 − 1. */
export const MinorUnits = Schema.transform(Schema.Union(Schema.Int, Schema.String.pipe(Schema.pattern(/^-?[0-9]+$/))), Schema.BigIntFromSelf, {
  strict: true,
  decode: (q) => BigInt(q),
  encode: quantityValue,
}).annotations({ identifier: "MinorUnits", description: "An amount in integer minor units of its currency (cents for EUR, yen for JPY)" });

/**
 * What one channel shows of an item: the KV value under `<channel>.<sku>` in `tally_<env>_catalog` and the
 * message on `tally.<env>.catalog.<channel>.<sku>`. A deleted key (and a message with `removed: true`) means the
 * item left the catalog.
 */
export const CatalogValue = Schema.Struct({
  channel: Schema.String,
  sku: described(Schema.String, "the SKU as it is (not encoded)"),
  name: described(Schema.String, "the item's name (its SKU until the item master names it)"),
  description: Schema.NullOr(Schema.String),
  status: described(Schema.Literal("active", "discontinued", "blocked"), "a channel sells active items only"),
  unit: described(Schema.String, "the unit the price is for (EA, kg …)"),
  price: Schema.NullOr(
    Schema.Struct({
      amount: described(MinorUnits, "integer minor units of the currency"),
      currency: described(Schema.String, "ISO 4217"),
      priceList: described(Schema.String, "the price list it comes from"),
    }),
  ).annotations({ description: "null: the channel has no price for the item now" }),
  validUntil: Schema.NullOr(DateTime).annotations({ description: "when this price ends or another takes over (null: open-ended)" }),
  attributes: Schema.Record({ key: Schema.String, value: Schema.Unknown }),
  identifiers: Schema.optional(
    Schema.Array(
      Schema.Struct({
        system: described(Schema.String, "where the identifier is used: barcode (GTIN/EAN), plu, erp_item, shop_sku …"),
        id: Schema.String,
        uom: Schema.optional(described(Schema.String, "the unit the identifier implies (a case barcode)")),
      }),
    ),
  ).annotations({ description: "every identifier of the item in other systems, from the item master" }),
  components: Schema.optional(
    Schema.Array(Schema.Struct({ sku: Schema.String, qty: described(Int, "base units of the component per bundle") })),
  ).annotations({ description: "a bundle's (kit's) components and quantities; empty for any other item" }),
  catalogVersion: described(Int, "the catalog version this projection changed at: every channel's projection of one change carries the same"),
  removed: Schema.optional(described(Schema.Boolean, "true on the subject when the item left the catalog (the KV key is deleted)")),
}).annotations({ title: "Catalog", description: "What one channel shows of one item: name, status, unit, price and catalog version" });
export type CatalogValue = typeof CatalogValue.Type;
