import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { findSource } from "../cdc/index.ts";
import { openSink, type MovementRow } from "../cdc/writeBackSinks.ts";
import { createLogger } from "../src/platform/index.ts";
import { demoSources, type DemoSources } from "./support/cdc.ts";
import { testContext, type TestContext } from "./support/context.ts";

let ctx: TestContext;
let demo: DemoSources;
const log = createLogger("test-writeback-time", process.env.TALLY_LOG_LEVEL ?? "warn");
const SLOT = "wb_commit_time";

beforeAll(async () => {
  ctx = await testContext();
  demo = await demoSources(ctx);
}, 120_000);
afterAll(async () => {
  if (demo) {
    await demo.erp`select pg_drop_replication_slot(${SLOT}) where exists (select from pg_replication_slots where slot_name = ${SLOT})`;
    await demo.close();
  }
});

const movement = (id: string): MovementRow => ({
  command_id: id,
  leg: 0,
  item_no: "100001",
  location: "S01",
  qty: "-1",
  uom: "EA",
  movement: "adjust",
  unit_cost: null,
  value: null,
  currency: null,
  occurred_at: new Date().toISOString(),
  source_system: "pos",
  source_ref: id,
});

describe("write-back transactions in the ERP's WAL", () => {
  it("each carries its own commit time, not the session's first (logical decoding reports the origin's timestamp)", async () => {
    const source = findSource(demo.config, "erp", ctx.env);
    await demo.erp`select pg_create_logical_replication_slot(${SLOT}, 'test_decoding')`;
    const sink = openSink(source, log);
    const sent: Array<number> = [];
    try {
      // One writer session, three batches two seconds apart (the writer keeps its connection between batches).
      for (let i = 0; i < 3; i++) {
        if (i > 0) await new Promise((r) => setTimeout(r, 2000));
        sent.push(Date.now());
        await sink.send({ kind: "movements", rows: [movement(`wb-time-${i}`)] });
      }
    } finally {
      await sink.close();
    }
    // What a logical consumer of the ERP (Tally's own reader, or any other) is told of each commit.
    const changes = await demo.erp<Array<{ data: string }>>`
      select data from pg_logical_slot_peek_changes(${SLOT}, null, null, 'include-timestamp', 'on', 'skip-empty-xacts', 'on')`;
    const commits = changes.filter((c) => c.data.startsWith("COMMIT")).map((c) => Date.parse(/\(at (.+)\)/.exec(c.data)![1]!));
    expect(commits).toHaveLength(3);
    // Each near its send, so two seconds apart: untouched, the second and third repeat the first's time.
    commits.forEach((at, i) => {
      expect(Math.abs(at - sent[i]!)).toBeLessThan(1500);
    });
    expect(commits[1]! - commits[0]!).toBeGreaterThanOrEqual(1000);
    expect(commits[2]! - commits[1]!).toBeGreaterThanOrEqual(1000);
  }, 60_000);
});
