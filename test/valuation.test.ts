/**
 * Valuation at moving weighted average cost, end to end: receipts with and without a cost, sales
 * (one beyond stock), submitted through NATS to a real worker and Postgres; each entry's value is
 * checked against a hand computation, the location's value against the sum of its entries, and
 * `tally ledger verify` against tampering.
 */
import type { TransactionSql } from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { hashedEntry, type EntryRow } from "../ledger/entryRow.ts";
import { entryHash, GENESIS_HASH } from "../ledger/index.ts";
import { dropTestDatabase, testContext, type TestContext } from "./support/context.ts";
import { harness, runTally, startInProcess, tallyEnv, type Harness } from "./support/tally.ts";

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
  for (const part of [steps.slice(0, 6), steps.slice(6)]) {
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

async function tamper(change: (tx: TransactionSql) => Promise<unknown>): Promise<void> {
  await h.sql.begin(async (tx) => {
    await tx`alter table ledger_entries disable trigger ledger_entries_append_only`;
    await change(tx);
    await tx`alter table ledger_entries enable trigger ledger_entries_append_only`;
  });
}

const verify = () => runTally(["ledger", "verify"], tallyEnv(ctx));

describe("moving weighted average valuation", () => {
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
