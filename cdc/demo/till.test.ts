import { Either } from "effect";
import { describe, expect, it } from "vitest";
import { decodePosTransaction } from "../../src/ingest/posTransaction.ts";
import { DemoTill, lineTotal, simPrice } from "./till.ts";

/** A deterministic random source. */
function seeded(seed: number): () => number {
  let x = seed;
  return () => {
    x = (x * 1103515245 + 12345) % 2 ** 31;
    return x / 2 ** 31;
  };
}

const txn = (id: number, lines: Array<Record<string, unknown>>, money: object) => ({
  store: "S01",
  terminal: "T1",
  id: `t${id}`,
  occurredAt: "2026-11-26T10:00:00Z",
  currency: "EUR",
  lines,
  ...money,
});

describe("the demo till", () => {
  it("prices every simulated item in whole cents", () => {
    for (let i = 0; i < 100; i++) expect(Number.isSafeInteger(simPrice(i)) && simPrice(i) > 0).toBe(true);
  });

  it("makes sales and returns whose tenders Tally accepts, with gift cards sold and later redeemed", () => {
    const random = seeded(7);
    const till = new DemoTill("test", random);
    const tenders = new Set<string>();
    let sold = 0;
    for (let n = 0; n < 2000; n++) {
      const lines: Array<Record<string, unknown>> = [];
      let total = 0;
      const refund = n % 10 === 9;
      for (let k = 0; k < 1 + (n % 3); k++) {
        const i = Math.floor(random() * 500);
        const qty = 1 + (n % 2);
        const money = refund ? till.returnLine(i, qty) : till.itemLine(i, qty);
        total += lineTotal(money, qty);
        lines.push({ type: refund ? "return" : "sale", sku: `SKU-S${i}`, qty, ...money });
      }
      if (!refund && n % 7 === 0) {
        const grams = 300 + (n % 2200);
        const money = till.bananaLine(grams);
        total += lineTotal(money, 0, grams);
        lines.push({ type: "sale", plu: "4011", weight: { value: (grams / 1000).toFixed(3), unit: "kg" }, ...money });
      }
      const money = refund ? till.refund(total) : till.pay(total);
      sold += money.giftCards?.length ?? 0;
      for (const t of money.tenders) tenders.add(`${t.type}${t.amount < 0 ? " refund" : ""}`);
      const decoded = decodePosTransaction(txn(n, lines, money));
      expect(Either.isRight(decoded), JSON.stringify(Either.isLeft(decoded) ? decoded.left : null)).toBe(true);
    }
    expect(sold).toBeGreaterThan(10);
    expect([...tenders].sort()).toEqual(["card", "card refund", "cash", "cash refund", "gift_card"]);
  });
});
