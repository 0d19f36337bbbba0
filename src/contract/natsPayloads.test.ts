import { Schema } from "effect";
import { describe, expect, it } from "vitest";
import type { Availability, AvailabilityJson } from "./availability.ts";
import { AvailabilityValue, quantityValue } from "./natsPayloads.ts";

describe("the availability value as it travels", () => {
  const view = {
    channel: "web",
    sku: "AUD.IT.1",
    available: 2n ** 60n,
    onHand: -(2n ** 53n),
    reserved: 3n,
    status: "in_stock",
    seq: 7,
    version: 9,
    updatedAt: "2026-11-26T09:00:00.000Z",
  } as const;

  it("writes a quantity as a number within ±(2^53 − 1) and as a decimal string beyond, and reads both back exactly", () => {
    const json = Schema.encodeSync(AvailabilityValue)(view);
    expect(json).toMatchObject({ available: "1152921504606846976", onHand: "-9007199254740992", reserved: 3 });
    expect(Schema.decodeUnknownSync(AvailabilityValue)(JSON.parse(JSON.stringify(json)))).toEqual(view);
    expect([quantityValue(2n ** 53n - 1n), quantityValue(-(2n ** 53n - 1n)), quantityValue(2n ** 53n)]).toEqual([
      2 ** 53 - 1,
      -(2 ** 53 - 1),
      "9007199254740992",
    ]);
  });

  it("refuses a value with a field it does not list, a fractional quantity or a time without a zone", () => {
    const json = Schema.encodeSync(AvailabilityValue)(view);
    const decode = Schema.decodeUnknownEither(AvailabilityValue, { onExcessProperty: "error" });
    expect(decode(json)._tag).toBe("Right");
    expect(decode({ ...json, extra: 1 })._tag).toBe("Left");
    expect(decode({ ...json, reserved: 1.5 })._tag).toBe("Left");
    expect(decode({ ...json, updatedAt: "2026-11-26T09:00:00" })._tag).toBe("Left");
  });

  it("gives the code its types: bigint quantities in Availability, number or string in AvailabilityJson", () => {
    const typed: Availability = view;
    // @ts-expect-error a quantity in Availability is a bigint
    const wrong: Availability = { ...view, available: 1 };
    const json: AvailabilityJson = { ...view, available: 1, onHand: "-9007199254740992", reserved: 3 };
    // @ts-expect-error an unknown status
    const badStatus: AvailabilityJson = { ...json, status: "plenty" };
    expect([typed, wrong, json, badStatus].length).toBe(4);
  });
});
