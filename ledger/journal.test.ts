import { describe, expect, it } from "vitest";
import { decodeTallyConfig } from "../src/platform/index.ts";
import { businessDate, journalOf, journalsOf, type JournalLeg } from "./journal.ts";

const finance = decodeTallyConfig({ channels: {}, finance: { costCenters: { DC1: "CC-DC" } } }).finance;

let seq = 0;
/** A leg of command `id`; value in minor units (null: not valued). */
function leg(id: string, n: number, bucket: string, delta: number, movement: string, value: number | null, location = "S01"): JournalLeg {
  seq++;
  return {
    commandId: id,
    leg: n,
    sku: "SKU-1",
    location,
    bucket,
    delta: BigInt(delta),
    movement,
    value: value === null ? null : BigInt(value),
    unit: "each",
    sourceSystem: "test",
    sourceRef: `ref-${seq}`,
    occurredAt: new Date("2026-11-26T09:00:00Z"),
  };
}

/** The journal's lines as [account, cost center, debit, credit, qty, leg]. */
const lines = (legs: ReadonlyArray<JournalLeg>) =>
  journalOf(legs, finance)?.lines.map((l) => [l.account, l.costCenter, Number(l.debit), Number(l.credit), Number(l.qty), l.leg]) ?? null;

describe("posting rules", () => {
  it("receipt: Dr inventory / Cr goods received not invoiced, on the location's cost center", () => {
    expect(lines([leg("c", 1, "on_hand", 10, "receive", 1000, "DC1")])).toEqual([
      ["1400", "CC-DC", 1000, 0, 10, 1],
      ["2100", "CC-DC", 0, 1000, 10, 1],
    ]);
  });

  it("sale, shipment (covered and not): Dr cost of goods sold / Cr inventory; the hold's leg posts nothing", () => {
    expect(lines([leg("c", 1, "on_hand", -2, "sell", -220)])).toEqual([
      ["5000", "S01", 220, 0, -2, 1],
      ["1400", "S01", 0, 220, -2, 1],
    ]);
    expect(
      lines([
        leg("f", 1, "reserved", -1, "fulfill", null),
        leg("f", 2, "on_hand", -1, "fulfill", -110),
        leg("f", 3, "on_hand", -1, "fulfill_unreserved", -110),
      ]),
    ).toEqual([
      ["5000", "S01", 110, 0, -1, 2],
      ["5000", "S01", 110, 0, -1, 3],
      ["1400", "S01", 0, 110, -1, 2],
      ["1400", "S01", 0, 110, -1, 3],
    ]);
  });

  it("customer return: to stock Dr inventory / Cr COGS; damaged Dr damaged / Cr COGS", () => {
    expect(lines([leg("r", 1, "on_hand", 1, "return", 110)])).toEqual([
      ["1400", "S01", 110, 0, 1, 1],
      ["5000", "S01", 0, 110, 1, 1],
    ]);
    expect(lines([leg("d", 1, "damaged", 1, "return_damaged", 110)])).toEqual([
      ["1450", "S01", 110, 0, 1, 1],
      ["5000", "S01", 0, 110, 1, 1],
    ]);
  });

  it("count and adjustment: a loss Dr shrinkage / Cr inventory, a gain the reverse", () => {
    expect(lines([leg("k", 1, "on_hand", -3, "count_variance", -330)])).toEqual([
      ["5100", "S01", 330, 0, -3, 1],
      ["1400", "S01", 0, 330, -3, 1],
    ]);
    expect(lines([leg("a", 1, "on_hand", 2, "adjust", 220)])).toEqual([
      ["1400", "S01", 220, 0, 2, 1],
      ["5100", "S01", 0, 220, 2, 1],
    ]);
  });

  it("a write-off out of damaged: Dr shrinkage / Cr damaged", () => {
    expect(lines([leg("w", 1, "damaged", -1, "adjust", -110)])).toEqual([
      ["5100", "S01", 110, 0, -1, 1],
      ["1450", "S01", 0, 110, -1, 1],
    ]);
  });

  it("stock marked damaged (on_hand → damaged): Dr damaged / Cr inventory, leg against leg", () => {
    expect(lines([leg("m", 1, "on_hand", -1, "adjust", -110), leg("m", 2, "damaged", 1, "adjust", 110)])).toEqual([
      ["1450", "S01", 110, 0, 1, 2],
      ["1400", "S01", 0, 110, -1, 1],
    ]);
  });

  it("transfer out: Dr in transit (destination) / Cr inventory (origin), whether or not the in-transit leg carries a value", () => {
    const expected = [
      ["1410", "S01", 550, 0, 5, 2],
      ["1400", "CC-DC", 0, 550, -5, 1],
    ];
    expect(lines([leg("t", 1, "on_hand", -5, "transfer_out", -550, "DC1"), leg("t", 2, "in_transit", 5, "transfer_out", null)])).toEqual(expected);
    expect(lines([leg("t", 1, "on_hand", -5, "transfer_out", -550, "DC1"), leg("t", 2, "in_transit", 5, "transfer_out", 550)])).toEqual(expected);
  });

  it("transfer in: Dr inventory / Cr in transit; a difference between valued legs is a valuation difference", () => {
    expect(lines([leg("i", 1, "in_transit", -5, "transfer_in", null), leg("i", 2, "on_hand", 5, "transfer_in", 550)])).toEqual([
      ["1400", "S01", 550, 0, 5, 2],
      ["1410", "S01", 0, 550, -5, 1],
    ]);
    const journal = journalOf([leg("i", 1, "in_transit", -5, "transfer_in", -550), leg("i", 2, "on_hand", 5, "transfer_in", 551)], finance)!;
    expect(journal.lines.map((l) => [l.account, Number(l.debit), Number(l.credit), l.memo])).toEqual([
      ["1400", 551, 0, null],
      ["1410", 0, 550, null],
      ["5100", 0, 1, "valuation difference"],
    ]);
  });

  it("legs without a value (before valuation) or of value 0 post nothing; a command with no line posts no journal", () => {
    expect(journalOf([leg("n", 1, "on_hand", 5, "receive", null)], finance)).toBeNull();
    expect(journalOf([leg("z", 1, "on_hand", 5, "receive", 0)], finance)).toBeNull();
    expect(journalOf([leg("h", 1, "reserved", 5, "reserve", null)], finance)).toBeNull();
    expect(journalOf([leg("t", 1, "on_hand", -5, "transfer_out", null), leg("t", 2, "in_transit", 5, "transfer_out", null)], finance)).toBeNull();
    expect(journalOf([], finance)).toBeNull();
  });

  it("every journal balances, in exact integers past 2^53", () => {
    const big = 2n ** 70n + 1n;
    const legs: Array<JournalLeg> = [
      { ...leg("b", 1, "on_hand", 1, "receive", null), value: big },
      ...["sell", "return", "count_variance", "adjust", "return_damaged"].map((m, i) =>
        leg(`x${i}`, 1, m === "return_damaged" ? "damaged" : "on_hand", -1, m, -7),
      ),
    ];
    const journals = journalsOf(legs, finance);
    expect(journals).toHaveLength(6);
    for (const j of journals) {
      const debit = j.lines.reduce((s, l) => s + l.debit, 0n);
      expect(debit).toBe(j.lines.reduce((s, l) => s + l.credit, 0n));
      expect(debit > 0n).toBe(true);
      for (const l of j.lines) expect(l.debit > 0n !== l.credit > 0n).toBe(true);
    }
    expect(journals[0]!.lines[0]!.debit).toBe(big);
  });

  it("a movement without a rule posts against shrinkage and says so", () => {
    const journal = journalOf([leg("u", 1, "on_hand", -1, "vanished", -5)], finance)!;
    expect(journal.lines.map((l) => [l.account, l.memo])).toEqual([
      ["5100", "no posting rule for movement vanished: posted as shrinkage"],
      ["1400", null],
    ]);
  });

  it("journal header: the command id, the business date in the books' time zone, kind reconciliation for reconcile's counts", () => {
    const count = {
      ...leg("reconcile:erp:1", 1, "on_hand", -1, "count_variance", -5),
      sourceRef: "reconciliation:0/16B3748",
      occurredAt: new Date("2026-11-30T23:30:00Z"),
    };
    const j = journalOf([count], { ...finance, timeZone: "Europe/Berlin" })!;
    expect([j.journalId, j.commandId, j.kind, j.businessDate, j.currency, j.movement]).toEqual([
      "reconcile:erp:1",
      "reconcile:erp:1",
      "reconciliation",
      "2026-12-01",
      "EUR",
      "count_variance",
    ]);
    expect(journalOf([{ ...count, sourceRef: "cycle" }], finance)!.kind).toBe("inventory");
    expect(businessDate(new Date("2026-11-30T23:30:00Z"), "UTC")).toBe("2026-11-30");
    expect(businessDate(new Date("2026-12-01T02:00:00Z"), "America/New_York")).toBe("2026-11-30");
  });

  it("refuses legs of two commands", () => {
    expect(() => journalOf([leg("a", 1, "on_hand", 1, "receive", 1), leg("b", 1, "on_hand", 1, "receive", 1)], finance)).toThrow(
      /more than one command/,
    );
  });
});

