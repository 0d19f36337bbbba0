import { afterAll, beforeAll, describe, expect, it } from "vitest";
import postgres from "postgres";
import type { Change, ItemDefinition, RowView } from "../src/contract/mapping.ts";
import { verifyLedger } from "../ledger/index.ts";
import { decodeTallyConfig } from "../src/platform/configFile.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { eventually, harness, runTally, startInProcess, tallyEnv, type Harness } from "./support/tally.ts";
import { rng } from "./support/workload.ts";

/**
 * The snapshot hand-off: an ERP-like source whose every receipt also updates its stock table, in one
 * transaction, written continuously while the reader takes its initial snapshot of that stock table.
 * A transaction committed before the slot's consistent point is in the snapshot's counts and not in
 * the stream; one after it is in the stream and not in the counts. If any were missed or doubled,
 * the ledger's on-hand would differ from the source's stock table.
 */
const ITEMS = 200;
const LOCATIONS = 100;

const item = (row: RowView): ItemDefinition => ({
  sku: row.text("sku"),
  kind: "stock",
  baseUnit: "EA",
  identifiers: [{ system: "item_no", id: row.text("item_no") }],
});

const config = decodeTallyConfig({
  channels: { web: { locations: ["L000"] } },
  sources: {
    erp: {
      publication: "tally_snap",
      heartbeatSeconds: 1,
      statusSeconds: 1,
      tables: {
        "public.items": { map: (c: Change) => ({ items: [item(c.new!)] }) },
        "public.receipts": {
          map: (c: Change) => [
            { type: "receive", item: { system: "item_no", id: c.new!.text("item_no") }, location: c.new!.text("location"), qty: c.new!.int("qty") },
          ],
        },
        // Stock rows change only as a consequence of receipts, which are captured themselves.
        "public.stock": { map: () => [] },
      },
      snapshot: [
        { table: "public.items", key: ["item_no"], map: (row: RowView) => ({ items: [item(row)] }) },
        {
          table: "public.stock",
          key: ["item_no", "location"],
          map: (row: RowView) => [
            { type: "count", item: { system: "item_no", id: row.text("item_no") }, location: row.text("location"), qty: row.int("qty") },
          ],
        },
      ],
    },
  },
});

let ctx: TestContext;
let h: Harness;
let source: postgres.Sql;

beforeAll(async () => {
  ctx = await testContext();
  const admin = postgres(ctx.adminUrl, { max: 1, onnotice: () => {} });
  await admin.unsafe(`create database snap_${ctx.env}`);
  await admin.end();
  const url = new URL(ctx.adminUrl);
  url.pathname = `/snap_${ctx.env}`;
  process.env.TALLY_SOURCE_ERP_URL = url.toString();
  source = postgres(url.toString(), { max: 4, onnotice: () => {} });
  await source.unsafe(`
    create table items (item_no text primary key, sku text not null);
    create table stock (item_no text, location text, qty int not null, primary key (item_no, location));
    create table receipts (id bigserial primary key, item_no text not null, location text not null, qty int not null);
    insert into items select 'I' || i, 'SKU-' || i from generate_series(1, ${ITEMS}) i;
    insert into stock select 'I' || i, 'L' || lpad(l::text, 3, '0'), (i * l) % 50 from generate_series(1, ${ITEMS}) i, generate_series(0, ${LOCATIONS - 1}) l;
    create publication tally_snap for table items, stock, receipts;
  `);
  h = await harness(ctx);
});
afterAll(async () => {
  await source?.end();
  await h?.close();
  delete process.env.TALLY_SOURCE_ERP_URL;
});

