/**
 * The POS transaction format and its decoding. A payload is decoded at the edge into a trusted
 * `PosTransaction`, or into a list of issues that each name the field (`lines[1].qty: …`), relative
 * to the transaction; the caller prefixes its position in the batch (`transactions[0].`).
 */
import { createHash } from "node:crypto";
import { Either, ParseResult, Schema } from "effect";
import {
  EARLIEST_OCCURRED_AT,
  ID_CHARACTERS,
  ID_PATTERN,
  LATEST_OCCURRED_AT,
  POS_ID_CHARACTERS,
  POS_ID_PATTERN,
  isIsoDateTimeWithZone,
  isStorableDateTime,
} from "../contract/index.ts";

/** Most transactions in one batch, and lines in one transaction. */
export const MAX_TRANSACTIONS = 1000;
export const MAX_LINES = 500;
/** Most lines in one batch, over all its transactions: bounds the work one request makes (split bigger batches). */
export const MAX_BATCH_LINES = 10_000;
/** Largest count or weight value a POS line may carry (in its unit). */
export const MAX_LINE_QTY = 1_000_000;

/** One problem with a payload: a field path (`lines[1].qty`) and what was wrong. */
export interface Issue {
  readonly path: string;
  readonly message: string;
}

const show = (value: unknown): string => {
  if (typeof value === "string")
    return value.length > 40 ? `${JSON.stringify(value.slice(0, 30))}… (${value.length} characters)` : JSON.stringify(value);
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  if (typeof value === "object") return "an object";
  return String(value);
};

const expected = (what: string) => ({
  message: (issue: ParseResult.ParseIssue) => ({ message: `expected ${what}, got ${show(issue.actual)}`, override: true }),
});

const token = (what: string, pattern: RegExp, max: number) =>
  Schema.String.pipe(Schema.filter((s) => s.length > 0 && s.length <= max && pattern.test(s), expected(`${what}`)));

/**
 * A store is a location id (the one grammar, src/contract), of at most 64 characters: it is part of
 * command ids `pos:<store>:<terminal>:<txn>:<line>`, which have a length limit. Its NATS subject
 * `tally.<env>.pos.<store>` carries it encoded (Topology.posSubject).
 */
const StoreId = token(`a store id (1 to 64 ${ID_CHARACTERS})`, ID_PATTERN, 64);
/** Terminal and transaction ids become part of command ids `pos:<store>:<terminal>:<txn>:<line>`: no colons. */
const PosId = (what: string) => token(`a ${what} (1 to 64 ${POS_ID_CHARACTERS})`, POS_ID_PATTERN, 64);
const Identifier = (what: string) => token(`a ${what} (1 to 64 printable characters, no spaces)`, /^[\x21-\x7E]+$/, 64);

/** A date-time with a zone whose instant Postgres can store (the same bounds as a command's occurredAt). */
const OccurredAt = Schema.String.pipe(
  Schema.filter(isStorableDateTime, {
    message: (issue) => {
      const what =
        typeof issue.actual === "string" && isIsoDateTimeWithZone(issue.actual)
          ? `a date-time from ${EARLIEST_OCCURRED_AT} to ${LATEST_OCCURRED_AT}`
          : "an ISO-8601 date-time with a zone, like 2026-11-26T10:00:00Z";
      return { message: `expected ${what}, got ${show(issue.actual)}`, override: true };
    },
  }),
);

