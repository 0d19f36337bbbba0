/**
 * Valuation end to end, submitted through NATS to a real worker and Postgres. Moving weighted
 * average: receipts with and without a cost, sales (one beyond stock). FIFO (a second ledger whose
 * config says so): receipts at different costs consumed oldest first, a transfer carrying the
 * origin's cost through in_transit with partial receipts, a damaged return, a receipt in another
 * currency. Each entry's value is checked against a hand computation, each bucket's value against
 * the sum of its entries, and `tally ledger verify` against tampering.
 */
import type { TransactionSql } from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { hashedEntry, type EntryRow } from "../ledger/entryRow.ts";
import { entryHash, GENESIS_HASH } from "../ledger/index.ts";
import { dropTestDatabase, testContext, type TestContext } from "./support/context.ts";
import { decodeTallyConfig } from "../src/platform/configFile.ts";
import { harness, runTally, startInProcess, TEST_CHANNELS, tallyEnv, type Harness } from "./support/tally.ts";

let ctx: TestContext;
let h: Harness;

const ndjson = (commands: ReadonlyArray<object>): string => `${commands.map((c) => JSON.stringify(c)).join("\n")}\n`;

function command(id: string, type: string, location: string, qty: number, extra: object = {}) {
  return { id, type, sku: "VAL-1", location, qty, source: { system: "test", ref: id }, occurredAt: "2026-11-30T10:00:00Z", ...extra };
}
const cost = (unitCost: number) => ({ unitCost, currency: "EUR" });

/**
 * [command, expected value, unit cost, flag, on_hand after, location value after], computed by hand:
 * the average is value / on_hand, an outgoing leg takes round(qty × value / on_hand), halves away from zero.
 */
const steps: ReadonlyArray<readonly [ReturnType<typeof command>, number, number, string | null, number, number]> = [
  [command("v1", "receive", "DC1", 10, cost(100)), 1000, 100, null, 10, 1000],
  [command("v2", "receive", "DC1", 5, cost(130)), 650, 130, null, 15, 1650], // average 110
  [command("v3", "sell", "DC1", 4), -440, 110, null, 11, 1210], // 4 × 1650 / 15 = 440
  [command("v4", "receive", "DC1", 3), 330, 110, "no_cost", 14, 1540], // no cost: at the average, 3 × 1210 / 11
  [command("v5", "receive", "DC1", 2, cost(101)), 202, 101, null, 16, 1742],
  [command("v6", "sell", "DC1", 5), -544, 109, null, 11, 1198], // 5 × 1742 / 16 = 544.375 → 544; average 108.875 → 109
  [command("v7", "sell", "DC1", 13), -1416, 109, "negative_stock", -2, -218], // 11 units take 1198; 2 beyond at 109 (1198 / 11 = 108.9)
  [command("v8", "sell", "DC1", 1), -109, 109, "negative_stock", -3, -327],
  [command("v9", "receive", "DC1", 3, cost(120)), 327, 120, null, 0, 0], // back to 0: takes back what the oversold units went at
  [command("v10", "receive", "DC1", 4, cost(50)), 200, 50, null, 4, 200],
  [command("v11", "receive", "S01", 2, cost(70)), 140, 70, null, 2, 140],
  [command("v12", "sell", "DC1", 4), -200, 50, null, 0, 0],
];

/**
 * A transfer and a damaged return at moving average (SKU VAL-2), [command, [bucket, location, value,
 * unit cost] per valued leg], by hand: DC1 holds 6 worth 603 (average 100.5 → 101) when 2 leave.
 */
