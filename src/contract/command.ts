/**
 * The command vocabulary: every input (CDC row, POS payload, HTTP body, NATS
 * message) becomes one of these before it reaches a SKU actor. Decoding happens
 * at the edge with `decodeCommand`; inside, commands are trusted.
 */
import { Either, ParseResult, Schema } from "effect";

/** Largest quantity magnitude accepted, in base units. */
export const MAX_QTY = 1_000_000_000_000;

/** Longest SKU or location id. */
export const ID_MAX_LENGTH = 200;
const SKU_MAX_LENGTH = ID_MAX_LENGTH;
const COMMAND_ID_MAX_LENGTH = 300;
/**
/**
 * The one grammar of SKUs and location ids, wherever they appear (commands, the config file, HTTP
 * routes): letters, digits, `_`, `-`, `.` and `*`. NATS subjects and KV keys carry them encoded
 * (src/wire/topology.ts `encodeToken`), so `.` and `*` are safe there; `:` and `/` are left out everywhere
 * an id is accepted (command ids and hold ids join ids with `:`).
 */
export const ID_PATTERN = /^[A-Za-z0-9_\-.*]+$/;
const ID_JSON_ITEM = `[A-Za-z0-9_\\-.*]{1,${ID_MAX_LENGTH}}`;
/** The same grammar with its length, as a JSON-schema `pattern` for HTTP routes. */
export const ID_JSON_PATTERN = `^${ID_JSON_ITEM}$`;
/** A comma-separated list of ids in the same grammar, as a JSON-schema `pattern` (query strings). */
export const ID_LIST_JSON_PATTERN = `^${ID_JSON_ITEM}(,${ID_JSON_ITEM})*$`;
/** True when `s` is a valid SKU or location id. */
export const isId = (s: string): boolean => s.length > 0 && s.length <= ID_MAX_LENGTH && ID_PATTERN.test(s);
/** The id grammar's characters, as every error message names them. */
export const ID_CHARACTERS = "letters, digits, _ - . *";
/**
 * The grammar of names that are not SKU or location ids: channels and CDC sources (they become
 * environment variable parts, slot and publication names, dead-letter origins).
 */
export const NAME_PATTERN = /^[a-z0-9_-]+$/;
export const NAME_CHARACTERS = "lowercase letters, digits, _ and -";
/**
 * The grammar of a POS terminal or transaction id: they become parts of command ids
 * `pos:<store>:<terminal>:<txn>:<line>` (src/contract/commandIds.ts), so no colons.
 */
export const POS_ID_PATTERN = /^[A-Za-z0-9_.-]+$/;
export const POS_ID_CHARACTERS = "letters, digits, _ - .";
const COMMAND_ID_PATTERN = /^[\x21-\x7E]+$/;

/** Renders an offending input value for an error message, briefly. */
const show = (value: unknown): string => {
  if (typeof value === "string") {
    return value.length > 60 ? `${JSON.stringify(value.slice(0, 40))}… (${value.length} characters)` : JSON.stringify(value);
  }
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  if (typeof value === "object") return "an object";
  return String(value);
};

/** A message annotation that replaces every failure of the schema with one sentence. */
const expected = (describe: string | ((actual: unknown) => string)) => ({
  message: (issue: ParseResult.ParseIssue) => ({
    message: `expected ${typeof describe === "string" ? describe : describe(issue.actual)}, got ${show(issue.actual)}`,
    override: true,
  }),
});

const idString = (what: string) =>
  Schema.String.pipe(
    Schema.filter((s) => s.length > 0 && s.length <= SKU_MAX_LENGTH && ID_PATTERN.test(s), {
      ...expected((actual) =>
        typeof actual === "string" && actual.length > SKU_MAX_LENGTH
          ? `${what} of at most ${SKU_MAX_LENGTH} characters`
          : `${what} (${ID_CHARACTERS})`,
      ),
    }),
  );

/** Canonical stock-keeping unit, safe as a NATS subject token and KV key. */
export const Sku = idString("a SKU").pipe(Schema.brand("Sku"));
export type Sku = typeof Sku.Type;

