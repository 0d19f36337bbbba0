import { Either } from "effect";
import { describe, expect, it } from "vitest";
import {
  COMMAND_TYPES,
  InvalidCommand,
  decodeCommand,
  encodeCommand,
  ID_JSON_PATTERN,
  ID_LIST_JSON_PATTERN,
  NAME_PATTERN,
  POS_ID_PATTERN,
  isId,
  isIsoDateTimeWithZone,
  type Command,
} from "./command.ts";

const base = {
  id: "pos:store-1:tx-42#1",
  sku: "SKU-123",
  location: "store-1",
  source: { system: "pos", ref: "tx-42" },
  occurredAt: "2024-05-01T12:00:00Z",
};

const decoded = (input: unknown): Command => {
  const result = decodeCommand(input);
  if (Either.isLeft(result)) throw new Error(`expected a command, got: ${result.left.message}`);
  return result.right;
};

const failure = (input: unknown): InvalidCommand => {
  const result = decodeCommand(input);
  if (Either.isRight(result)) throw new Error(`expected InvalidCommand, decoded ${JSON.stringify(result.right)}`);
  return result.left;
};

const messageOf = (input: unknown): string => failure(input).message;

describe("decodeCommand accepts", () => {
  it("every command type", () => {
    const samples: Record<(typeof COMMAND_TYPES)[number], object> = {
      receive: { qty: 10 },
      sell: { qty: 1 },
      return: { qty: 2, restockable: false },
      reserve: { qty: 3, reservationId: "r-1" },
      release: { qty: 3, reservationId: "r-1", expired: true },
      fulfill: { qty: 3, reservationId: "r-1" },
      adjust: { qty: -4, reason: "shrink" },
      count: { qty: 0 },
      transfer_out: { qty: 5, transferId: "t-1", to: "dc-1" },
      transfer_in: { qty: 5, transferId: "t-1", from: "dc-1" },
      set_policy: { safetyStock: 2, reorderPoint: 10 },
    };
    for (const type of COMMAND_TYPES) {
      const command = decoded({ ...base, type, ...samples[type] });
      expect(command).toMatchObject({ ...base, type, ...samples[type] });
    }
  });

  it("a return as restockable unless told otherwise", () => {
    expect(decoded({ ...base, type: "return", qty: 1 })).toMatchObject({ restockable: true });
  });

  it("an lsn in the source, and zone offsets in occurredAt", () => {
    const command = decoded({
      ...base,
      type: "receive",
      qty: 1,
      source: { system: "erp", ref: "gr-9", lsn: "0/16B3748" },
      occurredAt: "2024-02-29T23:59:59.123456+05:30",
    });
    expect(command.source).toEqual({ system: "erp", ref: "gr-9", lsn: "0/16B3748" });
    expect(command.occurredAt).toBe("2024-02-29T23:59:59.123456+05:30");
  });

  it("and drops unknown extra fields", () => {
    const command = decoded({ ...base, type: "sell", qty: 1, extra: "ignored", source: { ...base.source, x: 1 } });
    expect(command).not.toHaveProperty("extra");
    expect(command.source).not.toHaveProperty("x");
  });

  it("ids at the length limits and with the allowed punctuation", () => {
    const command = decoded({
      ...base,
      type: "sell",
      qty: 1,
      id: "x".repeat(300),
      sku: "A".repeat(200),
      location: "eu-west_dc-1.2",
    });
    expect(command.sku).toHaveLength(200);
  });

  it("quantities up to 1e12", () => {
    expect(decoded({ ...base, type: "receive", qty: 1e12 })).toMatchObject({ qty: 1e12 });
    expect(decoded({ ...base, type: "adjust", qty: -1e12, reason: "r" })).toMatchObject({ qty: -1e12 });
  });
});