const Count = Schema.Number.pipe(
  Schema.filter((n) => Number.isSafeInteger(n) && n >= 1 && n <= MAX_LINE_QTY, expected(`a whole count from 1 to ${MAX_LINE_QTY}`)),
);
const LineNo = Schema.Number.pipe(
  Schema.filter((n) => Number.isSafeInteger(n) && n >= 1 && n <= 100_000, expected("a line number from 1 to 100000")),
);
const DECIMAL = /^\d{1,9}(\.\d{1,9})?$/;
/** A weight: a positive exact decimal, as a string ("1.250") or a JSON number (1.25). */
const WeightValue = Schema.Union(Schema.String, Schema.Number).pipe(
  Schema.filter(
    (v) => {
      const text = typeof v === "number" ? (Number.isFinite(v) ? String(v) : "") : v;
      return DECIMAL.test(text) && Number(text) > 0 && Number(text) <= MAX_LINE_QTY;
    },
    expected(`a positive decimal weight up to ${MAX_LINE_QTY} (like "1.25")`),
  ),
);
const Unit = token("a unit (like kg or g)", /^[A-Za-z0-9_]+$/, 16);
/** Largest amount (minor units) a POS money field may carry: far above any till, and exact in a JSON number. */
export const MAX_AMOUNT = 1_000_000_000_000;
/** An amount in integer minor units: a JSON integer, never a fraction (12.99 EUR is 1299). */
const Amount = (min: number) =>
  Schema.Number.pipe(
    Schema.filter((n) => Number.isSafeInteger(n) && n >= min && n <= MAX_AMOUNT, {
      ...expected(`a whole number of minor units from ${min} to ${MAX_AMOUNT} (an integer: 12.99 EUR is 1299)`),
      jsonSchema: { type: "integer", minimum: min, maximum: MAX_AMOUNT },
    }),
  );
/** A tender's amount: positive when the customer pays, negative when money goes back to them (a refund). */
const TenderAmount = Schema.Number.pipe(
  Schema.filter((n) => Number.isSafeInteger(n) && n !== 0 && Math.abs(n) <= MAX_AMOUNT, {
    ...expected(`a non-zero whole number of minor units up to ±${MAX_AMOUNT} (negative: a refund)`),
    jsonSchema: { type: "integer", minimum: -MAX_AMOUNT, maximum: MAX_AMOUNT, not: { const: 0 } },
  }),
);
const Currency = Schema.String.pipe(
  Schema.filter((s) => /^[A-Z]{3}$/.test(s), { ...expected("an ISO 4217 currency code (like EUR)"), jsonSchema: { pattern: "^[A-Z]{3}$" } }),
);
const Bool = Schema.Boolean.annotations(expected("true or false"));

const PosLineSchema = Schema.Struct({
  /** The line number on the receipt; default its position (1-based). */
  line: Schema.optional(LineNo),
  type: Schema.Literal("sale", "return", "void").annotations(expected('"sale", "return" or "void"')),
  barcode: Schema.optional(Identifier("barcode")),
  plu: Schema.optional(Identifier("PLU")),
  sku: Schema.optional(Identifier("SKU")),
  qty: Schema.optional(Count),
  weight: Schema.optional(Schema.Struct({ value: WeightValue, unit: Unit })),
  /** Returns only: false sends the goods to `damaged` (default true). */
  restockable: Schema.optional(Bool),
  /** Voids only: the line number this void cancels (all of it, or `qty` of it). */
  voids: Schema.optional(LineNo),
  /** Price of one unit as rung (a case barcode: a case; a weighed line: one `weight.unit`), in minor units. */
  unitPrice: Schema.optional(Amount(0)),
  /** The line's total discount, in minor units. */
  discount: Schema.optional(Amount(0)),
  /** The line's total sales tax, in minor units (added to its net amount). */
  tax: Schema.optional(Amount(0)),
}).annotations({ identifier: "PosLine", description: "a sale, return or void line" });

const TenderSchema = Schema.Struct({
  type: Schema.Literal("cash", "card", "gift_card").annotations(expected('"cash", "card" or "gift_card"')),
  amount: TenderAmount,
  giftCardId: Schema.optional(Identifier("gift card id")),
}).annotations({ identifier: "PosTender", description: "a payment (positive) or refund (negative), net of change" });

const GiftCardSaleSchema = Schema.Struct({ id: Identifier("gift card id"), amount: Amount(1) }).annotations({
  identifier: "PosGiftCardSale",
  description: "a gift card sold (loaded) in the transaction: a liability, not stock",
});

const PosTransactionSchema = Schema.Struct({
  store: StoreId,
  terminal: PosId("terminal id"),
  id: PosId("transaction id"),
  occurredAt: OccurredAt,
  lines: Schema.Array(PosLineSchema),
  /** ISO 4217: the currency of every amount; required when the transaction carries any. */
  currency: Schema.optional(Currency),
  tenders: Schema.optional(Schema.Array(TenderSchema)),
  /** Gift cards sold (loaded) in this transaction: not stock, a liability. */
  giftCards: Schema.optional(Schema.Array(GiftCardSaleSchema)),
}).annotations({ identifier: "PosTransaction", description: "one POS transaction: its lines, and optionally its money" });

