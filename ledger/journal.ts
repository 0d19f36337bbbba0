/**
 * The inventory side of the GL journal: pure posting rules from one command's ledger legs to one
 * balanced journal of debit and credit lines in integer minor units. No I/O: the poster
 * (journalPoster.ts) reads the legs and writes what this returns.
 *
 * Every valued stock leg posts its own value to its bucket's account (on_hand → inventory, damaged
 * → damaged, in_transit → inTransit) at its location's cost center, so each account's balance per
 * cost center is the value of that bucket there. The other side depends on the movement:
 *
 * - stock that enters or leaves the company (receipt, sale, shipment, return, count, adjustment)
 *   posts against the movement's contra account (goods received not invoiced, cost of goods sold,
 *   shrinkage), on the leg's cost center;
 * - stock that moves inside it (a transfer; any command whose legs take from one stock bucket and
 *   put into another) posts leg against leg: a leg without a value takes the other side (a transfer
 *   out whose in-transit leg carries no value still posts Dr in transit / Cr inventory).
 *
 * `reserved` legs (holds) post nothing; a leg whose value is null (before valuation) or 0 posts no
 * line of its own; a command with no line posts no journal.
 */
import type { FinanceAccounts, FinanceConfig } from "../src/platform/index.ts";

/** One ledger entry as the poster reads it. */
export interface JournalLeg {
  readonly commandId: string;
  readonly leg: number;
  readonly sku: string;
  readonly location: string;
  readonly bucket: string;
  /** Signed units, as in the ledger. */
  readonly delta: bigint;
  readonly movement: string;
  /** Signed minor units; null for an entry from before valuation (or a bucket not valued yet). */
  readonly value: bigint | null;
  /** The SKU's base unit (the item master's; "each" when none is known). */
  readonly unit: string;
  readonly sourceSystem: string;
  readonly sourceRef: string;
  readonly occurredAt: Date;
}

export interface JournalLine {
  /** 1, 2, … within the journal. */
  readonly line: number;
  readonly account: string;
  readonly costCenter: string;
  /** Exactly one of debit and credit is positive. */
  readonly debit: bigint;
  readonly credit: bigint;
  readonly sku: string;
  /** The leg's units, signed as the leg. */
  readonly qty: bigint;
  readonly unit: string;
  /** The ledger entry behind the line: ledger_entries (command_id, leg). */
  readonly leg: number;
  readonly memo: string | null;
}

export type JournalKind = "inventory" | "reconciliation";

export interface Journal {
  /** The command id: one inventory journal per command. */
  readonly journalId: string;
  readonly kind: JournalKind;
  /** YYYY-MM-DD: the date of the movement's occurred_at in the books' time zone. */
  readonly businessDate: string;
  readonly currency: string;
  readonly commandId: string;
  readonly movement: string;
  readonly sourceSystem: string;
  readonly sourceRef: string;
  readonly lines: ReadonlyArray<JournalLine>;
}

type AccountName = keyof FinanceAccounts;

/** The account each valued stock bucket posts to. */
export const BUCKET_ACCOUNT: Readonly<Record<string, AccountName>> = {
  on_hand: "inventory",
  damaged: "damaged",
  in_transit: "inTransit",
};

/**
 * The contra account of each movement that brings stock in or takes it out (every movement of
 * actors/decider.ts that moves on_hand or damaged). A movement not listed here and not internal
 * (a new one) posts against shrinkage, as an unexplained gain or loss would.
 */
export const CONTRA_ACCOUNT: Readonly<Record<string, AccountName>> = {
  receive: "goodsReceivedNotInvoiced",
  sell: "costOfGoodsSold",
  fulfill: "costOfGoodsSold",
  fulfill_unreserved: "costOfGoodsSold",
  return: "costOfGoodsSold",
  return_damaged: "costOfGoodsSold",
  adjust: "shrinkage",
  count_variance: "shrinkage",
};

/** Movements whose legs move stock inside the company, one leg against the other. */
export const INTERNAL_MOVEMENTS: ReadonlySet<string> = new Set(["transfer_out", "transfer_in"]);

/** The cost center of a location: the configured one, else the location id. */
export const costCenterOf = (finance: Pick<FinanceConfig, "costCenters">, location: string): string => finance.costCenters[location] ?? location;

/**
 * The calendar date (YYYY-MM-DD) of `at` in `timeZone` (IANA): the one business-date function (journals,
 * POS money journals, "today" of the GL export). It must agree with Postgres' `(at at time zone tz)::date`,
 * which SQL over the journals may use; test/glJournal.test.ts compares the two around midnight and DST changes.
 */
export function businessDate(at: Date, timeZone: string): string {
  const parts = new Intl.DateTimeFormat("en-US", { timeZone, year: "numeric", month: "2-digit", day: "2-digit" }).formatToParts(at);
  const part = (type: string) => parts.find((p) => p.type === type)!.value;
  return `${part("year")}-${part("month")}-${part("day")}`;
}

/**
 * Whether a count was taken by `tally reconcile --apply` (its journal is of kind `reconciliation`).
 * The ledger stores no count reason; reconciliation's counts carry the source reference
 * `reconciliation:<position>` (cdc/reconcile.ts `reconciliationCommands`).
 */