describe("the initial snapshot", () => {
  it("hands off to the stream exactly once while receipts keep committing", async () => {
    const pick = rng(99);
    let writing = true;
    let duringSnapshot = 0;
    let written = 0;
    const writer = (async () => {
      while (writing) {
        const i = 1 + Math.floor(pick() * ITEMS);
        const loc = `L${String(Math.floor(pick() * LOCATIONS)).padStart(3, "0")}`;
        const q = 1 + Math.floor(pick() * 5);
        await source.begin(async (tx) => {
          await tx`insert into receipts (item_no, location, qty) values (${`I${i}`}, ${loc}, ${q})`;
          await tx`update stock set qty = qty + ${q} where item_no = ${`I${i}`} and location = ${loc}`;
        });
        written++;
        const [state] = await h.sql<[{ reading: boolean } | undefined]>`
          select snapshot_lsn is not null and snapshot_done_at is null as reading from cdc_sources where source = 'erp'`;
        if (state?.reading) duringSnapshot++;
      }
    })();
    await new Promise((r) => setTimeout(r, 300)); // receipts before the slot exists, too
    const tally = await startInProcess(ctx, ["worker", "relay", "cdc"], {}, config);
    try {
      await eventually("the snapshot to finish", async () => (tally.readers[0]?.metrics.snapshots ?? 0) >= 1, 120_000);
      await new Promise((r) => setTimeout(r, 1000)); // and receipts after it
      writing = false;
      await writer;
      expect(duringSnapshot).toBeGreaterThan(0);
      expect(written).toBeGreaterThan(duringSnapshot);

      const expected = await source<Array<{ sku: string; location: string; qty: number }>>`
        select 'SKU-' || substr(item_no, 2) as sku, location, qty from stock`;
      const want = new Map(expected.map((r) => [`${r.sku}|${r.location}`, r.qty]));
      await eventually(
        "on hand to equal the source's stock table everywhere",
        async () => {
          const rows = await h.sql<Array<{ sku: string; location: string; qty: number }>>`
          select sku, location, qty from balances where bucket = 'on_hand'`;
          const have = new Map(rows.map((r) => [`${r.sku}|${r.location}`, r.qty]));
          // A count of 0 on an empty location writes no leg, hence no balance row.
          return [...want].every(([key, qty]) => (have.get(key) ?? 0) === qty) && rows.every((r) => want.has(`${r.sku}|${r.location}`));
        },
        120_000,
      );
      expect((await verifyLedger(h.sql)).problem).toBeNull();
    } finally {
      writing = false;
      await writer;
      await tally.close();
    }
  });

  it("`tally source resnapshot` snapshots again while receipts keep committing, placing the counts exactly at its position", async () => {
    const tally = await startInProcess(ctx, ["worker", "relay", "cdc"], {}, config);
    const pick = rng(7);
    let writing = true;
    const writer = (async () => {
      while (writing) {
        const i = 1 + Math.floor(pick() * ITEMS);
        const loc = `L${String(Math.floor(pick() * LOCATIONS)).padStart(3, "0")}`;
        const q = 1 + Math.floor(pick() * 5);
        await source.begin(async (tx) => {
          await tx`insert into receipts (item_no, location, qty) values (${`I${i}`}, ${loc}, ${q})`;
          await tx`update stock set qty = qty + ${q} where item_no = ${`I${i}`} and location = ${loc}`;
        });
      }
    })();
    try {
      await eventually("streaming", async () => tally.readers[0]?.streaming === true);
      const [{ before }] = await h.sql<[{ before: string }]>`select snapshot_lsn as before from cdc_sources where source = 'erp'`;
      // A slot waits for every transaction running on the server, other test files' too: give it time,
      // and fail with the CLI's own words rather than a test timeout.
      const result = await runTally(["source", "resnapshot", "erp", "--timeout", "150"], tallyEnv(ctx));
      expect(result.output).toContain("re-snapshot done");
      expect(result.code).toBe(0);
      writing = false;
      await writer;
      const [{ after }] = await h.sql<[{ after: string }]>`select snapshot_lsn as after from cdc_sources where source = 'erp'`;
      expect(after).not.toBe(before);
      const [{ counts }] = await h.sql<[{ counts: number }]>`
        select count(*)::int as counts from command_outcomes where command_id like ${`erp:snapshot:${after}:public.stock:%`}`;
      await eventually("the new counts applied", async () => {
        const [{ n }] = await h.sql<[{ n: number }]>`
          select count(*)::int as n from command_outcomes where command_id like ${`erp:snapshot:${after}:public.stock:%`}`;
        return n === ITEMS * LOCATIONS;
      });
      expect(counts).toBeGreaterThan(0);
      const expected = await source<Array<{ sku: string; location: string; qty: number }>>`
        select 'SKU-' || substr(item_no, 2) as sku, location, qty from stock`;
      const want = new Map(expected.map((r) => [`${r.sku}|${r.location}`, r.qty]));
      await eventually(
        "on hand to equal the source's stock table everywhere",
        async () => {
          const rows = await h.sql<Array<{ sku: string; location: string; qty: number }>>`
          select sku, location, qty from balances where bucket = 'on_hand'`;
          const have = new Map(rows.map((r) => [`${r.sku}|${r.location}`, r.qty]));
          return [...want].every(([key, qty]) => (have.get(key) ?? 0) === qty);
        },
        120_000,
      );
      expect((await verifyLedger(h.sql)).problem).toBeNull();
    } finally {
      writing = false;
      await writer;
      await tally.close();
    }
  }, 240_000);
});
