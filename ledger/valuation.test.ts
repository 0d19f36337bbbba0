import { describe, expect, it } from "vitest";
import { noValue, roundDiv, valueLeg, type LegOptions, type LocationValue, type ValuationMethod } from "./valuation.ts";

/** Runs legs [delta, cost|null, receipt, amount?] from nothing; returns each leg's [value, unitCost, flag] and the end. */
function run(legs: ReadonlyArray<readonly [number, number | null, boolean, number?]>, method: ValuationMethod = "moving_average") {
  let onHand = 0n;
  let at: LocationValue = noValue;
  const out: Array<[bigint, bigint, string | null]> = [];
  for (const [delta, cost, receipt, amount] of legs) {
    const opts: LegOptions = { method, ...(amount === undefined ? {} : { amount: BigInt(amount) }) };
    const v = valueLeg(onHand, at, BigInt(delta), cost === null ? null : BigInt(cost), receipt, opts);
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

describe("FIFO valuation", () => {
  const layers = (at: LocationValue) => (at.layers ?? []).map((l) => [Number(l.qty), Number(l.value)]);

  it("takes the oldest layers first: each sale's value is the exact sum of what it took, its unit cost their rounded average", () => {
    const { out, onHand, at } = run(
      [
        [10, 100, true], // layer 10 @ 1000
        [5, 130, true], // layer 5 @ 650
        [-12, null, false], // all of the first (1000) + 2 of the second (2 × 650 / 5 = 260): 1260, 1260 / 12 = 105
        [4, 101, true], // layers 3 @ 390, 4 @ 404
        [-5, null, false], // 390 + 2 × 404 / 4 = 202: 592, 592 / 5 = 118.4 → 118
        [-4, null, false], // the last 2 (202) + 2 beyond stock at the last known cost, 101: 404, flagged
        [3, 120, true], // fills the hole: 360; the one unit left holds the location's value, -202 + 360 = 158
        [-1, null, false], // 158, back to 0
      ],
      "fifo",
    );
    expect(out).toEqual([
      [1000n, 100n, null],
      [650n, 130n, null],
      [-1260n, 105n, null],
      [404n, 101n, null],
      [-592n, 118n, null],
      [-404n, 101n, "negative_stock"],
      [360n, 120n, null],
      [-158n, 158n, null],
    ]);
    expect([onHand, at.value, layers(at)]).toEqual([0n, 0n, []]);
  });

  it("keeps the layers a partial sale leaves, and gives a layer's last unit what is left of it", () => {
    const first = run(
      [
        [4, 100, true],
        [6, 130, true],
        [-5, null, false],
      ],
      "fifo",
    );
    expect(layers(first.at)).toEqual([[5, 650]]);
    expect(first.at.value).toBe(650n);
    // A layer of a given value (a transfer's units: 100 for 3) is split by rounding, the last unit taking the rest.
    const { out, at } = run(
      [
        [3, null, false, 100],
        [-1, null, false],
        [-1, null, false],
        [-1, null, false],
      ],
      "fifo",
    );
    expect(out.map((o) => o[0])).toEqual([100n, -33n, -34n, -33n]);
    expect(at.value).toBe(0n);
  });

  it("values a receipt without cost at the current average, as a new layer, flagged", () => {
    const { out, at } = run(
      [
        [2, 100, true],
        [2, 200, true],
        [1, null, true], // 1 × 600 / 4 = 150
        [-5, null, false],
      ],
      "fifo",
    );
    expect(out).toEqual([
      [200n, 100n, null],
      [400n, 200n, null],
      [150n, 150n, "no_cost"],
      [-750n, 150n, null],
    ]);
    expect(at.value).toBe(0n);
  });

  it("takes a given value exactly under moving average too (a transfer arriving at its origin's cost)", () => {
    const { out, at } = run([
      [2, 100, true],
      [3, null, false, 400], // 200 + 400 = 600 for 5: average 120
      [-1, null, false],
    ]);
    expect(out).toEqual([
      [200n, 100n, null],
      [400n, 133n, null],
      [-120n, 120n, null],
    ]);
    expect(at.value).toBe(480n);
  });
});