/** A store, warehouse or DC, safe as a NATS subject token and KV key. */
export const LocationId = idString("a location id").pipe(Schema.brand("LocationId"));
export type LocationId = typeof LocationId.Type;

/** The idempotency key of a command, deterministic from its source. */
export const CommandId = Schema.String.pipe(
  Schema.filter((s) => s.length > 0 && s.length <= COMMAND_ID_MAX_LENGTH && COMMAND_ID_PATTERN.test(s), {
    ...expected(`a command id (1 to ${COMMAND_ID_MAX_LENGTH} printable ASCII characters, no spaces)`),
  }),
  Schema.brand("CommandId"),
);
export type CommandId = typeof CommandId.Type;

const integer = (describe: string, accept: (n: number) => boolean) =>
  Schema.Number.pipe(
    Schema.filter((n) => Number.isSafeInteger(n) && Math.abs(n) <= MAX_QTY && accept(n), {
      ...expected((actual) =>
        typeof actual === "number" && Number.isInteger(actual) && Math.abs(actual) > MAX_QTY && accept(actual)
          ? `${describe} of magnitude at most ${MAX_QTY}`
          : describe,
      ),
    }),
  );

const PositiveInt = integer("a positive integer", (n) => n >= 1);
const NonNegativeInt = integer("a non-negative integer", (n) => n >= 0);
const NonZeroInt = integer("a non-zero integer", (n) => n !== 0);

/**
 * Text Postgres can store: `text` and `jsonb` refuse NUL, and a lone UTF-16 surrogate would be
 * stored as U+FFFD (so the row would no longer match its hash). Lengths are bounded so a row
 * stays well inside an index entry and a message inside NATS's payload limit.
 */
const UNSTORABLE_TEXT = /[\u0000]|\p{Cs}/u;
const isStorableText = (s: string, min: number, max: number): boolean => s.length >= min && s.length <= max && !UNSTORABLE_TEXT.test(s);
const text = (min: number, max: number) =>
  Schema.String.pipe(
    Schema.filter((s) => isStorableText(s, min, max), {
      ...expected((actual) =>
        typeof actual !== "string"
          ? min > 0
            ? "a non-empty string"
            : "a string"
          : UNSTORABLE_TEXT.test(actual)
            ? "text without NUL characters or unpaired surrogates"
            : actual.length > max
              ? `a string of at most ${max} characters`
              : "a non-empty string",
      ),
    }),
  );
/** Longest free-text field (a source reference, an adjustment reason). */
export const TEXT_MAX_LENGTH = 1000;
const NonEmptyString = text(1, TEXT_MAX_LENGTH);
const AnyString = text(0, TEXT_MAX_LENGTH);
const ShortName = text(1, ID_MAX_LENGTH);
const Bool = Schema.Boolean.annotations(expected("true or false"));

const DAYS_IN_MONTH = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31] as const;
const ISO_DATE_TIME = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d{1,9})?)?(?:Z|[+-](\d{2}):?(\d{2}))$/i;

const isLeapYear = (y: number) => (y % 4 === 0 && y % 100 !== 0) || y % 400 === 0;

/** ISO-8601 date-time with an explicit zone (`Z` or `±hh:mm`), calendar-checked. */
export const isIsoDateTimeWithZone = (s: string): boolean => {
  const m = ISO_DATE_TIME.exec(s);
  if (m === null) return false;
  const [year, month, day, hour, minute, second, offH, offM] = m.slice(1).map((part) => Number(part ?? 0)) as [
    number,
    number,
    number,
    number,
    number,
    number,
    number,
    number,
  ];
  if (month < 1 || month > 12) return false;
  const maxDay = month === 2 && !isLeapYear(year) ? 28 : (DAYS_IN_MONTH[month - 1] ?? 0);
  return day >= 1 && day <= maxDay && hour <= 23 && minute <= 59 && second <= 59 && offH <= 23 && offM <= 59;
};