describe("decodeCommand rejects, naming the field", () => {
  it.each([
    [{ qty: 1.5 }, "qty: expected a positive integer, got 1.5"],
    [{ qty: -1 }, "qty: expected a positive integer, got -1"],
    [{ qty: 0 }, "qty: expected a positive integer, got 0"],
    [{ qty: "3" }, 'qty: expected a positive integer, got "3"'],
    [{ qty: null }, "qty: expected a positive integer, got null"],
    [{ qty: 1e12 + 1 }, "qty: expected a positive integer of magnitude at most 1000000000000, got 1000000000001"],
    [{}, "qty: is missing"],
  ])("a receive with %j", (fields, message) => {
    expect(messageOf({ ...base, type: "receive", ...fields })).toBe(message);
  });

  it("an unknown type, listing the known ones", () => {
    expect(messageOf({ ...base, type: "teleport", qty: 1 })).toBe(
      'type: expected one of receive, sell, return, reserve, release, fulfill, adjust, count, transfer_out, transfer_in, set_policy, got "teleport"',
    );
  });

  it("a missing type, along with the other common-field problems", () => {
    expect(failure({ ...base, sku: "a b" }).issues).toEqual([
      { path: "type", message: "is missing" },
      { path: "sku", message: 'expected a SKU (letters, digits, _ - . *), got "a b"' },
    ]);
  });

  it("a missing source.system", () => {
    expect(messageOf({ ...base, type: "sell", qty: 1, source: { ref: "x" } })).toBe("source.system: is missing");
  });

  it("an empty source.system and a numeric ref", () => {
    expect(messageOf({ ...base, type: "sell", qty: 1, source: { system: "", ref: 7 } })).toBe(
      'source.system: expected a non-empty string, got ""; source.ref: expected a string, got 7',
    );
  });

  it("a SKU or location with spaces, control characters or too long", () => {
    expect(messageOf({ ...base, type: "sell", qty: 1, sku: "a b" })).toBe('sku: expected a SKU (letters, digits, _ - . *), got "a b"');
    expect(messageOf({ ...base, type: "sell", qty: 1, sku: "" })).toBe('sku: expected a SKU (letters, digits, _ - . *), got ""');
    expect(messageOf({ ...base, type: "sell", qty: 1, sku: "a".repeat(201) })).toBe(
      'sku: expected a SKU of at most 200 characters, got "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"… (201 characters)',
    );
    expect(messageOf({ ...base, type: "sell", qty: 1, location: "store\n1" })).toBe(
      'location: expected a location id (letters, digits, _ - . *), got "store\\n1"',
    );
    expect(messageOf({ ...base, type: "sell", qty: 1, sku: "a#b" })).toBe('sku: expected a SKU (letters, digits, _ - . *), got "a#b"');
    // `:` would be an invalid NATS KV key (`<channel>.<sku>`): refused at the edge, not in the relay.
    expect(messageOf({ ...base, type: "sell", qty: 1, sku: "a:b" })).toBe('sku: expected a SKU (letters, digits, _ - . *), got "a:b"');
  });

  it("a command id with a space or too long", () => {
    expect(messageOf({ ...base, type: "sell", qty: 1, id: "a b" })).toBe(
      'id: expected a command id (1 to 300 printable ASCII characters, no spaces), got "a b"',
    );
    expect(failure({ ...base, type: "sell", qty: 1, id: "x".repeat(301) }).issues[0]?.path).toBe("id");
  });

  it.each(["2024-05-01", "2024-05-01T12:00:00", "2024-13-01T00:00:00Z", "2023-02-29T00:00:00Z", "yesterday"])("an occurredAt of %j", (occurredAt) => {
    expect(messageOf({ ...base, type: "sell", qty: 1, occurredAt })).toBe(
      `occurredAt: expected an ISO-8601 date-time with a zone, like 2024-05-01T12:00:00Z, got ${JSON.stringify(occurredAt)}`,
    );
  });

  it("an adjust of zero or without a reason", () => {
    expect(failure({ ...base, type: "adjust", qty: 0 }).issues).toEqual([
      { path: "qty", message: "expected a non-zero integer, got 0" },
      { path: "reason", message: "is missing" },
    ]);
  });

  it("a count with a reason outside the closed set", () => {
    expect(messageOf({ ...base, type: "count", qty: 3, reason: "shrink" })).toBe(
      'reason: expected one of cycle_count, physical_inventory, reconciliation, got "shrink"',
    );
    expect(messageOf({ ...base, type: "count", qty: 3, reason: 7 })).toBe(
      "reason: expected one of cycle_count, physical_inventory, reconciliation, got 7",
    );
  });

  it("a count keeps its reason, and may have none", () => {
    expect(decoded({ ...base, type: "count", qty: 3, reason: "reconciliation" })).toMatchObject({ type: "count", reason: "reconciliation" });
    expect(decoded({ ...base, type: "count", qty: 3 })).not.toHaveProperty("reason");
  });

  it("a negative count", () => {
    expect(messageOf({ ...base, type: "count", qty: -1 })).toBe("qty: expected a non-negative integer, got -1");
  });

  it("a non-boolean restockable", () => {
    expect(messageOf({ ...base, type: "return", qty: 1, restockable: "yes" })).toBe('restockable: expected true or false, got "yes"');
  });

  it("a transfer to its own origin", () => {
    expect(messageOf({ ...base, type: "transfer_out", qty: 1, transferId: "t-1", to: "store-1" })).toBe(
      'to: expected a location other than the origin, got "store-1"',
    );
  });

  it("a transfer without transferId", () => {
    expect(messageOf({ ...base, type: "transfer_in", qty: 1, from: "dc-1" })).toBe("transferId: is missing");
  });

  it("a set_policy with a fractional reorder point", () => {
    expect(messageOf({ ...base, type: "set_policy", safetyStock: 0, reorderPoint: 2.5 })).toBe(
      "reorderPoint: expected a non-negative integer, got 2.5",
    );
  });

  it("something that is not an object", () => {
    expect(messageOf(42)).toBe("expected a command object, got 42");
    expect(messageOf(null)).toBe("expected a command object, got null");
    expect(messageOf([base])).toBe("expected a command object, got an array");
  });

  it("with every issue at once, as a tagged error", () => {
    const error = failure({ type: "sell", qty: 1.5, sku: "S", location: "L", source: {} });
    expect(error).toBeInstanceOf(InvalidCommand);
    expect(error._tag).toBe("InvalidCommand");
    expect(error.message).toBe(
      [
        "id: is missing",
        "source.system: is missing",
        "source.ref: is missing",
        "occurredAt: is missing",
        "qty: expected a positive integer, got 1.5",
      ].join("; "),
    );
  });
});

