/**
 * The posting rules of a POS transaction's money (the inventory side, COGS against inventory, is posted
 * from the ledger's entries by the GL poster, not here):
 *
 * - a sale line: Cr sales revenue (quantity × unit price − discount; one line per sale line, with its
 *   SKU and quantity) and Cr sales tax payable (its tax);
 * - a return line: the same, debited (revenue and tax are reversed);
 * - a gift card sold: Cr gift card liability;
 * - a cash or card tender: Dr cash and card clearing (a refund, a negative tender: Cr);
 * - a gift card tender: Dr gift card liability (the redemption releases it; a refund onto a card: Cr).
 *
 * The ingest has checked that the tenders cover the rest, so every journal balances.
 */
import type { MoneyJournal, MoneyJournalLine } from "../../ledger/index.ts";
import { MONEY_JOURNAL_PREFIX } from "../../ledger/index.ts";
import type { FinanceConfig } from "../platform/index.ts";
import { transactionKey, type PosTransaction } from "./posTransaction.ts";

/** What a revenue line names: the SKU the line's item maps to and its quantity (base units when it is one stock SKU). */
export interface RevenueItem {
  readonly sku: string | null;
  readonly qty: number | null;
}

/** A line on the debit side when `amount` is positive, else on the credit side (for the amount's size); none for 0. */
function signed(account: string, amount: bigint, memo: string, item: RevenueItem = { sku: null, qty: null }): Array<MoneyJournalLine> {
  if (amount === 0n) return [];
  return [{ account, debit: amount > 0n ? amount : 0n, credit: amount < 0n ? -amount : 0n, sku: item.sku, qty: item.qty, unit: null, memo }];
}

/** The movement a money journal records: sales, returns, or both in one transaction (an exchange). */
function movementOf(t: PosTransaction): string {
  const types = new Set(t.money!.lines.map((l) => l.type));
  return types.has("return") ? (types.has("sale") ? "pos_exchange" : "pos_return") : "pos_sale";
}

/** The money journal of a transaction with amounts (null without, or when every amount is 0). */
export function moneyJournal(t: PosTransaction, items: ReadonlyMap<number, RevenueItem>, finance: FinanceConfig): MoneyJournal | null {
  const money = t.money;
  if (!money) return null;
  const a = finance.accounts;
  const lines: Array<MoneyJournalLine> = [];
  for (const tender of money.tenders)
    lines.push(
      ...(tender.type === "gift_card"
        ? signed(a.giftCardLiability, tender.amount, `gift card ${tender.giftCardId} ${tender.amount > 0n ? "redeemed" : "refunded"}`)
        : signed(a.tenderClearing, tender.amount, `${tender.type} ${tender.amount > 0n ? "tendered" : "refunded"}`)),
    );
  let taxOnSales = 0n;
  let taxOnReturns = 0n;
  for (const l of money.lines) {
    const sign = l.type === "sale" ? -1n : 1n;
    lines.push(...signed(a.salesRevenue, sign * l.net, `line ${l.line} ${l.type}`, items.get(l.line)));
    if (l.type === "sale") taxOnSales += l.tax;
    else taxOnReturns += l.tax;
  }
  lines.push(...signed(a.salesTaxPayable, -taxOnSales, "tax on sales"), ...signed(a.salesTaxPayable, taxOnReturns, "tax on returns"));
  for (const g of money.giftCards) lines.push(...signed(a.giftCardLiability, -g.amount, `gift card ${g.id} sold`));
  if (lines.length === 0) return null;
  return {
    journalId: `${MONEY_JOURNAL_PREFIX}${transactionKey(t)}`,
    occurredAt: t.occurredAt,
    timeZone: finance.timeZone,
    currency: money.currency,
    costCenter: finance.costCenters[t.store] ?? t.store,
    movement: movementOf(t),
    sourceRef: transactionKey(t),
    lines,
  };
}
