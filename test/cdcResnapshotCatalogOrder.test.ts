import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CATALOG_LOCK_TIMEOUT_MS } from "../cdc/catalog.ts";
import { findSource } from "../cdc/index.ts";
import { DEMO_PRICES } from "../cdc/demo/seed.ts";
import { parseLsn } from "../cdc/lsn.ts";
import type { TallyConfig } from "../src/platform/configFile.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { holdLock } from "./support/postgres.ts";
import { demoSources, type DemoSources } from "./support/cdc.ts";
import { eventually, harness, startInProcess, type Harness } from "./support/tally.ts";

/**
 * A re-snapshot's catalog version among the price-only versions still queued behind the stream:
 * it comes after those of the transactions committed before its consistent point and before those
 * after it, so a channel following catalog versions never sees the snapshot's prices and then older
 * ones. The catalog head is locked (briefly, within the recording's lock bound) while the
 * re-snapshot reads, so the price versions are still queued when its read ends.
 */
let ctx: TestContext;
let h: Harness;
let demo: DemoSources;
let tally: Awaited<ReturnType<typeof startInProcess>> | null = null;

const CHANGED = ["100016", "100017", "100018"];
const erp = () => tally!.readers.find((r) => r.name === "erp")!;
const head = async () => Number((await h.sql<[{ v: string }]>`select version::text as v from catalog_head`)[0].v);

beforeAll(async () => {
  ctx = await testContext();
  h = await harness(ctx);
  demo = await demoSources(ctx);
  // Re-snapshot requests are looked at every second.
  const base = demo.config;
  const config = {
    ...base,
    sources: { ...base.sources, erp: { ...base.sources.erp!, heartbeatSeconds: 1, statusSeconds: 1 } },
  } as TallyConfig;
  tally = await startInProcess(ctx, ["cdc"], {}, config);
  await eventually("the ERP streaming", async () => erp().streaming);
  await eventually("the snapshot's catalog version", async () => (await head()) >= 1);
});
afterAll(async () => {
  await tally?.close();
  await demo?.close();
  await h?.close();
});

describe("a re-snapshot's catalog version", () => {
  it("is recorded after the queued price versions of transactions before its consistent point", async () => {
    const slot = findSource(demo.config, "erp", ctx.env).slot;
    /**
     * One try: the head locked (a table lock, which takes no transaction id, so the re-snapshot's
     * slot does not wait for it) while price-only transactions commit and a re-snapshot is asked
     * for; released once the re-snapshot's read has ended (its temporary slot came and went, or its
     * version waits for the head too). False when that took too long: creating the slot waits for
     * every transaction on the server, and the head may be held only within the recording's bound.
     */
    const lockedWhileReading = async (): Promise<boolean> => {
      const lock = await holdLock(ctx.databaseUrl, "lock table catalog_head in exclusive mode");
      try {
        // Price-only transactions: their versions queue on the catalog lane behind the locked head.
        for (const itemNo of CHANGED) await demo.erp`update item_prices set amount = amount + 0.07 where item_no = ${itemNo} and price_list = 'WEB'`;
        await h.sql`update cdc_sources set resnapshot_requested_at = now() where source = 'erp'`;
        let seen = false;
        for (const deadline = Date.now() + CATALOG_LOCK_TIMEOUT_MS - 1000; ; ) {
          const [row] = await demo.erp<
            [{ n: number }]
          >`select count(*)::int as n from pg_replication_slots where slot_name = ${`${slot}_resnapshot`}`;
          if (row.n > 0) seen = true;
          const [w] = await h.sql<[{ n: number }]>`
            select count(*)::int as n from pg_locks
             where database = (select oid from pg_database where datname = current_database()) and relation = 'catalog_head'::regclass and not granted`;
          if ((seen && row.n === 0) || w.n >= 2) break;
          if (Date.now() > deadline) return false;
          await new Promise((r) => setTimeout(r, 10));
        }
        await new Promise((r) => setTimeout(r, 200));
        return true;
      } finally {
        await lock.release();
        await eventually("the re-snapshot done", async () => {
          const [row] = await h.sql<
            [{ pending: boolean }]
          >`select resnapshot_requested_at is not null as pending from cdc_sources where source = 'erp'`;
          return !row.pending;
        });
      }
    };
    let start = await head();
    let tries = 0;
    while (!(await lockedWhileReading())) {
      // A slow slot (another session's long transaction on the server): try again.
      expect(++tries, "the re-snapshot's read never ended within the lock bound").toBeLessThan(3);
      start = await head();
    }
    const [{ snapshotLsn }] = await h.sql<[{ snapshotLsn: string }]>`select snapshot_lsn as "snapshotLsn" from cdc_sources where source = 'erp'`;
    // A price change after the consistent point, too.
    await demo.erp`update item_prices set amount = amount + 0.07 where item_no = '100019' and price_list = 'WEB'`;
    const [{ after }] = await demo.erp<[{ after: string }]>`select pg_current_wal_lsn()::text as after`;
    await eventually("the later price recorded and confirmed", async () => parseLsn(erp().metrics.confirmedLsn) >= parseLsn(after));

    const versions = await h.sql<Array<{ version: number; ref: string }>>`
      select version::int, source_ref as ref from catalog_versions where source = 'erp' and version > ${start} order by version`;
    const snapshot = versions.find((v) => v.ref === `snapshot:${snapshotLsn}`);
    expect(snapshot, JSON.stringify(versions)).toBeDefined();
    const streamed = versions.filter((v) => !v.ref.startsWith("snapshot:"));
    expect(streamed).toHaveLength(CHANGED.length + 1);
    // Version numbers follow source order: before the consistent point below the snapshot's, after it above.
    for (const v of streamed) expect(v.version < snapshot!.version, JSON.stringify(versions)).toBe(parseLsn(v.ref) < parseLsn(snapshotLsn));
    expect(streamed.filter((v) => v.version < snapshot!.version)).toHaveLength(CHANGED.length);

    // And the catalog holds the source's prices.
    const source = await demo.erp<Array<{ itemNo: string; amount: string }>>`
      select item_no as "itemNo", amount::text from item_prices where item_no = any(${[...CHANGED, "100019"]}) and price_list = 'WEB'`;
    const skuOf = new Map(DEMO_PRICES.map((p) => [p.itemNo, p.sku]));
    const ledger = await h.sql<Array<{ sku: string; amount: string }>>`
      select sku, amount::text from catalog_prices where price_list = 'WEB' and sku = any(${source.map((s) => skuOf.get(s.itemNo)!)})`;
    expect(new Map(ledger.map((r) => [r.sku, Number(r.amount)]))).toEqual(new Map(source.map((s) => [skuOf.get(s.itemNo)!, Number(s.amount)])));
    expect(source).toHaveLength(CHANGED.length + 1);
  }, 120_000);
});