type RawLine = typeof PosLineSchema.Type;

/**
 * What a POS terminal publishes on `tally.<env>.pos.<store>`: a batch, or one transaction (its JSON Schema is
 * shipped as schemas/nats/pos.json; the ingest decodes with the same schemas, then checks what spans fields).
 */
export const PosPayload = Schema.Union(
  Schema.Struct({ transactions: Schema.Array(PosTransactionSchema) }).annotations({ title: "POS batch" }),
  PosTransactionSchema,
).annotations({
  title: "POS",
  description: "POS transactions (a batch, or one): stock lines, and optionally their money in integer minor units of the currency",
});

/** An item as a POS names it, in the crosswalk's namespaces. */
export interface PosItem {
  readonly system: "barcode" | "plu" | "sku";
  readonly id: string;
}

/** A sale or return line, after voids: what it sells or takes back, in its own unit. */
export interface PosLine {
  readonly line: number;
  readonly type: "sale" | "return";
  readonly item: PosItem;
  /** A count (in the unit the identifier implies) or a weight value (decimal text) in `unit`. */
  readonly qty: number | string;
  readonly unit: string | null;
  readonly restockable: boolean;
  /** How much of `qty` voids cancelled (a weight line is voided whole). */
  readonly voided: number;
  /** True when nothing of the line is left. */
  readonly fullyVoided: boolean;
  /** The index in the payload's `lines`, for error paths. */
  readonly index: number;
}

/** A sale or return line's money, after its voids: what it sells (or refunds) net of discount, and its tax. */
export interface PosMoneyLine {
  readonly line: number;
  readonly type: "sale" | "return";
  /** Quantity × unit price − discount, in minor units (≥ 0; a return's is refunded). */
  readonly net: bigint;
  readonly tax: bigint;
}

/** A transaction's money, all in integer minor units of `currency`; present only when the transaction carries amounts. */
export interface PosMoney {
  readonly currency: string;
  /** One per sale or return line (a line voided whole has net and tax 0). */
  readonly lines: ReadonlyArray<PosMoneyLine>;
  /** Positive: paid by the customer; negative: paid back to them. */
  readonly tenders: ReadonlyArray<{ readonly type: "cash" | "card" | "gift_card"; readonly amount: bigint; readonly giftCardId: string | null }>;
  readonly giftCards: ReadonlyArray<{ readonly id: string; readonly amount: bigint }>;
}

/** A decoded, consistent POS transaction. */
export interface PosTransaction {
  readonly store: string;
  readonly terminal: string;
  readonly id: string;
  readonly occurredAt: string;
  /** Sale and return lines, with their voids applied. */
  readonly lines: ReadonlyArray<PosLine>;
  /** Void lines by line number → the line they void. */
  readonly voids: ReadonlyArray<{ readonly line: number; readonly voids: number }>;
  /** The `currency` field as sent (checked against the company's by the ingest), or null. */
  readonly currency: string | null;
  /** Its money, or null when it carries no amounts (then only its stock moves). */
  readonly money: PosMoney | null;
}

const pathOf = (path: ReadonlyArray<PropertyKey>): string =>
  path.map((p, i) => (typeof p === "number" ? `[${p}]` : i === 0 ? String(p) : `.${String(p)}`)).join("");

/** The transaction's key: POS idempotency is per store, terminal and transaction id. */
export const transactionKey = (t: { store: string; terminal: string; id: string }): string => `${t.store}:${t.terminal}:${t.id}`;

/** A stable hash of a payload (keys sorted), to tell a resend from different content under the same key. */
export function payloadHash(value: unknown): string {
  return createHash("sha256").update(stableJson(value)).digest("hex");
}

function stableJson(value: unknown): string {
  if (value === null || typeof value !== "object") return JSON.stringify(value) ?? "null";
  if (Array.isArray(value)) return `[${value.map(stableJson).join(",")}]`;
  const keys = Object.keys(value as object)
    .filter((k) => (value as Record<string, unknown>)[k] !== undefined)
    .sort();
  return `{${keys.map((k) => `${JSON.stringify(k)}:${stableJson((value as Record<string, unknown>)[k])}`).join(",")}}`;
}

