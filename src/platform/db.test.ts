import { describe, expect, it } from "vitest";
import { describeError, isPermanentDataError, isTransientDbError } from "./db.ts";

describe("classifying database failures", () => {
  it("a NATS error (numeric code) is neither, and classifying it does not throw", () => {
    const nats = Object.assign(new Error("jetstream is not enabled"), { code: 503 });
    expect(isTransientDbError(nats)).toBe(false);
    expect(isPermanentDataError(nats)).toBe(false);
  });

  it("data exceptions, integrity violations other than a decided command's duplicate, and program limits are permanent", () => {
    expect(isPermanentDataError({ code: "22008" })).toBe(true); // datetime field overflow (year 0)
    expect(isPermanentDataError({ code: "22021" })).toBe(true); // NUL in text
    expect(isPermanentDataError({ code: "23514", constraint_name: "some_check" })).toBe(true);
    expect(isPermanentDataError({ code: "54000" })).toBe(true); // index row too large
    expect(isPermanentDataError({ code: "23505", constraint_name: "command_outcomes_pkey" })).toBe(false);
    expect(isPermanentDataError({ code: "23505", constraint_name: "ledger_entries_command_leg" })).toBe(false);
    expect(isPermanentDataError({ code: "40001" })).toBe(false);
    expect(isPermanentDataError({ code: "P0001" })).toBe(false);
    expect(isTransientDbError({ code: "40001" })).toBe(true);
  });

  it("describes an error with its SQLSTATE", () => {
    expect(describeError(Object.assign(new Error("date/time field value out of range"), { code: "22008" }))).toBe(
      "date/time field value out of range (SQLSTATE 22008)",
    );
    expect(describeError(Object.assign(new Error("no responders"), { code: 503 }))).toBe("no responders");
  });
});
