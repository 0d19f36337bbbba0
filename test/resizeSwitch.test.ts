// The switch of a partition resize, run by two processes at once (the resize command and a worker's
// finisher, or two workers): exactly one switches; the other must not reset the checkpoints to the cut
// again (the new layout's partitions may already have applied past it).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { activeLayout, beginResize, drainingLayout, migrate, switchLayout } from "../ledger/index.ts";
import { connectPostgres, type Sql } from "../src/platform/db.ts";
import { dropTestDatabase, testContext, type TestContext } from "./support/context.ts";

let ctx: TestContext;
let sql: Sql;

beforeAll(async () => {
  ctx = await testContext();
  sql = connectPostgres(ctx.databaseUrl, { max: 6, application: "test-resize-switch" });
  await migrate(sql, ctx.env);
});
afterAll(async () => {
  await sql?.end({ timeout: 5 });
  if (ctx) await dropTestDatabase(ctx);
});

describe("switching a drained resize", () => {
  it("two switches at once: one switches, the other finds it done and leaves the checkpoints alone; a switch with a partition behind waits", async () => {
    // Four partitions applied up to 40 + p; the resize to 6 is cut at 50.
    for (let p = 0; p < 4; p++) await sql`insert into partition_checkpoints (partition, last_seq, lease_epoch) values (${p}, ${40 + p}, 3)`;
    await beginResize(sql, 1, 6, 4, 50);
    const layout = (await drainingLayout(sql))!;
    // Partition 3's subject ends at 45: not drained yet.
    const last = new Map([0, 1, 2, 3].map((p) => [p, p === 3 ? 45 : 40 + p]));
    expect(await switchLayout(sql, layout, last)).toEqual({ behind: [3], switched: false });
    expect(await activeLayout(sql)).toBeNull();
    last.set(3, 43);
    const results = await Promise.all([switchLayout(sql, layout, last), switchLayout(sql, layout, last)]);
    expect(results.map((r) => r.switched).sort()).toEqual([false, true]);
    expect(results.every((r) => r.behind.length === 0)).toBe(true);
    expect(await activeLayout(sql)).toMatchObject({ generation: 1, partitions: 6, state: "active" });
    // Every checkpoint at the cut, every epoch up by one: once, not twice.
    const rows = await sql<Array<{ partition: number; last_seq: number; lease_epoch: number }>>`
      select partition, last_seq::int as last_seq, lease_epoch::int as lease_epoch from partition_checkpoints order by partition`;
    expect(rows).toEqual(Array.from({ length: 6 }, (_, p) => ({ partition: p, last_seq: 50, lease_epoch: p < 4 ? 4 : 1 })));
    // The new layout's partition 0 applies past the cut; a late switch (a finisher that read the layout
    // as draining just before) leaves it there.
    await sql`update partition_checkpoints set last_seq = 57 where partition = 0`;
    expect(await switchLayout(sql, layout, last)).toEqual({ behind: [], switched: false });
    expect((await sql<[{ last_seq: number }]>`select last_seq::int as last_seq from partition_checkpoints where partition = 0`)[0].last_seq).toBe(57);
  });
});