export const isReconciliation = (movement: string, sourceRef: string): boolean =>
  movement === "count_variance" && sourceRef.startsWith("reconciliation:");

interface Side {
  readonly account: string;
  readonly costCenter: string;
  /** Positive: a debit; negative: a credit. */
  readonly amount: bigint;
  readonly of: JournalLeg;
  readonly memo: string | null;
}

const valued = (l: JournalLeg): boolean => l.value !== null && l.value !== 0n;

/** Each valued leg on its bucket's account, and the movement's contra account opposite it. */
function externalSides(legs: ReadonlyArray<JournalLeg>, finance: FinanceConfig): Array<Side> {
  const sides: Array<Side> = [];
  for (const l of legs.filter(valued)) {
    const contra = CONTRA_ACCOUNT[l.movement];
    const cc = costCenterOf(finance, l.location);
    const own: Side = { account: finance.accounts[BUCKET_ACCOUNT[l.bucket]!], costCenter: cc, amount: l.value!, of: l, memo: null };
    const other: Side = {
      account: finance.accounts[contra ?? "shrinkage"],
      costCenter: cc,
      amount: -l.value!,
      of: l,
      memo: contra === undefined ? `no posting rule for movement ${l.movement}: posted as shrinkage` : null,
    };
    sides.push(...(l.value! > 0n ? [own, other] : [other, own]));
  }
  return sides;
}

/**
 * Each valued leg on its bucket's account; what they leave unbalanced goes to the first leg without
 * a value (its bucket's account and cost center), or, when every leg has one, to shrinkage at the
 * first leg's cost center as a valuation difference.
 */
function internalSides(legs: ReadonlyArray<JournalLeg>, finance: FinanceConfig): Array<Side> {
  const sides: Array<Side> = legs.filter(valued).map((l) => ({
    account: finance.accounts[BUCKET_ACCOUNT[l.bucket]!],
    costCenter: costCenterOf(finance, l.location),
    amount: l.value!,
    of: l,
    memo: null,
  }));
  const residual = sides.reduce((sum, s) => sum + s.amount, 0n);
  if (sides.length === 0 || residual === 0n) return sides;
  const open = legs.find((l) => !valued(l));
  const at = open ?? legs[0]!;
  const account = open ? finance.accounts[BUCKET_ACCOUNT[open.bucket]!] : finance.accounts.shrinkage;
  sides.push({ account, costCenter: costCenterOf(finance, at.location), amount: -residual, of: at, memo: open ? null : "valuation difference" });
  return sides;
}

/** Debits first, then credits, each in leg order. */
const toLines = (sides: ReadonlyArray<Side>): Array<JournalLine> =>
  [...sides.filter((s) => s.amount > 0n), ...sides.filter((s) => s.amount < 0n)].map((s, i) => ({
    line: i + 1,
    account: s.account,
    costCenter: s.costCenter,
    debit: s.amount > 0n ? s.amount : 0n,
    credit: s.amount < 0n ? -s.amount : 0n,
    sku: s.of.sku,
    qty: s.of.delta,
    unit: s.of.unit,
    leg: s.of.leg,
    memo: s.memo,
  }));

/**
 * The inventory journal of one command from all its legs (in leg order), or null when nothing
 * posts. Throws when the legs are not one command's.
 */
export function journalOf(legs: ReadonlyArray<JournalLeg>, finance: FinanceConfig): Journal | null {
  const first = legs[0];
  if (first === undefined) return null;
  if (legs.some((l) => l.commandId !== first.commandId)) throw new Error(`journalOf: legs of more than one command (${first.commandId}, …)`);
  const stock = [...legs].filter((l) => BUCKET_ACCOUNT[l.bucket] !== undefined).sort((a, b) => a.leg - b.leg);
  const internal = stock.some((l) => INTERNAL_MOVEMENTS.has(l.movement)) || (stock.some((l) => l.delta > 0n) && stock.some((l) => l.delta < 0n));
  const lines = toLines(internal ? internalSides(stock, finance) : externalSides(stock, finance));
  if (lines.length === 0) return null;
  const movement = (stock[0] ?? first).movement;
  return {
    journalId: first.commandId,
    kind: isReconciliation(movement, first.sourceRef) ? "reconciliation" : "inventory",
    businessDate: businessDate(first.occurredAt, finance.timeZone),
    currency: finance.currency,
    commandId: first.commandId,
    movement,
    sourceSystem: first.sourceSystem,
    sourceRef: first.sourceRef,
    lines,
  };
}

/** The journals of many commands' legs (grouped by command, in the order each command first appears). */
export function journalsOf(legs: ReadonlyArray<JournalLeg>, finance: FinanceConfig): Array<Journal> {
  const byCommand = new Map<string, Array<JournalLeg>>();
  for (const l of legs) {
    const list = byCommand.get(l.commandId);
    if (list) list.push(l);
    else byCommand.set(l.commandId, [l]);
  }
  return [...byCommand.values()].map((l) => journalOf(l, finance)).filter((j): j is Journal => j !== null);
}
