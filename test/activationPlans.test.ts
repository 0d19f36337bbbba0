import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadHolds, loadSkus, migrate } from "../ledger/index.ts";
import { connectPostgres, type Sql } from "../src/platform/db.ts";
import { dropTestDatabase, testContext, type TestContext } from "./support/context.ts";
import { eventually } from "./support/tally.ts";

let ctx: TestContext;
let sql: Sql;
/** One connection, as a worker's pool reuses its connections: a plan cached on it is used again. */
let worker: Sql;

beforeAll(async () => {
  ctx = await testContext();
  sql = connectPostgres(ctx.databaseUrl, { max: 2, application: "test" });
  await migrate(sql, ctx.env);
  worker = connectPostgres(ctx.databaseUrl, { max: 1, application: "test-worker" });
  // Connected (and its array types fetched) before the lookups, as a worker's pool is by its first queries.
  await worker`select 1`;
});
afterAll(async () => {
  await worker?.end({ timeout: 5 });
  await sql?.end({ timeout: 5 });
  if (ctx) await dropTestDatabase(ctx);
});

/** Sequential and index scans of a table so far, once the worker connection's pending counts are flushed. */
async function scans(table: string): Promise<{ seq: number; idx: number }> {
  await worker`select pg_stat_force_next_flush()`;
  let last = { seq: -1, idx: -1 };
  // Flushed as the worker's backend goes idle; read until two reads agree.
  await eventually("the scan counts to settle", async () => {
    const [r] = await sql<[{ seq: number; idx: number }]>`
      select seq_scan::int as seq, coalesce(idx_scan, 0)::int as idx from pg_stat_user_tables where relname = ${table}`;
    const same = r!.seq === last.seq && r!.idx === last.idx;
    last = r!;
    return same;
  });
  return last;
}

describe("activation lookups on a table that grew from empty", () => {
  it("read by index once the table is large, whatever plan the connection made while it was empty", async () => {
    // A new ledger: the worker activates SKUs while balances, heads, locations and holds are empty.
    for (let i = 0; i < 8; i++) {
      await loadSkus(worker, [`COLD-${i}`]);
      await loadHolds(worker, [`COLD-${i}`], []);
    }
    // Then 60,000 SKUs arrive (onboarding), faster than autovacuum analyzes the tables.
    await sql`
      insert into balances (sku, location, bucket, qty, updated_at)
      select 'GROWN-' || g, 'DC1', 'on_hand', 1, now() from generate_series(1, 60000) g`;
    await sql`
      insert into holds (sku, hold_id, location, channel, qty, open_qty, status, expires_at, updated_at)
      select 'GROWN-' || g, 'h' || g, 'DC1', 'web', 1, 1, 'open', now() + interval '1 hour', now() from generate_series(1, 60000) g`;
    const before = { balances: await scans("balances"), holds: await scans("holds") };
    for (let i = 0; i < 5; i++) {
      const loaded = await loadSkus(worker, [`GROWN-${i + 1}`, "NEW-SKU"]);
      expect(loaded.get(`GROWN-${i + 1}`)!.balances).toHaveLength(1);
      expect(await loadHolds(worker, [`GROWN-${i + 1}`], [])).toHaveLength(1);
    }
    const after = { balances: await scans("balances"), holds: await scans("holds") };
    // Every lookup an index probe: none read the whole table.
    expect(after.balances.seq - before.balances.seq).toBe(0);
    expect(after.balances.idx - before.balances.idx).toBeGreaterThanOrEqual(5);
    expect(after.holds.seq - before.holds.seq).toBe(0);
    expect(after.holds.idx - before.holds.idx).toBeGreaterThanOrEqual(5);
  });
});