/** A sale or return line as decoded, before its voids are netted off. */
interface ScannedItem {
  readonly line: number;
  readonly index: number;
  readonly type: "sale" | "return";
  readonly item: PosItem;
  readonly qty: number | string;
  readonly unit: string | null;
  readonly restockable: boolean;
  readonly countable: boolean;
}

/** What one pass over a transaction's lines gathers. */
interface LineScan {
  readonly byNumber: Map<number, { raw: RawLine; index: number }>;
  readonly issues: Array<Issue>;
  readonly items: Array<ScannedItem>;
  /** Line number → count voided. */
  readonly voided: Map<number, number>;
  /** Weighed lines voided whole. */
  readonly wholeVoid: Set<number>;
  readonly voids: Array<{ line: number; voids: number }>;
}

type Identifier = "barcode" | "plu" | "sku";

/** The schema's issues, one per field path. */
function structuralIssues(error: ParseResult.ParseError): Array<Issue> {
  const issues: Array<Issue> = [];
  const seen = new Set<string>();
  for (const i of ParseResult.ArrayFormatter.formatErrorSync(error)) {
    const path = pathOf(i.path);
    if (seen.has(path)) continue;
    seen.add(path);
    issues.push({ path, message: i.message === "is missing" ? "is missing" : i.message });
  }
  return issues;
}

/** A void line: it names an earlier sale or return line with the same item, and voids no more than that line has left. */
function scanVoid(scan: LineScan, raw: RawLine, index: number, ids: ReadonlyArray<Identifier>): void {
  const at = (field: string) => `lines[${index}]${field ? `.${field}` : ""}`;
  if (raw.voids === undefined) {
    scan.issues.push({ path: at("voids"), message: "is missing (the line number this void cancels)" });
    return;
  }
  if (raw.restockable !== undefined) scan.issues.push({ path: at("restockable"), message: "only a return line may say whether it is restockable" });
  if (raw.weight !== undefined) scan.issues.push({ path: at("weight"), message: "a void cancels a weighed line whole: give no weight" });
  const target = scan.byNumber.get(raw.voids);
  if (!target || target.raw.type === "void" || target.index >= index) {
    scan.issues.push({ path: at("voids"), message: `expected the number of an earlier sale or return line, got ${raw.voids}` });
    return;
  }
  for (const k of ids) if (target.raw[k] !== raw[k]) scan.issues.push({ path: at(k), message: `does not match line ${raw.voids}'s item` });
  if (target.raw.weight !== undefined) {
    if (raw.qty !== undefined) scan.issues.push({ path: at("qty"), message: "a void cancels a weighed line whole: give no qty" });
    if (scan.wholeVoid.has(raw.voids)) scan.issues.push({ path: at("voids"), message: `line ${raw.voids} is already voided` });
    scan.wholeVoid.add(raw.voids);
  } else {
    const total = target.raw.qty ?? 0;
    const already = scan.voided.get(raw.voids) ?? 0;
    const take = raw.qty ?? total - already;
    if (take <= 0 || already + take > total)
      scan.issues.push({
        path: at(raw.qty !== undefined ? "qty" : "voids"),
        message: `voids ${take} but line ${raw.voids} has only ${total - already} left`,
      });
    else scan.voided.set(raw.voids, already + take);
  }
  scan.voids.push({ line: raw.line ?? index + 1, voids: raw.voids });
}

/** A sale or return line: exactly one item identifier, and exactly one of a count or a weight. */
function scanItem(scan: LineScan, raw: RawLine & { type: "sale" | "return" }, index: number, ids: ReadonlyArray<Identifier>): void {
  const at = (field: string) => `lines[${index}]${field ? `.${field}` : ""}`;
  if (raw.voids !== undefined) scan.issues.push({ path: at("voids"), message: "only a void line cancels another line" });
  if (ids.length !== 1) scan.issues.push({ path: ids.length === 0 ? at("") : at(ids[1]!), message: "expected exactly one of barcode, plu, sku" });
  if ((raw.qty === undefined) === (raw.weight === undefined))
    scan.issues.push({ path: raw.qty === undefined ? at("") : at("weight"), message: "expected exactly one of qty (a count) or weight" });
  if (raw.type === "sale" && raw.restockable !== undefined)
    scan.issues.push({ path: at("restockable"), message: "only a return line may say whether it is restockable" });
  if (ids.length !== 1 || (raw.qty === undefined) === (raw.weight === undefined)) return;
  const system = ids[0]!;
  scan.items.push({
    line: raw.line ?? index + 1,
    index,
    type: raw.type,
    item: { system, id: raw[system]! },
    qty: raw.qty ?? (typeof raw.weight!.value === "number" ? String(raw.weight!.value) : raw.weight!.value),
    unit: raw.weight?.unit ?? null,
    restockable: raw.restockable ?? true,
    countable: raw.qty !== undefined,
  });
}

