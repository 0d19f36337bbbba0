import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CATALOG_LOCK_TIMEOUT_MS } from "../cdc/catalog.ts";
import { parseLsn } from "../cdc/lsn.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { holdLock } from "./support/postgres.ts";
import { demoSources, type DemoSources } from "./support/cdc.ts";
import { eventually, harness, startInProcess, type Harness } from "./support/tally.ts";

/**
 * The catalog head locked by another session (a stuck admin transaction): a CDC reader recording a
 * catalog version waits for it a bounded time only. The session then fails (and restarts after its
 * backoff) without confirming past the transaction, its stop returns, and once the lock is gone
 * the version is recorded exactly once and the stream goes on.
 */
let ctx: TestContext;
let h: Harness;
let demo: DemoSources;
let tally: Awaited<ReturnType<typeof startInProcess>> | null = null;

const erp = () => tally!.readers.find((r) => r.name === "erp")!;
const head = async () => Number((await h.sql<[{ v: string }]>`select version::text as v from catalog_head`)[0].v);
const erpVersionsAbove = async (v: number) =>
  Number((await h.sql<[{ n: string }]>`select count(*)::text as n from catalog_versions where source = 'erp' and version > ${v}`)[0].n);
const walNow = async () => (await demo.erp<[{ lsn: string }]>`select pg_current_wal_lsn()::text as lsn`)[0].lsn;

const startCdc = async () => {
  tally = await startInProcess(ctx, ["cdc"], {}, demo.config);
  await eventually("the ERP streaming", async () => erp().streaming);
};

/** A session of its own holding the catalog head row locked, as a stuck admin transaction would. */
const lockHead = () => holdLock(ctx.databaseUrl, "select version from catalog_head for update");

beforeAll(async () => {
  ctx = await testContext();
  h = await harness(ctx);
  demo = await demoSources(ctx);
  await startCdc();
  // The snapshot's catalog is in, and the slot confirmed past it.
  await eventually("the snapshot's catalog version", async () => (await head()) >= 1);
});
afterAll(async () => {
  await tally?.close();
  await demo?.close();
  await h?.close();
});

describe("a locked catalog head", () => {
  it("fails the session after the bound without confirming past the price change; released, the version is recorded once", async () => {
    const start = await head();
    const lock = await lockHead();
    try {
      const reconnects = erp().metrics.reconnects;
      await demo.erp`update item_prices set amount = amount + 0.01 where item_no = '100012' and price_list = 'WEB'`;
      const afterPrice = await walNow();
      // The version's wait ends at the bound: the session fails (and restarts after its backoff) …
      await eventually("the session failing on the lock", async () => erp().metrics.reconnects > reconnects, CATALOG_LOCK_TIMEOUT_MS * 3);
      // … without confirming past the price change, whose version is not recorded.
      expect(parseLsn(erp().metrics.confirmedLsn)).toBeLessThan(parseLsn(afterPrice));
      expect(await head()).toBe(start);
    } finally {
      await lock.release();
    }
    // The slot re-sends it: recorded exactly once, and the stream goes on past it.
    await eventually("the version recorded", async () => (await head()) > start, 60_000);
    await demo.erp`update item_prices set amount = amount + 0.01 where item_no = '100013' and price_list = 'WEB'`;
    const afterNext = await walNow();
    await eventually("the next change recorded and confirmed", async () => {
      return (await erpVersionsAbove(start)) === 2 && parseLsn(erp().metrics.confirmedLsn) >= parseLsn(afterNext);
    });
    expect(await erpVersionsAbove(start)).toBe(2);
  }, 120_000);

  it("does not hang the reader's stop; after a restart the version is recorded exactly once and the stream goes on", async () => {
    const start = await head();
    const lock = await lockHead();
    let stopMs: number;
    let stopped: boolean;
    try {
      await demo.erp`update item_prices set amount = amount + 0.01 where item_no = '100014' and price_list = 'WEB'`;
      const afterPrice = await walNow();
      // The price change's version is waiting for the lock (its transaction was taken in, not confirmed).
      await new Promise((r) => setTimeout(r, 1000));
      expect(parseLsn(erp().metrics.confirmedLsn)).toBeLessThan(parseLsn(afterPrice));
      const t0 = Date.now();
      stopped = await erp().stop(CATALOG_LOCK_TIMEOUT_MS * 4);
      stopMs = Date.now() - t0;
      expect(parseLsn(erp().metrics.confirmedLsn)).toBeLessThan(parseLsn(afterPrice));
      expect(await head()).toBe(start);
    } finally {
      await lock.release();
    }
    // Stopped within the lock bound (and the backoff's cleanup), not whenever the lock goes.
    expect(stopped).toBe(true);
    expect(stopMs).toBeLessThan(CATALOG_LOCK_TIMEOUT_MS + 5000);
    await tally!.close();
    await startCdc();
    await eventually("the version recorded after the restart", async () => (await head()) > start, 60_000);
    await demo.erp`update item_prices set amount = amount + 0.01 where item_no = '100015' and price_list = 'WEB'`;
    const afterNext = await walNow();
    await eventually("the next change recorded and confirmed", async () => {
      return (await erpVersionsAbove(start)) === 2 && parseLsn(erp().metrics.confirmedLsn) >= parseLsn(afterNext);
    });
    const rows = await h.sql<Array<{ ref: string }>>`select source_ref as ref from catalog_versions where source = 'erp' and version > ${start}`;
    expect(new Set(rows.map((r) => r.ref)).size).toBe(2);
  }, 120_000);
});