const avg = (id: string, type: string, location: string, qty: number, extra: object = {}) => ({
  ...command(id, type, location, qty, extra),
  sku: "VAL-2",
});
const transferSteps: ReadonlyArray<readonly [ReturnType<typeof command>, ReadonlyArray<readonly [string, string, number, number]>]> = [
  [avg("m1", "receive", "DC1", 3, cost(100)), [["on_hand", "DC1", 300, 100]]],
  [avg("m2", "receive", "DC1", 3, cost(101)), [["on_hand", "DC1", 303, 101]]],
  [
    avg("m3", "transfer_out", "DC1", 2, { to: "S01", transferId: "T9" }),
    [
      ["on_hand", "DC1", -201, 101], // round(2 × 603 / 6)
      ["in_transit", "S01", 201, 101],
    ],
  ],
  [
    avg("m4", "transfer_in", "S01", 1, { from: "DC1", transferId: "T9" }),
    [
      ["in_transit", "S01", -101, 101], // round(201 / 2)
      ["on_hand", "S01", 101, 101],
    ],
  ],
  [
    avg("m5", "transfer_in", "S01", 1, { from: "DC1", transferId: "T9" }),
    [
      ["in_transit", "S01", -100, 100], // the rest
      ["on_hand", "S01", 100, 100],
    ],
  ],
  [avg("m6", "return", "S01", 1, { restockable: false }), [["damaged", "S01", 101, 101]]], // S01's average, 201 / 2
];

interface ValuedEntry {
  command_id: string;
  value: string | null;
  unit_cost: string | null;
  valuation_flag: string | null;
}

beforeAll(async () => {
  ctx = await testContext();
  h = await harness(ctx);
  // Two runs of the worker: the second rebuilds the actor from the stored balances (value, last unit cost).
  for (const part of [[...steps.slice(0, 6), ...transferSteps], steps.slice(6)]) {
    const tally = await startInProcess(ctx, ["worker", "relay"]);
    try {
      const r = await runTally(["submit", "-", "--wait"], tallyEnv(ctx), ndjson(part.map((s) => s[0])));
      expect(r.stdout).toContain(`accepted ${part.length}  rejected 0`);
    } finally {
      await tally.close();
    }
  }
}, 120_000);

afterAll(async () => {
  await h?.close();
  if (ctx) await dropTestDatabase(ctx);
});

async function tamper(change: (tx: TransactionSql) => Promise<unknown>, on: Harness = h): Promise<void> {
  await on.sql.begin(async (tx) => {
    await tx`alter table ledger_entries disable trigger ledger_entries_append_only`;
    await change(tx);
    await tx`alter table ledger_entries enable trigger ledger_entries_append_only`;
  });
}

const verify = () => runTally(["ledger", "verify"], tallyEnv(ctx));

