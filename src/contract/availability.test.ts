import { describe, expect, it } from "vitest";
import { applyWithheld, bundleAvailable, locationAvailable, withheldBy } from "./availability.ts";

describe("available = on hand − reserved − safety stock (the one definition)", () => {
  it("subtracts what is held and what is kept back; may be negative", () => {
    expect(locationAvailable({ onHand: 10n, reserved: 3n, safetyStock: 2 })).toBe(5n);
    expect(locationAvailable({ onHand: 1n, reserved: 3n, safetyStock: 2 })).toBe(-4n);
    expect(locationAvailable({ onHand: 0n, reserved: 0n, safetyStock: 0n })).toBe(0n);
  });
  it("is exact past 2^53", () => {
    expect(locationAvailable({ onHand: 2n ** 60n, reserved: 1n, safetyStock: 1 })).toBe(2n ** 60n - 2n);
  });
});

describe("a bundle's available = min over components of ⌊component available / qty per bundle⌋", () => {
  it("is limited by the scarcest component, rounding down", () => {
    expect(
      bundleAvailable([
        { qty: 2, available: 9n },
        { qty: 1, available: 7n },
      ]),
    ).toBe(4n);
    expect(
      bundleAvailable([
        { qty: 2, available: 9n },
        { qty: 3, available: 7n },
      ]),
    ).toBe(2n);
    expect(bundleAvailable([{ qty: 5, available: 4n }])).toBe(0n);
  });
  it("is 0 when any component is out, oversold or unknown, and never negative", () => {
    expect(
      bundleAvailable([
        { qty: 1, available: 10n },
        { qty: 1, available: 0n },
      ]),
    ).toBe(0n);
    expect(
      bundleAvailable([
        { qty: 1, available: 10n },
        { qty: 1, available: -3n },
      ]),
    ).toBe(0n);
    expect(
      bundleAvailable([
        { qty: 1, available: 10n },
        { qty: 2, available: null },
      ]),
    ).toBe(0n);
  });
  it("is 0 without components or with a quantity that is not a positive whole number", () => {
    expect(bundleAvailable([])).toBe(0n);
    expect(bundleAvailable([{ qty: 0, available: 5n }])).toBe(0n);
    expect(bundleAvailable([{ qty: -1, available: 5n }])).toBe(0n);
    expect(bundleAvailable([{ qty: 1.5, available: 5n }])).toBe(0n);
  });
  it("is exact past 2^53", () => {
    expect(bundleAvailable([{ qty: 3n, available: 2n ** 60n }])).toBe(2n ** 60n / 3n);
  });
});

describe("the status rule", () => {
  it("withholds a blocked item everywhere and a discontinued one unless the channel sells remaining stock", () => {
    expect(withheldBy("active", { sellsDiscontinued: false })).toBeNull();
    expect(withheldBy("blocked", { sellsDiscontinued: true })).toBe("blocked");
    expect(withheldBy("discontinued", { sellsDiscontinued: false })).toBe("discontinued");
    expect(withheldBy("discontinued", { sellsDiscontinued: true })).toBeNull();
  });

  it("shows 0 with the reason and the stock's figure, idempotently, and the stock's figure again once not withheld", () => {
    const figure = { sku: "A", available: 7, status: "low", seq: 3 };
    const withheld = applyWithheld(figure, "blocked");
    expect(withheld).toEqual({ sku: "A", available: 0, status: "out", reason: "blocked", stock: { available: 7, status: "low" }, seq: 3 });
    expect(applyWithheld(withheld, "discontinued")).toEqual({ ...withheld, reason: "discontinued" });
    expect(applyWithheld(withheld, null)).toEqual(figure);
    expect(applyWithheld(figure, null)).toEqual(figure);
  });
});