/** The decoded lines, their voids netted off. */
function nettedLines(scan: LineScan) {
  return scan.items.map((l) => {
    const v = l.countable ? (scan.voided.get(l.line) ?? 0) : scan.wholeVoid.has(l.line) ? 1 : 0;
    return {
      line: l.line,
      index: l.index,
      type: l.type,
      item: l.item,
      qty: l.countable ? (l.qty as number) - v : l.qty,
      unit: l.unit,
      restockable: l.restockable,
      voided: v,
      fullyVoided: l.countable ? (l.qty as number) - v === 0 : scan.wholeVoid.has(l.line),
    };
  });
}

/** Decodes one transaction; every issue names its field relative to the transaction. */
export function decodePosTransaction(input: unknown): Either.Either<PosTransaction, ReadonlyArray<Issue>> {
  if (typeof input !== "object" || input === null || Array.isArray(input))
    return Either.left([{ path: "", message: `expected a transaction object, got ${show(input)}` }]);
  const structural = Schema.decodeUnknownEither(PosTransactionSchema, { errors: "all" })(input);
  if (Either.isLeft(structural)) return Either.left(structuralIssues(structural.left));
  const t = structural.right;
  const scan: LineScan = { byNumber: new Map(), issues: [], items: [], voided: new Map(), wholeVoid: new Set(), voids: [] };
  // A transaction that only sells gift cards has no stock lines.
  if (t.lines.length === 0 && (t.giftCards ?? []).length === 0)
    scan.issues.push({ path: "lines", message: "expected at least one line (or gift cards sold)" });
  if (t.lines.length > MAX_LINES) scan.issues.push({ path: "lines", message: `expected at most ${MAX_LINES} lines, got ${t.lines.length}` });
  if (scan.issues.length > 0) return Either.left(scan.issues);

  t.lines.forEach((raw, index) => {
    const n = raw.line ?? index + 1;
    if (scan.byNumber.has(n)) scan.issues.push({ path: `lines[${index}].line`, message: `line number ${n} appears twice` });
    else scan.byNumber.set(n, { raw, index });
  });
  t.lines.forEach((raw, index) => {
    const ids = (["barcode", "plu", "sku"] as const).filter((k) => raw[k] !== undefined);
    if (raw.type === "void") scanVoid(scan, raw, index, ids);
    else scanItem(scan, raw as RawLine & { type: "sale" | "return" }, index, ids);
  });
  if (scan.issues.length > 0) return Either.left(scan.issues);
  const lines = nettedLines(scan);
  const money = moneyOf(t, lines);
  if (Either.isLeft(money)) return Either.left(money.left);
  return Either.right({
    store: t.store,
    terminal: t.terminal,
    id: t.id,
    occurredAt: t.occurredAt,
    lines,
    voids: scan.voids,
    currency: t.currency ?? null,
    money: money.right,
  });
}

type RawTransaction = typeof PosTransactionSchema.Type;

/** Whether a transaction carries any amount (then it must carry them all). */
const hasMoney = (t: RawTransaction): boolean =>
  t.tenders !== undefined ||
  t.giftCards !== undefined ||
  t.lines.some((l) => l.unitPrice !== undefined || l.discount !== undefined || l.tax !== undefined);