describe("moving weighted average valuation", () => {
  it("carries a transfer's origin cost through in_transit, receipt by receipt, and values a damaged return at the location's average", async () => {
    const rows = await h.sql<Array<ValuedEntry & { bucket: string; location: string }>>`
      select command_id, bucket, location, value::text, unit_cost::text, valuation_flag
        from ledger_entries where sku = 'VAL-2' order by sku_seq`;
    expect(rows.map((r) => [r.command_id, r.bucket, r.location, Number(r.value), Number(r.unit_cost), r.valuation_flag])).toEqual(
      transferSteps.flatMap(([c, legs]) => legs.map((l) => [c.id, ...l, null])),
    );
    const balances = await h.sql`
      select location, bucket, qty, value::text from balances where sku = 'VAL-2' and bucket <> 'reserved' and qty <> 0 or sku = 'VAL-2' and bucket = 'in_transit'
       order by location, bucket`;
    expect(balances).toEqual([
      { location: "DC1", bucket: "in_transit", qty: 0, value: "0" },
      { location: "DC1", bucket: "on_hand", qty: 4, value: "402" },
      { location: "S01", bucket: "damaged", qty: 1, value: "101" },
      { location: "S01", bucket: "in_transit", qty: 0, value: "0" },
      { location: "S01", bucket: "on_hand", qty: 2, value: "201" },
    ]);
  });

  it("values every on_hand entry as computed by hand, and flags the receipt without cost and the sales beyond stock", async () => {
    const rows = await h.sql<Array<ValuedEntry & { balance_after: number }>>`
      select command_id, value::text, unit_cost::text, valuation_flag, balance_after
        from ledger_entries where sku = 'VAL-1' and bucket = 'on_hand' order by sku_seq`;
    expect(rows.map((r) => [r.command_id, Number(r.value), Number(r.unit_cost), r.valuation_flag, r.balance_after])).toEqual(
      steps.map(([c, value, unitCost, flag, onHand]) => [c.id, value, unitCost, flag, onHand]),
    );
  });

  it("keeps each location's value equal to the sum of its entries, 0 when on_hand is back at 0", async () => {
    const rows = await h.sql<Array<{ location: string; qty: number; value: string; last_unit_cost: string; sum: string }>>`
      select b.location, b.qty, b.value::text, b.last_unit_cost::text,
             (select sum(e.value) from ledger_entries e where e.sku = b.sku and e.location = b.location)::text as sum
        from balances b where b.sku = 'VAL-1' and b.bucket = 'on_hand' order by b.location`;
    expect(rows).toEqual([
      { location: "DC1", qty: 0, value: "0", last_unit_cost: "50", sum: "0" },
      { location: "S01", qty: 2, value: "140", last_unit_cost: "70", sum: "140" },
    ]);
    const running = steps.filter((s) => s[0].location === "DC1").map((s) => s[5]);
    expect(running.at(-1)).toBe(0);
  });

  it("verify passes, and finds a tampered balance value or entry value", async () => {
    const ok = await verify();
    expect(ok.stdout).toContain("ledger verify: ok");
    expect(ok.code).toBe(0);

    await h.sql`update balances set value = value + 1 where sku = 'VAL-1' and location = 'S01' and bucket = 'on_hand'`;
    const badBalance = await verify();
    expect(badBalance.code).toBe(3);
    expect(badBalance.output).toContain("value of S01 is 141 but its entries' values sum to 140");
    await h.sql`update balances set value = value - 1 where sku = 'VAL-1' and location = 'S01' and bucket = 'on_hand'`;

    await tamper((tx) => tx`update ledger_entries set value = value + 1 where command_id = 'v11'`);
    const badEntry = await verify();
    expect(badEntry.code).toBe(3);
    expect(badEntry.output).toContain("hash does not match its contents (entry altered)");
    await tamper((tx) => tx`update ledger_entries set value = value - 1 where command_id = 'v11'`);
    expect((await verify()).code).toBe(0);
  });

  it("verify replays the moving average: a value rewritten with its hashes, balance and head recomputed is still found", async () => {
    // What the owner could do: make the S01 receipt worth 150 instead of 140 and re-chain everything after it.
    await h.sql.begin(async (tx) => {
      await tx`alter table ledger_entries disable trigger ledger_entries_append_only`;
      const rows = await tx<Array<EntryRow>>`select * from ledger_entries where sku = 'VAL-1' order by sku_seq`;
      let prev = GENESIS_HASH;
      for (const r of rows) {
        const row = r.command_id === "v11" ? { ...r, value: "150" } : r;
        const hash = entryHash(prev, hashedEntry({ ...row, prev_hash: prev }));
        await tx`update ledger_entries set value = ${row.value ?? null}::numeric, prev_hash = ${prev}, hash = ${hash} where entry_id = ${r.entry_id}`;
        prev = hash;
      }
      await tx`update balances set value = 150 where sku = 'VAL-1' and location = 'S01' and bucket = 'on_hand'`;
      await tx`update sku_heads set last_hash = ${prev} where sku = 'VAL-1'`;
      await tx`alter table ledger_entries enable trigger ledger_entries_append_only`;
    });
    const r = await verify();
    expect(r.code).toBe(3);
    expect(r.output).toContain("value 150 at 70 (no flag) but the moving average gives 140 at 70 (no flag) (S01)");
  });
});

/**
 * What the owner could do: rewrite one entry's value, re-chain every hash after it and make the
 * balance and head agree, so that only verify's replay of the valuation can tell.
 */