describe("decodeCommand refuses what Postgres cannot store, naming the field", () => {
  it("a date-time in year 0 (Postgres has no year 0) or outside 1900 to 9999", () => {
    expect(messageOf({ ...base, type: "sell", qty: 1, occurredAt: "0000-01-01T00:00:00Z" })).toBe(
      'occurredAt: expected a date-time from 1900-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z, got "0000-01-01T00:00:00Z"',
    );
    expect(messageOf({ ...base, type: "sell", qty: 1, occurredAt: "1899-12-31T23:59:59Z" })).toMatch(/^occurredAt: expected a date-time from/);
    // A zone offset can carry 9999-12-31 past the last storable instant.
    expect(messageOf({ ...base, type: "sell", qty: 1, occurredAt: "9999-12-31T23:00:00-05:00" })).toMatch(/^occurredAt: /);
    expect(decoded({ ...base, type: "sell", qty: 1, occurredAt: "1900-01-01T00:00:00Z" }).occurredAt).toBe("1900-01-01T00:00:00Z");
    expect(decoded({ ...base, type: "sell", qty: 1, occurredAt: "9999-12-31T23:59:59Z" }).occurredAt).toBe("9999-12-31T23:59:59Z");
  });

  it("NUL characters and unpaired surrogates in text (text and jsonb refuse NUL)", () => {
    expect(messageOf({ ...base, type: "sell", qty: 1, source: { system: "pos", ref: "a\u0000b" } })).toBe(
      'source.ref: expected text without NUL characters or unpaired surrogates, got "a\\u0000b"',
    );
    expect(messageOf({ ...base, type: "adjust", qty: 1, reason: "x\ud800" })).toMatch(/^reason: expected text without NUL/);
  });

  it("text longer than its bound (a transfer id is a key: it must fit an index entry)", () => {
    expect(messageOf({ ...base, type: "transfer_in", qty: 1, transferId: "t".repeat(201), from: "dc-1" })).toMatch(
      /^transferId: expected a string of at most 200 characters, got "t{30,}/,
    );
    expect(messageOf({ ...base, type: "sell", qty: 1, source: { system: "pos", ref: "r".repeat(1001) } })).toMatch(
      /^source\.ref: expected a string of at most 1000 characters/,
    );
    expect(messageOf({ ...base, type: "reserve", qty: 1, reservationId: "r".repeat(301) })).toMatch(/^reservationId: /);
  });

  it("a SKU or location with a colon (one id grammar: commands, config and routes)", () => {
    expect(messageOf({ ...base, type: "sell", qty: 1, sku: "A:B" })).toBe('sku: expected a SKU (letters, digits, _ - . *), got "A:B"');
    expect(isId("A:B")).toBe(false);
    expect(new RegExp(ID_JSON_PATTERN).test("A:B")).toBe(false);
    expect(new RegExp(ID_JSON_PATTERN).test("A-b_9.x")).toBe(true);
    expect(new RegExp(ID_JSON_PATTERN).test("x".repeat(201))).toBe(false);
  });

  it("lists of ids and the other names use the same definitions", () => {
    const list = new RegExp(ID_LIST_JSON_PATTERN);
    expect(list.test("A-1,B.2,C*")).toBe(true);
    expect(list.test("A-1,B:2")).toBe(false);
    expect(list.test("A-1,")).toBe(false);
    expect(NAME_PATTERN.test("web_eu-2")).toBe(true);
    expect(NAME_PATTERN.test("Web")).toBe(false);
    expect(POS_ID_PATTERN.test("T-1.a")).toBe(true);
    expect(POS_ID_PATTERN.test("T:1")).toBe(false);
  });
});