/** Earliest and latest instants a command may carry (Postgres has no year 0; JS and Postgres agree in this range). */
export const EARLIEST_OCCURRED_AT = "1900-01-01T00:00:00Z";
export const LATEST_OCCURRED_AT = "9999-12-31T23:59:59.999Z";
const EARLIEST_MS = Date.parse(EARLIEST_OCCURRED_AT);
const LATEST_MS = Date.parse(LATEST_OCCURRED_AT);

/** An ISO-8601 date-time with a zone whose instant lies in the storable range (1900 to 9999, UTC). */
export const isStorableDateTime = (s: string): boolean => {
  if (!isIsoDateTimeWithZone(s)) return false;
  const ms = Date.parse(s);
  return Number.isFinite(ms) && ms >= EARLIEST_MS && ms <= LATEST_MS;
};

const OccurredAt = Schema.String.pipe(
  Schema.filter(isStorableDateTime, {
    ...expected((actual) =>
      typeof actual === "string" && isIsoDateTimeWithZone(actual)
        ? `a date-time from ${EARLIEST_OCCURRED_AT} to ${LATEST_OCCURRED_AT}`
        : "an ISO-8601 date-time with a zone, like 2024-05-01T12:00:00Z",
    ),
  }),
);

/** Where a command came from: the source system, its own reference, and the WAL position for CDC. */
export const CommandSource = Schema.Struct({
  system: ShortName,
  ref: AnyString,
  lsn: Schema.optional(text(0, 64)),
});
export type CommandSource = typeof CommandSource.Type;

const common = {
  id: CommandId,
  sku: Sku,
  location: LocationId,
  source: CommandSource,
  occurredAt: OccurredAt,
} as const;

const HOLD_ID_MAX_LENGTH = 300;

/**
 * The hold a reserve opens and a release or fulfill acts on: one order line or checkout line
 * (the shop mapping uses `<source>:<order>:<line>`, the reservations API the reserve command's id).
 */
export const HoldId = Schema.String.pipe(
  Schema.filter((s) => s.length > 0 && s.length <= HOLD_ID_MAX_LENGTH && !/[\x00-\x1f\x7f]/.test(s), {
    ...expected(`a hold id (1 to ${HOLD_ID_MAX_LENGTH} characters, no control characters)`),
  }),
);

/** What a reserve, release or fulfill moves: `qty` of hold `reservationId` (in this order, after `common`). */
const onHold = { qty: PositiveInt, reservationId: HoldId } as const;

/** What a transfer's two legs move: `qty` of transfer `transferId`. */
const ofTransfer = { qty: PositiveInt, transferId: ShortName } as const;

/** An ISO 4217 currency code: three uppercase letters. */
const Currency = Schema.String.pipe(
  Schema.filter((s) => /^[A-Z]{3}$/.test(s), { ...expected("an ISO 4217 currency code (3 uppercase letters, like EUR)") }),
);

/**
 * Goods receipt: on_hand + qty. `unitCost` is what one unit cost, in integer minor units of
 * `currency` (cents for EUR): money is never a float. Without it the receipt is valued at the
 * location's current average cost (and the entry is flagged).
 */
export const ReceiveCommand = Schema.Struct({
  type: Schema.Literal("receive"),
  ...common,
  qty: PositiveInt,
  unitCost: Schema.optional(NonNegativeInt),
  currency: Schema.optional(Currency),
});
export type ReceiveCommand = typeof ReceiveCommand.Type;

/** POS sale: on_hand − qty, never rejected. */
export const SellCommand = Schema.Struct({ type: Schema.Literal("sell"), ...common, qty: PositiveInt });
export type SellCommand = typeof SellCommand.Type;

/** Customer return: on_hand + qty when restockable (the default), else damaged + qty. */
export const ReturnCommand = Schema.Struct({
  type: Schema.Literal("return"),
  ...common,
  qty: PositiveInt,
  restockable: Schema.optionalWith(Bool, { default: () => true }),
});
export type ReturnCommand = typeof ReturnCommand.Type;

