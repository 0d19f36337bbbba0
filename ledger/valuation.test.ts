import { describe, expect, it } from "vitest";
import { noValue, roundDiv, valueLeg, type LocationValue } from "./valuation.ts";

/** Runs legs [delta, cost|null, receipt] from nothing; returns each leg's [value, unitCost, flag] and the end. */
function run(legs: ReadonlyArray<readonly [number, number | null, boolean]>) {
  let onHand = 0n;
  let at: LocationValue = noValue;
  const out: Array<[bigint, bigint, string | null]> = [];
  for (const [delta, cost, receipt] of legs) {
    const v = valueLeg(onHand, at, BigInt(delta), cost === null ? null : BigInt(cost), receipt);
    out.push([v.value, v.unitCost, v.flag]);
    onHand += BigInt(delta);
    at = v.after;
  }
  return { out, onHand, at };
}

describe("moving weighted average valuation", () => {
  it("rounds halves away from zero", () => {
    expect([roundDiv(5n, 2n), roundDiv(-5n, 2n), roundDiv(7n, 3n), roundDiv(8n, 3n)]).toEqual([3n, -3n, 2n, 3n]);
  });

  it("keeps the location's value exact and drains it to 0 with the last unit", () => {
    const { out, onHand, at } = run([
      [3, 100, true],
      [3, 101, true],
      [-1, null, false], // 603 × 1/6 = 100.5 → 101 (the average, 100.5, rounds half away)
      [-1, null, false], // 502 × 1/5 = 100.4 → 100
      [-4, null, false], // what is left
    ]);
    expect(out.map((o) => o[0])).toEqual([300n, 303n, -101n, -100n, -402n]);
    expect(onHand).toBe(0n);
    expect(at.value).toBe(0n);
  });

  it("values a receipt without cost at the average and flags it; a sale beyond stock at the last cost, flagged", () => {
    const { out, at } = run([
      [2, 50, true],
      [2, null, true],
      [-5, null, false],
      [1, null, false],
    ]);
    expect(out).toEqual([
      [100n, 50n, null],
      [100n, 50n, "no_cost"],
      [-250n, 50n, "negative_stock"],
      [50n, 50n, null], // a return back to 0 takes back exactly what the oversold unit was valued at
    ]);
    expect(at.value).toBe(0n);
  });

  it("flags movements of a SKU whose cost was never known, valued at 0", () => {
    expect(run([[-2, null, false]]).out).toEqual([[0n, 0n, "no_cost"]]);
    expect(run([[2, null, false]]).out).toEqual([[0n, 0n, "no_cost"]]);
  });
});