describe("encodeCommand", () => {
  it("round-trips through decodeCommand as plain JSON", () => {
    for (const input of [
      { ...base, type: "return", qty: 2 },
      { ...base, type: "transfer_out", qty: 5, transferId: "t-1", to: "dc-1" },
      { ...base, type: "set_policy", safetyStock: 1, reorderPoint: 4 },
    ]) {
      const command = decoded(input);
      const json = JSON.parse(JSON.stringify(encodeCommand(command))) as unknown;
      expect(decoded(json)).toEqual(command);
    }
  });
});

describe("isIsoDateTimeWithZone", () => {
  it("checks the calendar and the zone", () => {
    expect(isIsoDateTimeWithZone("2024-02-29T00:00Z")).toBe(true);
    expect(isIsoDateTimeWithZone("2024-04-31T00:00:00Z")).toBe(false);
    expect(isIsoDateTimeWithZone("2024-04-30T24:00:00Z")).toBe(false);
    expect(isIsoDateTimeWithZone("2024-04-30T10:00:00-0800")).toBe(true);
    expect(isIsoDateTimeWithZone("2024-04-30T10:00:00+25:00")).toBe(false);
  });
});

describe("a receive's unit cost", () => {
  const receive = { ...base, type: "receive", qty: 3 };
  it("is optional, and an integer number of minor units with an ISO 4217 currency", () => {
    expect(decoded(receive)).not.toHaveProperty("unitCost");
    expect(decoded({ ...receive, unitCost: 1299, currency: "EUR" })).toMatchObject({ unitCost: 1299, currency: "EUR" });
    expect(decoded({ ...receive, unitCost: 0, currency: "JPY" })).toMatchObject({ unitCost: 0 });
  });
  it("refuses a fraction, a negative cost, a string or a bad currency, naming the field", () => {
    expect(messageOf({ ...receive, unitCost: 12.5 })).toBe("unitCost: expected a non-negative integer, got 12.5");
    expect(messageOf({ ...receive, unitCost: -1 })).toContain("unitCost: expected a non-negative integer");
    expect(messageOf({ ...receive, unitCost: "12.50" })).toContain("unitCost:");
    expect(messageOf({ ...receive, unitCost: 1, currency: "eur" })).toBe(
      'currency: expected an ISO 4217 currency code (3 uppercase letters, like EUR), got "eur"',
    );
  });
});