/**
 * The sales channel a hold is made for: the SKU's actor also checks what that channel may sell
 * (its locations' available, each clamped at 0, less its buffer), so a channel never holds units
 * it does not show.
 */
export const ReserveScope = Schema.Struct({
  channel: ShortName,
  locations: Schema.NonEmptyArray(LocationId),
  buffer: NonNegativeInt,
});
export type ReserveScope = typeof ReserveScope.Type;

/**
 * Opens hold `reservationId` for qty: reserved + qty, only when available ≥ qty (and, with a scope,
 * the channel's available ≥ qty). `expiresAt`: when the hold lapses if nothing closes it first.
 */
export const ReserveCommand = Schema.Struct({
  type: Schema.Literal("reserve"),
  ...common,
  ...onHold,
  scope: Schema.optional(ReserveScope),
  expiresAt: Schema.optional(OccurredAt),
});
export type ReserveCommand = typeof ReserveCommand.Type;

/**
 * Cancel or expiry of (part of) hold `reservationId`: reserved − qty, never more than the hold has
 * open. `expired`: the hold lapsed (it ends `expired` rather than `released`).
 */
export const ReleaseCommand = Schema.Struct({
  type: Schema.Literal("release"),
  ...common,
  ...onHold,
  expired: Schema.optional(Bool),
});
export type ReleaseCommand = typeof ReleaseCommand.Type;

/**
 * Shipment of (part of) hold `reservationId`: reserved − qty and on_hand − qty. A fact: what the
 * hold does not cover still leaves on hand (movement `fulfill_unreserved`).
 */
export const FulfillCommand = Schema.Struct({
  type: Schema.Literal("fulfill"),
  ...common,
  ...onHold,
});
export type FulfillCommand = typeof FulfillCommand.Type;

/** Manual correction: on_hand + qty (negative qty = shrink). */
export const AdjustCommand = Schema.Struct({
  type: Schema.Literal("adjust"),
  ...common,
  qty: NonZeroInt,
  reason: NonEmptyString,
});
export type AdjustCommand = typeof AdjustCommand.Type;

/**
 * Why a count was taken: `cycle_count` (a routine count of some locations), `physical_inventory` (a
 * full stocktake), `reconciliation` (the source's system of record, by `tally reconcile --apply`).
 */
const COUNT_REASONS = ["cycle_count", "physical_inventory", "reconciliation"] as const;
const CountReason = Schema.Literal(...COUNT_REASONS).annotations(expected(`one of ${COUNT_REASONS.join(", ")}`));

/** Stock count: qty is the counted on_hand; the ledger records the difference. */
export const CountCommand = Schema.Struct({
  type: Schema.Literal("count"),
  ...common,
  qty: NonNegativeInt,
  reason: Schema.optional(CountReason),
});
export type CountCommand = typeof CountCommand.Type;

/** Ship `qty` from `location` to `to`: origin on_hand − qty, destination in_transit + qty. */
export const TransferOutCommand = Schema.Struct({
  type: Schema.Literal("transfer_out"),
  ...common,
  ...ofTransfer,
  to: LocationId,
}).pipe(
  Schema.filter((c) => (c.to === c.location ? { path: ["to"], message: `expected a location other than the origin, got ${show(c.to)}` } : undefined)),
);
export type TransferOutCommand = typeof TransferOutCommand.Type;

/** Receive `qty` of a transfer at `location`: in_transit − qty, on_hand + qty. */
export const TransferInCommand = Schema.Struct({
  type: Schema.Literal("transfer_in"),
  ...common,
  ...ofTransfer,
  from: LocationId,
});
export type TransferInCommand = typeof TransferInCommand.Type;

/** Item-master policy for one location. */
export const SetPolicyCommand = Schema.Struct({
  type: Schema.Literal("set_policy"),
  ...common,
  safetyStock: NonNegativeInt,
  reorderPoint: NonNegativeInt,
});
export type SetPolicyCommand = typeof SetPolicyCommand.Type;