/** The fields that make a transaction's money whole: a currency, a price on every sale and return line, a card on each gift card tender. */
function moneyFieldIssues(t: RawTransaction): Array<Issue> {
  const issues: Array<Issue> = [];
  if (t.currency === undefined) issues.push({ path: "currency", message: "is missing (required when the transaction carries amounts)" });
  t.lines.forEach((raw, index) => {
    if (raw.type === "void") {
      for (const k of ["unitPrice", "discount", "tax"] as const)
        if (raw[k] !== undefined) issues.push({ path: `lines[${index}].${k}`, message: "a void line carries no amount (it cancels its line's)" });
    } else if (raw.unitPrice === undefined)
      issues.push({ path: `lines[${index}].unitPrice`, message: "is missing (every sale and return line of a transaction with amounts needs one)" });
  });
  (t.tenders ?? []).forEach((tender, i) => {
    if (tender.type === "gift_card" && tender.giftCardId === undefined)
      issues.push({ path: `tenders[${i}].giftCardId`, message: "is missing (a gift_card tender names the card it redeems)" });
    if (tender.type !== "gift_card" && tender.giftCardId !== undefined)
      issues.push({ path: `tenders[${i}].giftCardId`, message: "only a gift_card tender names a gift card" });
  });
  const seen = new Set<string>();
  (t.giftCards ?? []).forEach((g, i) => {
    if (seen.has(g.id)) issues.push({ path: `giftCards[${i}].id`, message: `gift card ${JSON.stringify(g.id)} is sold twice in this transaction` });
    seen.add(g.id);
  });
  return issues;
}

/**
 * A line's amount before discount: count × unit price, or weight × price per weight unit rounded half up
 * to a whole minor unit (a scale's label rounds alike). A line voided whole has none.
 */
export function grossAmount(line: Pick<PosLine, "qty" | "fullyVoided">, unitPrice: number): bigint {
  if (line.fullyVoided) return 0n;
  if (typeof line.qty === "number") return BigInt(line.qty) * BigInt(unitPrice);
  const [whole, frac = ""] = line.qty.split(".");
  const scale = 10n ** BigInt(frac.length);
  return (BigInt(`${whole}${frac}`) * BigInt(unitPrice) * 2n + scale) / (2n * scale);
}

/** The money of a transaction whose lines decoded: null without amounts, else checked whole (tenders cover the total). */
function moneyOf(t: RawTransaction, lines: ReadonlyArray<PosLine>): Either.Either<PosMoney | null, Array<Issue>> {
  if (!hasMoney(t)) return Either.right(null);
  const issues = moneyFieldIssues(t);
  if (issues.length > 0) return Either.left(issues);
  const out: Array<PosMoneyLine> = [];
  const sums = { sale: 0n, return: 0n };
  for (const l of lines) {
    const raw = t.lines[l.index]!;
    const gross = grossAmount(l, raw.unitPrice!);
    const discount = BigInt(raw.discount ?? 0);
    const tax = BigInt(raw.tax ?? 0);
    if (discount > gross)
      issues.push({ path: `lines[${l.index}].discount`, message: `${discount} exceeds the line's amount ${gross} (qty × unitPrice, after voids)` });
    if (l.fullyVoided && tax > 0n) issues.push({ path: `lines[${l.index}].tax`, message: "the line is voided whole: it carries no tax" });
    out.push({ line: l.line, type: l.type, net: gross - discount, tax });
    sums[l.type] += gross - discount + tax;
  }
  const cards = (t.giftCards ?? []).reduce((n, g) => n + BigInt(g.amount), 0n);
  const tendered = (t.tenders ?? []).reduce((n, x) => n + BigInt(x.amount), 0n);
  const total = sums.sale - sums.return + cards;
  if (issues.length === 0 && tendered !== total)
    issues.push({
      path: "tenders",
      message:
        `the tenders come to ${tendered} but the transaction to ${total} (Σ qty × unitPrice − discount + tax: sales ${sums.sale}, ` +
        `returns −${sums.return}; gift cards sold ${cards}); a refund is a negative tender`,
    });
  if (issues.length > 0) return Either.left(issues);
  return Either.right({
    currency: t.currency!,
    lines: out,
    tenders: (t.tenders ?? []).map((x) => ({ type: x.type, amount: BigInt(x.amount), giftCardId: x.giftCardId ?? null })),
    giftCards: (t.giftCards ?? []).map((g) => ({ id: g.id, amount: BigInt(g.amount) })),
  });
}