describe("the README's posting rules table", () => {
  /** Each row of the table, as the legs that movement writes. */
  const ROWS: Record<string, ReadonlyArray<JournalLeg>> = {
    "`receive`": [leg("m", 1, "on_hand", 1, "receive", 100)],
    "`sell`, `fulfill`, `fulfill_unreserved` (sale, shipment)": [leg("m", 1, "on_hand", -1, "sell", -100)],
    "`return` (to stock)": [leg("m", 1, "on_hand", 1, "return", 100)],
    "`return_damaged`": [leg("m", 1, "damaged", 1, "return_damaged", 100)],
    "`count_variance`, `adjust`: a loss": [leg("m", 1, "on_hand", -1, "count_variance", -100)],
    "`count_variance`, `adjust`: a gain": [leg("m", 1, "on_hand", 1, "adjust", 100)],
    "stock marked damaged (on_hand → damaged)": [leg("m", 1, "on_hand", -1, "adjust", -100), leg("m", 2, "damaged", 1, "adjust", 100)],
    "a write-off out of damaged": [leg("m", 1, "damaged", -1, "adjust", -100)],
    "`transfer_out`": [leg("m", 1, "on_hand", -1, "transfer_out", -100, "DC1"), leg("m", 2, "in_transit", 1, "transfer_out", null)],
    "`transfer_in`": [leg("m", 1, "in_transit", -1, "transfer_in", null), leg("m", 2, "on_hand", 1, "transfer_in", 100)],
  };

  it("says what the rules do, row by row", async () => {
    const { readFile } = await import("node:fs/promises");
    const readme = await readFile(new URL("../README.md", import.meta.url), "utf8");
    const section = readme.split("### The GL journal: the inventory side and periods")[1]!.split("\n### ")[0]!;
    const rows = [...section.matchAll(/^\| (.+?) \| (\w+)(?: \(.*?\))? \| (\w+)(?: \(.*?\))? \|$/gm)].filter((m) => m[1] !== "movement");
    const nameOf = (account: string) => Object.entries(finance.accounts).find(([, n]) => n === account)![0];
    expect(rows.map((m) => m[1])).toEqual(Object.keys(ROWS));
    for (const [, movement, debit, credit] of rows) {
      const lines = journalOf(ROWS[movement!]!, finance)!.lines;
      expect([movement, lines.map((l) => (l.debit > 0n ? nameOf(l.account) : null)).filter(Boolean)], movement).toEqual([movement, [debit]]);
      expect([movement, lines.map((l) => (l.credit > 0n ? nameOf(l.account) : null)).filter(Boolean)], movement).toEqual([movement, [credit]]);
    }
  });
});
