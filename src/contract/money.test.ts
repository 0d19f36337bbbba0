import { describe, expect, it } from "vitest";
import { fromMinorUnits, minorDigits, toMinorUnits } from "./money.ts";

describe("money", () => {
  it("knows each currency's minor-unit digits", () => {
    expect([minorDigits("EUR"), minorDigits("JPY"), minorDigits("KWD"), minorDigits("USD")]).toEqual([2, 0, 3, 2]);
  });
  it("converts decimal amounts to minor units exactly, rounding half away from zero", () => {
    expect(toMinorUnits("12.3450", "EUR")).toBe(1235n);
    expect(toMinorUnits("12.3449", "EUR")).toBe(1234n);
    expect(toMinorUnits("-12.345", "EUR")).toBe(-1235n);
    expect(toMinorUnits("99999999999999999.99", "EUR")).toBe(9999999999999999999n);
    expect(toMinorUnits("150.0000", "JPY")).toBe(150n);
    expect(toMinorUnits("1.2345", "KWD")).toBe(1235n);
    expect(toMinorUnits("7", "EUR")).toBe(700n);
    expect(() => toMinorUnits("1,5", "EUR")).toThrow(RangeError);
    expect(() => toMinorUnits("1e3", "EUR")).toThrow(RangeError);
  });
  it("converts minor units back to the decimal an ERP stores", () => {
    expect(fromMinorUnits(1235n, "EUR")).toBe("12.35");
    expect(fromMinorUnits(5, "EUR")).toBe("0.05");
    expect(fromMinorUnits(-5, "EUR")).toBe("-0.05");
    expect(fromMinorUnits(150, "JPY")).toBe("150");
    expect(fromMinorUnits(1235n, "KWD")).toBe("1.235");
    for (const c of ["EUR", "JPY", "KWD"]) for (const v of [0n, 1n, -1n, 123456789n]) expect(toMinorUnits(fromMinorUnits(v, c), c)).toBe(v);
  });
});