async function rewriteValue(on: Harness, sku: string, commandId: string, bucket: string, value: string): Promise<void> {
  await on.sql.begin(async (tx) => {
    await tx`alter table ledger_entries disable trigger ledger_entries_append_only`;
    const rows = await tx<Array<EntryRow>>`select * from ledger_entries where sku = ${sku} order by sku_seq`;
    let prev = GENESIS_HASH;
    for (const r of rows) {
      const row = r.command_id === commandId && r.bucket === bucket ? { ...r, value } : r;
      const hash = entryHash(prev, hashedEntry({ ...row, prev_hash: prev }));
      await tx`update ledger_entries set value = ${row.value ?? null}::numeric, prev_hash = ${prev}, hash = ${hash} where entry_id = ${r.entry_id}`;
      prev = hash;
    }
    await tx`update balances b set value = (select sum(e.value) from ledger_entries e where e.sku = b.sku and e.location = b.location and e.bucket = b.bucket)
              where b.sku = ${sku} and b.bucket = ${bucket}`;
    await tx`update sku_heads set last_hash = ${prev} where sku = ${sku}`;
    await tx`alter table ledger_entries enable trigger ledger_entries_append_only`;
  });
}

describe("the valuation method", () => {
  it("is recorded at the first worker start: moving average here", async () => {
    const [row] = await h.sql<Array<{ value: string }>>`select value from tally_meta where key = 'valuation_method'`;
    expect(row?.value).toBe("moving_average");
  });
});

