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
});

const PosTransactionSchema = Schema.Struct({
  store: StoreId,
  terminal: PosId("terminal id"),
  id: PosId("transaction id"),
  occurredAt: OccurredAt,
  lines: Schema.Array(PosLineSchema),
});

type RawLine = typeof PosLineSchema.Type;

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
  if (t.lines.length === 0) scan.issues.push({ path: "lines", message: "expected at least one line" });
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
  return Either.right({ store: t.store, terminal: t.terminal, id: t.id, occurredAt: t.occurredAt, lines: nettedLines(scan), voids: scan.voids });
}