const MEMBERS = {
  receive: ReceiveCommand,
  sell: SellCommand,
  return: ReturnCommand,
  reserve: ReserveCommand,
  release: ReleaseCommand,
  fulfill: FulfillCommand,
  adjust: AdjustCommand,
  count: CountCommand,
  transfer_out: TransferOutCommand,
  transfer_in: TransferInCommand,
  set_policy: SetPolicyCommand,
} as const;

/** Every command type, in vocabulary order. */
export const COMMAND_TYPES = Object.keys(MEMBERS) as ReadonlyArray<keyof typeof MEMBERS>;
export type CommandType = keyof typeof MEMBERS;

/** The canonical command, discriminated on `type`. */
export const Command = Schema.Union(
  ReceiveCommand,
  SellCommand,
  ReturnCommand,
  ReserveCommand,
  ReleaseCommand,
  FulfillCommand,
  AdjustCommand,
  CountCommand,
  TransferOutCommand,
  TransferInCommand,
  SetPolicyCommand,
);
export type Command = typeof Command.Type;
/** A command as plain JSON (what travels on the wire). */
export type EncodedCommand = typeof Command.Encoded;

/** One reason a payload is not a command: a dotted field path and what was wrong with it. */
export interface CommandIssue {
  readonly path: string;
  readonly message: string;
}

/** A payload that is not a valid command; `message` lists every issue as `<path>: <message>`. */
export class InvalidCommand extends Schema.TaggedError<InvalidCommand>()("InvalidCommand", {
  issues: Schema.Array(Schema.Struct({ path: Schema.String, message: Schema.String })),
}) {
  override get message(): string {
    return this.issues.map((i) => (i.path === "" ? i.message : `${i.path}: ${i.message}`)).join("; ");
  }
}

const isCommandType = (value: unknown): value is CommandType => typeof value === "string" && Object.hasOwn(MEMBERS, value);

const CommonFields = Schema.Struct(common);

const toIssues = (error: ParseResult.ParseError): Array<CommandIssue> => {
  const seen = new Set<string>();
  const issues: Array<CommandIssue> = [];
  for (const issue of ParseResult.ArrayFormatter.formatErrorSync(error)) {
    const path = issue.path.map(String).join(".");
    // Optional fields fail once per union member (value, then undefined): keep the first.
    if (seen.has(path)) continue;
    seen.add(path);
    issues.push({ path, message: issue.message });
  }
  return issues;
};

const decodeWith = <A, I>(schema: Schema.Schema<A, I>, input: unknown): Either.Either<A, Array<CommandIssue>> =>
  Either.mapLeft(Schema.decodeUnknownEither(schema, { errors: "all" })(input), toIssues);

/**
 * Decodes an untrusted payload into a `Command`, reporting every problem with
 * the field it concerns. Unknown extra fields are ignored and dropped.
 */
export const decodeCommand = (input: unknown): Either.Either<Command, InvalidCommand> => {
  if (typeof input !== "object" || input === null || Array.isArray(input)) {
    return Either.left(new InvalidCommand({ issues: [{ path: "", message: `expected a command object, got ${show(input)}` }] }));
  }
  const type: unknown = (input as { readonly type?: unknown }).type;
  if (!isCommandType(type)) {
    const typeIssue: CommandIssue = {
      path: "type",
      message: type === undefined ? "is missing" : `expected one of ${COMMAND_TYPES.join(", ")}, got ${show(type)}`,
    };
    const rest = decodeWith(CommonFields, input);
    return Either.left(new InvalidCommand({ issues: [typeIssue, ...(Either.isLeft(rest) ? rest.left : [])] }));
  }
  // `type` is known, so the union narrows to that member and reports only its issues.
  const decoded = decodeWith(Command, input);
  return Either.mapLeft(decoded, (issues) => new InvalidCommand({ issues }));
};

/** Encodes a command to plain JSON, the inverse of `decodeCommand`. */
export const encodeCommand: (command: Command) => EncodedCommand = Schema.encodeSync(Command);
