/**
 * The demo stores' till: what the simulated POS transactions carry as money, so `tally dev` produces
 * a journal with revenue, tax and tenders. Amounts are integers in minor units (cents of the demo's
 * currency): a small price table for the simulated catalog, loose bananas by the kilo, two tax rates,
 * now and then a discount; paid by card or cash, now and then a gift card sold and later redeemed;
 * returns refunded to card or cash.
 */

/** Net prices (before tax) the simulated catalog's items cycle through. */
const PRICE_TABLE = [99, 149, 199, 249, 299, 399, 499, 649, 799, 999, 1299, 1999, 2999, 4999] as const;
/** Loose bananas (PLU 4011), per kg. */
export const BANANA_PRICE_PER_KG = 199;
/** Gift card values sold at the till. */
const GIFT_CARD_VALUES = [2500, 5000] as const;

/** The net unit price of simulated item `i` (0-based, as `simItem`). */
export const simPrice = (i: number): number => PRICE_TABLE[(i * 7) % PRICE_TABLE.length]!;
/**
 * What the ERP paid per unit of simulated item `i` on a goods receipt: about 55% of its net price,
 * `swing` percentage points up or down (receipts at different costs move the average), never below 1.
 */
export const simCost = (i: number, swing = 0): number => Math.max(1, Math.floor((simPrice(i) * (55 + swing) + 50) / 100));
/** Its sales tax rate in percent: every third item is food (7%), the rest 19%. */
const taxRate = (i: number): number => (i % 3 === 0 ? 7 : 19);
/** `net` × `percent`/100, rounded half up to a whole minor unit. */
const taxOn = (net: number, percent: number): number => Math.floor((net * percent + 50) / 100);

/** What the till adds to a line (the POS line fields of its money). */
export interface LineMoney {
  readonly unitPrice: number;
  readonly discount?: number;
  readonly tax: number;
}

export type Tender =
  | { readonly type: "cash" | "card"; readonly amount: number }
  | { readonly type: "gift_card"; readonly amount: number; readonly giftCardId: string };

/** The money fields of one transaction. */
export interface TransactionMoney {
  readonly tenders: ReadonlyArray<Tender>;
  readonly giftCards?: ReadonlyArray<{ readonly id: string; readonly amount: number }>;
}

export class DemoTill {
  /** Gift cards sold and what is left on each. */
  readonly #cards = new Map<string, number>();
  #sold = 0;

  constructor(
    /** Makes gift card ids unique to this run. */
    readonly run: string,
    readonly random: () => number = Math.random,
  ) {}

  /** A sale line of `qty` × item `i`: its price and tax, and now and then 10% off. */
  itemLine(i: number, qty: number): LineMoney {
    const unitPrice = simPrice(i);
    const discount = this.random() < 0.05 ? Math.floor((qty * unitPrice) / 10) : 0;
    return { unitPrice, ...(discount > 0 ? { discount } : {}), tax: taxOn(qty * unitPrice - discount, taxRate(i)) };
  }

  /** A return line of `qty` × item `i`: refunded at its price, with its tax. */
  returnLine(i: number, qty: number): LineMoney {
    const unitPrice = simPrice(i);
    return { unitPrice, tax: taxOn(qty * unitPrice, taxRate(i)) };
  }

  /** Loose bananas weighed at `grams`: the line's amount is rounded half up to a cent, as Tally computes it. */
  bananaLine(grams: number): LineMoney {
    const amount = Math.floor((grams * BANANA_PRICE_PER_KG * 2 + 1000) / 2000);
    return { unitPrice: BANANA_PRICE_PER_KG, tax: taxOn(amount, 7) };
  }

  /** How a sale of `total` (lines with tax) is paid: now and then a gift card is sold with it, or one is redeemed. */
  pay(total: number): TransactionMoney {
    const giftCards = this.random() < 0.05 ? [this.#sellCard()] : [];
    let due = total + giftCards.reduce((n, g) => n + g.amount, 0);
    const tenders: Array<Tender> = [];
    const card = this.random() < 0.3 ? [...this.#cards].find(([, left]) => left > 0) : undefined;
    if (card && due > 0) {
      const use = Math.min(card[1], due);
      this.#cards.set(card[0], card[1] - use);
      if (card[1] === use) this.#cards.delete(card[0]);
      tenders.push({ type: "gift_card", amount: use, giftCardId: card[0] });
      due -= use;
    }
    if (due > 0) tenders.push({ type: this.random() < 0.4 ? "cash" : "card", amount: due });
    for (const g of giftCards) this.#cards.set(g.id, g.amount);
    return { tenders, ...(giftCards.length > 0 ? { giftCards } : {}) };
  }

  /** How a return of `total` is refunded: to card or in cash (a negative tender). */
  refund(total: number): TransactionMoney {
    return { tenders: total > 0 ? [{ type: this.random() < 0.5 ? "cash" : "card", amount: -total }] : [] };
  }

  #sellCard(): { id: string; amount: number } {
    return { id: `GC-${this.run}-${++this.#sold}`, amount: GIFT_CARD_VALUES[this.#sold % GIFT_CARD_VALUES.length]! };
  }
}

/** What a line's money comes to: quantity (or grams of bananas) × unit price − discount + tax. */
export function lineTotal(m: LineMoney, qty: number, grams?: number): number {
  const gross = grams !== undefined ? Math.floor((grams * m.unitPrice * 2 + 1000) / 2000) : qty * m.unitPrice;
  return gross - (m.discount ?? 0) + m.tax;
}