describe("FIFO valuation, transfers, damaged and currency", () => {
  let fctx: TestContext;
  let f: Harness;
  const FIFO = decodeTallyConfig({ ...TEST_CHANNELS, finance: { method: "fifo", currency: "EUR" } });
  const fifoCommand = (id: string, type: string, location: string, qty: number, extra: object = {}) => ({
    ...command(id, type, location, qty, extra),
    sku: "FIFO-1",
  });
  const alerts: Array<Record<string, unknown>> = [];

  /**
   * [command, [bucket, location, value, unit cost, flag] per valued leg], by hand. DC1's layers:
   * 10 @ 100 and 5 @ 130; the sale of 12 takes the first (1000) and 2 of the second (2 × 650 / 5 =
   * 260); 4 @ 101 comes on top of the 3 left (390).
   */
  const fifoSteps: ReadonlyArray<readonly [ReturnType<typeof command>, ReadonlyArray<readonly [string, string, number, number, string | null]>]> = [
    [fifoCommand("f1", "receive", "DC1", 10, cost(100)), [["on_hand", "DC1", 1000, 100, null]]],
    [fifoCommand("f2", "receive", "DC1", 5, cost(130)), [["on_hand", "DC1", 650, 130, null]]],
    [fifoCommand("f3", "sell", "DC1", 12), [["on_hand", "DC1", -1260, 105, null]]], // 1000 + 260, 1260 / 12
    [fifoCommand("f4", "receive", "DC1", 4, cost(101)), [["on_hand", "DC1", 404, 101, null]]], // layers 3 @ 390, 4 @ 404
    [
      // 3 @ 390 and 2 of 4 @ 404 (202) leave DC1: 592 goes into transit to S01.
      fifoCommand("f5", "transfer_out", "DC1", 5, { to: "S01", transferId: "T1" }),
      [
        ["on_hand", "DC1", -592, 118, null],
        ["in_transit", "S01", 592, 118, null],
      ],
    ],
    [
      // 2 of 5 take round(2 × 592 / 5) = 237 out of transit, into S01's on hand.
      fifoCommand("f6", "transfer_in", "S01", 2, { from: "DC1", transferId: "T1" }),
      [
        ["in_transit", "S01", -237, 119, null],
        ["on_hand", "S01", 237, 119, null],
      ],
    ],
    [
      // The last receipt takes the rest: 592 − 237.
      fifoCommand("f7", "transfer_in", "S01", 3, { from: "DC1", transferId: "T1" }),
      [
        ["in_transit", "S01", -355, 118, null],
        ["on_hand", "S01", 355, 118, null],
      ],
    ],
    // A damaged return goes into damaged at S01's current cost: 592 / 5 = 118.4 → 118.
    [fifoCommand("f8", "return", "S01", 1, { restockable: false }), [["damaged", "S01", 118, 118, null]]],
    // In dollars: applied, valued as a receipt without cost (DC1's 2 left are worth 202: 101 each), flagged.
    [fifoCommand("f9", "receive", "DC1", 2, { unitCost: 500, currency: "USD" }), [["on_hand", "DC1", 202, 101, "currency_mismatch"]]],
    // S01's layers: 2 @ 237, 3 @ 355; a sale of 3 takes 237 and 1 of 3 @ 355 (118).
    [fifoCommand("f10", "sell", "S01", 3), [["on_hand", "S01", -355, 118, null]]],
    [
      // Left open: DC1's 2 @ 202 and 2 @ 202 give one unit at 101 into transit.
      fifoCommand("f11", "transfer_out", "DC1", 1, { to: "S01", transferId: "T2" }),
      [
        ["on_hand", "DC1", -101, 101, null],
        ["in_transit", "S01", 101, 101, null],
      ],
    ],
  ];

  beforeAll(async () => {
    fctx = await testContext();
    f = await harness(fctx);
    const sub = f.nats.nc.subscribe(f.topology.eventSubject("alert"), {
      callback: (_err, msg) => {
        alerts.push(msg.json<Record<string, unknown>>());
      },
    });
    const tally = await startInProcess(fctx, ["worker", "relay"], {}, FIFO);
    try {
      const r = await runTally(["submit", "-", "--wait"], tallyEnv(fctx), ndjson(fifoSteps.map((s) => s[0])));
      expect(r.stdout).toContain(`accepted ${fifoSteps.length}  rejected 0`);
      for (let i = 0; i < 50 && alerts.length === 0; i++) await new Promise((resolve) => setTimeout(resolve, 100));
    } finally {
      sub.unsubscribe();
      await tally.close();
    }
  }, 120_000);

  afterAll(async () => {
    await f?.close();
    if (fctx) await dropTestDatabase(fctx);
  });

  const verifyFifo = () => runTally(["ledger", "verify"], tallyEnv(fctx));

  it("values every on_hand, in_transit and damaged leg as computed by hand", async () => {
    const rows = await f.sql<Array<ValuedEntry & { bucket: string; location: string }>>`
      select command_id, bucket, location, value::text, unit_cost::text, valuation_flag
        from ledger_entries where sku = 'FIFO-1' order by sku_seq`;
    expect(rows.map((r) => [r.command_id, r.bucket, r.location, Number(r.value), Number(r.unit_cost), r.valuation_flag])).toEqual(
      fifoSteps.flatMap(([c, legs]) => legs.map((l) => [c.id, ...l])),
    );
  });

  it("keeps each bucket's value (and FIFO layers, and each open transfer's value) equal to its entries", async () => {
    const rows = await f.sql<
      Array<{ location: string; bucket: string; qty: number; value: string | null; last_unit_cost: string | null; cost_layers: unknown }>
    >`
      select location, bucket, qty, value::text, last_unit_cost::text, cost_layers
        from balances where sku = 'FIFO-1' and bucket <> 'reserved' order by location, bucket`;
    expect(rows).toEqual([
      { location: "DC1", bucket: "damaged", qty: 0, value: "0", last_unit_cost: null, cost_layers: null },
      { location: "DC1", bucket: "in_transit", qty: 0, value: "0", last_unit_cost: null, cost_layers: null },
      // 1000 + 650 − 1260 + 404 − 592 + 202 − 101 = 303: 1 @ 101 left of the older 2 @ 202, and the dollar receipt's 2 @ 202
      {
        location: "DC1",
        bucket: "on_hand",
        qty: 3,
        value: "303",
        last_unit_cost: "101",
        cost_layers: [
          ["1", "101"],
          ["2", "202"],
        ],
      },
      { location: "S01", bucket: "damaged", qty: 1, value: "118", last_unit_cost: "118", cost_layers: null },
      { location: "S01", bucket: "in_transit", qty: 1, value: "101", last_unit_cost: null, cost_layers: null },
      { location: "S01", bucket: "on_hand", qty: 2, value: "237", last_unit_cost: "118", cost_layers: [["2", "237"]] },
    ]);
    const transfers =
      await f.sql`select transfer_id, shipped, received, shipped_value::text, received_value::text from transfers where sku = 'FIFO-1'`;
    expect(transfers).toEqual([{ transfer_id: "T2", shipped: 1, received: 0, shipped_value: "101", received_value: "0" }]);
    const [meta] = await f.sql<Array<{ value: string }>>`select value from tally_meta where key = 'valuation_method'`;
    expect(meta?.value).toBe("fifo");
  });

  it("raises an alert for the receipt in another currency", () => {
    expect(alerts).toEqual([
      expect.objectContaining({
        type: "alert",
        kind: "valuation_currency_mismatch",
        commandId: "f9",
        sku: "FIFO-1",
        currency: "USD",
        expected: "EUR",
      }),
    ]);
  });

  it("refuses to start a worker whose config names another method than the ledger's", async () => {
    await expect(startInProcess(fctx, ["worker"])).rejects.toThrow(
      'finance.method is "moving_average" in tally.config.ts but this ledger is valued by "fifo"',
    );
  });

  it("verify replays FIFO, transfers and damaged, and finds tampered values", async () => {
    expect((await verifyFifo()).stdout).toContain("ledger verify: ok");

    await f.sql`update balances set value = value + 1 where sku = 'FIFO-1' and location = 'S01' and bucket = 'in_transit'`;
    const transit = await verifyFifo();
    expect(transit.code).toBe(3);
    expect(transit.output).toContain("value of S01/in_transit is 102 but its entries' values sum to 101");
    await f.sql`update balances set value = value - 1 where sku = 'FIFO-1' and location = 'S01' and bucket = 'in_transit'`;

    await f.sql`update transfers set shipped_value = 100 where sku = 'FIFO-1' and transfer_id = 'T2'`;
    const carried = await verifyFifo();
    expect(carried.code).toBe(3);
    expect(carried.output).toContain("value in transit to S01 is 101 but its open transfers carry 100");
    await f.sql`update transfers set shipped_value = 101 where sku = 'FIFO-1' and transfer_id = 'T2'`;

    await f.sql`update balances set cost_layers = '[["1","101"],["2","203"]]' where sku = 'FIFO-1' and location = 'DC1' and bucket = 'on_hand'`;
    const layers = await verifyFifo();
    expect(layers.code).toBe(3);
    expect(layers.output).toContain("FIFO layers of DC1 are [1@101 2@203] but its entries give [1@101 2@202]");
    await f.sql`update balances set cost_layers = '[["1","101"],["2","202"]]' where sku = 'FIFO-1' and location = 'DC1' and bucket = 'on_hand'`;
    expect((await verifyFifo()).code).toBe(0);

    // The S01 sale valued as if it took the 2 units at 237 and one more at the same cost (3 × 118.5 → 356), re-chained.
    await rewriteValue(f, "FIFO-1", "f10", "on_hand", "-356");
    const replay = await verifyFifo();
    expect(replay.code).toBe(3);
    expect(replay.output).toContain("value -356 at 118 (no flag) but FIFO gives -355 at 118 (no flag) (S01)");
    await rewriteValue(f, "FIFO-1", "f10", "on_hand", "-355");

    // The damaged return valued at 120 instead of S01's current cost.
    await rewriteValue(f, "FIFO-1", "f8", "damaged", "120");
    const damaged = await verifyFifo();
    expect(damaged.code).toBe(3);
    expect(damaged.output).toContain("value 120 at 118 (no flag) but FIFO gives 118 at 118 (no flag) (S01/damaged)");
    await rewriteValue(f, "FIFO-1", "f8", "damaged", "118");
    expect((await verifyFifo()).code).toBe(0);
  });
});
