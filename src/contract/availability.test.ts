import { describe, expect, it } from "vitest";
import { locationAvailable } from "./availability.ts";

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
