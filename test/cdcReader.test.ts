import { afterAll, beforeAll, describe, expect, it } from "vitest";
import postgres from "postgres";
import { MappingError, type Change, type ItemDefinition, type RowView } from "../src/contract/mapping.ts";
import { decodeTallyConfig, type TallyConfig } from "../src/platform/configFile.ts";
import { ProcessMetrics } from "../src/app/processMetrics.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { eventually, harness, readStream, startInProcess, type Harness } from "./support/tally.ts";

// A minimal source, independent of the demo schemas: an item master, receipts, opening stock.
const SOURCE_SQL = `
  create table items (item_no text primary key, sku text not null, kind text not null default 'stock', case_qty int);
  alter table items replica identity full;
  create table receipts (id bigserial primary key, item_no text not null, location text not null, qty numeric(12,3) not null, uom text not null default 'EA', at timestamptz not null default now());
  create table stock (item_no text, location text, qty numeric(12,3) not null, primary key (item_no, location));
  insert into items values ('I-1', 'SKU-A', 'stock', 12), ('I-2', 'SKU-B', 'stock', null), ('GC', 'GIFT', 'non_inventory', null);
  insert into stock values ('I-1', 'DC1', 100), ('I-2', 'DC1', 7);
  create publication tally_src for table items, receipts, stock;
`;

const itemFrom = (row: RowView): ItemDefinition => ({
  sku: row.text("sku"),
  kind: row.text("kind") as "stock" | "non_inventory",
  baseUnit: "EA",
  units: row.optionalText("case_qty") ? { CASE: row.int("case_qty") } : ({} as Record<string, number>),
  identifiers: [{ system: "item_no", id: row.text("item_no") }],
});

const config: TallyConfig = decodeTallyConfig({
  channels: { web: { locations: ["DC1"], buffer: 0 } },
  sources: {
    src: {
      publication: "tally_src",
      heartbeatSeconds: 1,
      statusSeconds: 5,
      // Any lag at all raises the alert: the test below waits for one.
      lagAlertBytes: 1,
      tables: {
        "public.items": {
          oldRow: "full",
          map: (c: Change) => (c.op === "delete" ? { removeItems: [c.old!.text("sku")] } : { items: [itemFrom(c.new!)] }),
        },
        "public.receipts": {
          oldRow: "key",
          map: (c: Change) => {
            if (c.op !== "insert") throw new MappingError("op", "receipts are immutable", "unsupported_change");
            const r = c.new!;
            return [
              {
                type: "receive",
                item: { system: "item_no", id: r.text("item_no") },
                location: r.text("location"),
                qty: r.decimal("qty"),
                uom: r.text("uom"),
                occurredAt: r.timestamp("at"),
              },
            ];
          },
        },
        "public.stock": { oldRow: "key", map: () => [] },
      },
      snapshot: [
        { table: "public.items", key: ["item_no"], map: (row: RowView) => ({ items: [itemFrom(row)] }) },
        {
          table: "public.stock",
          key: ["item_no", "location"],
          map: (row: RowView) => [
            { type: "count", item: { system: "item_no", id: row.text("item_no") }, location: row.text("location"), qty: row.decimal("qty") },
          ],
        },
      ],
    },
  },
});

let ctx: TestContext;
let h: Harness;
let source: postgres.Sql;
let tally: Awaited<ReturnType<typeof startInProcess>>;

beforeAll(async () => {
  ctx = await testContext();
  const admin = postgres(ctx.adminUrl, { max: 1, onnotice: () => {} });
  const db = `src_${ctx.env}`;
  await admin.unsafe(`create database ${db}`);
  await admin.end();
  const url = new URL(ctx.adminUrl);
  url.pathname = `/${db}`;
  process.env.TALLY_SOURCE_SRC_URL = url.toString();
  source = postgres(url.toString(), { max: 2, onnotice: () => {} });
  await source.unsafe(SOURCE_SQL);
  h = await harness(ctx);
  tally = await startInProcess(ctx, ["worker", "relay", "cdc"], {}, config);
});
afterAll(async () => {
  await tally?.close();
  await source?.end();
  await h?.close();
  delete process.env.TALLY_SOURCE_SRC_URL;
});

const onHand = async (sku: string, location = "DC1") => {
  const [row] = await h.sql<[{ qty: number } | undefined]>`
    select qty from balances where sku = ${sku} and location = ${location} and bucket = 'on_hand'`;
  return row?.qty;
};

describe("the CDC reader", () => {
  it("takes the initial snapshot: item master into the crosswalk, opening stock as counts", async () => {
    await eventually("opening balances", async () => (await onHand("SKU-A")) === 100 && (await onHand("SKU-B")) === 7);
    const items = await h.sql`select sku from items order by sku`;
    expect(items.map((r) => r.sku)).toEqual(["GIFT", "SKU-A", "SKU-B"]);
    const ids = await h.sql<Array<{ command_id: string }>>`select command_id from command_outcomes where sku = 'SKU-A'`;
    expect(ids[0]!.command_id).toMatch(/^src:snapshot:[0-9A-F]+\/[0-9A-F]+:public\.stock:I-1\/DC1$/);
  });

  it("streams inserts as commands with units converted, after the snapshot", async () => {
    await source`insert into receipts (item_no, location, qty, uom) values ('I-1', 'DC1', 3, 'CASE'), ('I-2', 'DC1', 5, 'EA')`;
    await eventually("receipts applied", async () => (await onHand("SKU-A")) === 136 && (await onHand("SKU-B")) === 12);
    const [entry] = await h.sql<[{ command_id: string; delta: number; source_system: string }]>`
      select command_id, delta, source_system from ledger_entries where sku = 'SKU-A' and movement = 'receive'`;
    expect(entry).toMatchObject({ delta: 36, source_system: "src" });
    expect(entry!.command_id).toMatch(/^src:[0-9A-F]+\/[0-9A-F]+:0$/);
  });

  it("makes a new ERP item usable at once, and dead-letters an unknown item without blocking later rows", async () => {
    await source.begin(async (tx) => {
      await tx`insert into items values ('I-3', 'SKU-C', 'stock', null)`;
      await tx`insert into receipts (item_no, location, qty) values ('I-3', 'DC1', 4)`;
    });
    await source`insert into receipts (item_no, location, qty) values ('NOPE', 'DC1', 1)`;
    await source`insert into receipts (item_no, location, qty) values ('I-2', 'DC1', 1)`;
    await eventually("later rows applied", async () => (await onHand("SKU-C")) === 4 && (await onHand("SKU-B")) === 13);
    await eventually("the dead letter", async () => {
      const letters = await readStream(h, h.topology.dlqStream, h.topology.dlqSubject("src"));
      return letters.some((l) => (l.data as { reason: string }).reason.includes("NOPE"));
    });
    const letters = await readStream(h, h.topology.dlqStream, h.topology.dlqSubject("src"));
    const letter = letters.find((l) => (l.data as { reason: string }).reason.includes("NOPE"))!.data as {
      reason: string;
      payload: { table: string; new: Record<string, string> };
      context: { lsn: string; table: string; code: string };
    };
    expect(letter.reason).toContain("item.item_no: unknown item");
    expect(letter.payload.table).toBe("public.receipts");
    expect(letter.payload.new.item_no).toBe("NOPE");
    expect(letter.context.code).toBe("unknown_item");
    expect(letter.context.lsn).toMatch(/\//);
  });

  it("skips and counts non-inventory items; rejects a non-integral quantity in base units", async () => {
    await source`insert into receipts (item_no, location, qty) values ('GC', 'DC1', 2)`;
    await source`insert into receipts (item_no, location, qty) values ('I-2', 'DC1', 1.5)`;
    await eventually("skipped and dead-lettered", async () => {
      const reader = tally.readers[0]!;
      return reader.metrics.skipped >= 1 && (reader.metrics.deadLettersByReason.non_integral_qty ?? 0) >= 1;
    });
    expect(await h.sql`select 1 from balances where sku = 'GIFT'`).toHaveLength(0);
  });

  it("confirms the slot only up to what JetStream has acknowledged, and keeps it moving", async () => {
    const reader = tally.readers[0]!;
    const slot = async () => {
      const [row] = await source<[{ lsn: string }]>`
        select confirmed_flush_lsn::text as lsn from pg_replication_slots where slot_name = ${`tally_${ctx.env}_src`}`;
      return row!.lsn;
    };
    const before = await slot();
    await source`insert into receipts (item_no, location, qty) values ('I-2', 'DC1', 1)`;
    await eventually("the slot to advance", async () => (await slot()) !== before);
    expect(reader.metrics.confirmedLsn).not.toBe("0/0");
  });

  it("exposes per-table event counts, dead letters by reason and slot lag as metrics, and raises a lag alert", async () => {
    const alerts: Array<{ kind: string; source: string; lagBytes: number }> = [];
    const sub = h.nats.nc.subscribe(h.topology.eventSubject("alert"), {
      callback: (_e, m) => {
        alerts.push(m.json());
      },
    });
    try {
      await eventually(
        "a cdc_lag alert",
        async () => {
          await source`insert into receipts (item_no, location, qty) values ('I-2', 'DC1', 1)`;
          return alerts.some((a) => a.kind === "cdc_lag" && a.source === "src" && a.lagBytes > 1);
        },
        30_000,
      );
    } finally {
      sub.unsubscribe();
    }
    const metrics = new ProcessMetrics({ nats: h.nats, topology: h.topology, readers: tally.readers });
    const text = await metrics.registry.metrics();
    expect(text).toMatch(/tally_cdc_changes_total\{source="src",table="public\.receipts"\} [1-9]\d*/);
    expect(text).toMatch(/tally_cdc_dead_letters_total\{source="src",reason="unknown_item"\} [1-9]/);
    expect(text).toMatch(/tally_cdc_skipped_non_inventory_total\{source="src"\} [1-9]/);
    expect(text).toMatch(/tally_cdc_slot_lag_bytes\{source="src"\} \d+/);
  });
});
