import { afterAll, beforeAll, describe, expect, it } from "vitest";
import postgres from "postgres";
import { RowView, type Change, type ItemDefinition } from "../src/contract/mapping.ts";
import { decodeTallyConfig } from "../src/platform/configFile.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { eventually, harness, readStream, startInProcess, type Harness } from "./support/tally.ts";

/**
 * How the reader decodes what pgoutput sends: exact numerics, timestamps with their zone, unchanged
 * TOAST values, old rows without REPLICA IDENTITY FULL, schema changes mid-stream; and the idle-slot
 * guard. Mappings record what they saw in `seen`.
 */
const seen: Array<{ table: string; op: string; values: Record<string, unknown> }> = [];

const SOURCE_SQL = `
  create table items (item_no text primary key, sku text not null);
  insert into items values ('I-1', 'SKU-E1');
  create table typed (id int primary key, amount numeric(30,6), big bigint, at timestamptz, flag boolean, doc jsonb);
  create table notes (id int primary key, item_no text not null, qty int not null, body text);
  create table notes_full (id int primary key, item_no text not null, qty int not null, body text);
  alter table notes_full replica identity full;
  create table lines (id int primary key, item_no text not null, qty int not null, status text not null);
  create table receipts (id serial primary key, item_no text not null, qty int not null);
  create publication tally_edges for table items, typed, notes, notes_full, lines, receipts;
`;

const record = (c: Change, values: Record<string, unknown>) => {
  seen.push({ table: c.table, op: c.op, values });
  return [];
};

const config = decodeTallyConfig({
  channels: { web: { locations: ["DC1"] } },
  sources: {
    edges: {
      publication: "tally_edges",
      heartbeatSeconds: 3600, // no heartbeats: the idle test relies on keepalives alone
      statusSeconds: 1,
      tables: {
        "public.items": {
          map: (c: Change) => ({
            items: [
              {
                sku: c.new!.text("sku"),
                kind: "stock",
                baseUnit: "EA",
                identifiers: [{ system: "item_no", id: c.new!.text("item_no") }],
              } satisfies ItemDefinition,
            ],
          }),
        },
        "public.typed": {
          map: (c: Change) =>
            record(c, {
              amount: c.new!.decimal("amount"),
              big: c.new!.text("big"),
              at: c.new!.timestamp("at"),
              flag: c.new!.bool("flag"),
              doc: c.new!.text("doc"),
            }),
        },
        // Reads only small columns: an unchanged TOASTed body does not matter.
        "public.notes": {
          map: (c: Change) =>
            c.op === "update"
              ? [{ type: "receive", item: { system: "item_no", id: c.new!.text("item_no") }, location: "DC1", qty: c.new!.int("qty") }]
              : record(c, { bodySent: c.new?.has("body") ?? false }),
        },
        // Reads the body on update: with REPLICA IDENTITY FULL the unchanged value comes from the old row.
        "public.notes_full": {
          oldRow: "full",
          map: (c: Change) => record(c, { body: c.new!.text("body").length, oldQty: c.old?.int("qty") ?? null }),
        },
        // Needs the old status but the table has REPLICA IDENTITY DEFAULT: a configuration error.
        "public.lines": {
          oldRow: "full",
          map: (c: Change) => record(c, { from: c.old!.text("status"), to: c.new!.text("status") }),
        },
        "public.receipts": {
          map: (c: Change) => [{ type: "receive", item: { system: "item_no", id: c.new!.text("item_no") }, location: "DC1", qty: c.new!.int("qty") }],
        },
      },
      snapshot: [
        {
          table: "public.items",
          key: ["item_no"],
          map: (row: RowView) => ({
            items: [{ sku: row.text("sku"), kind: "stock", baseUnit: "EA", identifiers: [{ system: "item_no", id: row.text("item_no") }] }],
          }),
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
  await admin.unsafe(`create database edges_${ctx.env}`);
  await admin.unsafe(`create database other_${ctx.env}`);
  await admin.end();
  const url = new URL(ctx.adminUrl);
  url.pathname = `/edges_${ctx.env}`;
  process.env.TALLY_SOURCE_EDGES_URL = url.toString();
  source = postgres(url.toString(), { max: 2, onnotice: () => {} });
  await source.unsafe(SOURCE_SQL);
  h = await harness(ctx);
  tally = await startInProcess(ctx, ["worker", "relay", "cdc"], {}, config);
  await eventually("the source to stream", async () => tally.readers[0]?.streaming === true);
});
afterAll(async () => {
  await tally?.close();
  await source?.end();
  await h?.close();
  delete process.env.TALLY_SOURCE_EDGES_URL;
});

const deadLetters = async () =>
  (await readStream(h, h.topology.dlqStream, h.topology.dlqSubject("edges"))).map(
    (l) => l.data as { reason: string; payload: { table: string }; context: { code: string } },
  );
const onHand = async (sku: string) => {
  const [row] = await h.sql<[{ qty: number } | undefined]>`select qty from balances where sku = ${sku} and location = 'DC1' and bucket = 'on_hand'`;
  return row?.qty ?? 0;
};

describe("CDC decoding", () => {
  it("keeps numerics exact, int8 beyond 2^53 exact, and timestamps to the microsecond with their zone", async () => {
    await source`
      insert into typed values (1, 12345678901234.123456, 9007199254740993, '2026-11-26 10:00:00.123456+05:30', true, '{"a": [1, 2]}')`;
    await eventually("the typed row", async () => seen.some((s) => s.table === "public.typed"));
    const v = seen.find((s) => s.table === "public.typed")!.values;
    expect(v.amount).toBe("12345678901234.123456");
    expect(v.big).toBe("9007199254740993");
    expect(v.flag).toBe(true);
    expect(JSON.parse(v.doc as string)).toEqual({ a: [1, 2] });
    // The same instant, microseconds kept, offset explicit.
    const at = v.at as string;
    expect(at).toMatch(/^2026-11-26T\d{2}:\d{2}:00\.123456[+-]\d{2}:\d{2}$/);
    expect(Date.parse(at)).toBe(Date.parse("2026-11-26T04:30:00.123Z"));
  });

  it("handles unchanged TOAST values: absent under REPLICA IDENTITY DEFAULT, taken from the old row under FULL", async () => {
    const big = `(select string_agg(md5(i::text), '') from generate_series(1, 2000) i)`;
    await source.unsafe(`insert into notes values (1, 'I-1', 0, ${big})`);
    await source.unsafe(`insert into notes_full values (1, 'I-1', 0, ${big})`);
    const before = await onHand("SKU-E1");
    await source`update notes set qty = 5 where id = 1`; // body is TOASTed and unchanged: not sent
    await source`update notes_full set qty = 6 where id = 1`;
    await eventually("the update applied without the body", async () => (await onHand("SKU-E1")) === before + 5);
    await eventually("notes_full update seen", async () => seen.some((s) => s.table === "public.notes_full" && s.op === "update"));
    const full = seen.find((s) => s.table === "public.notes_full" && s.op === "update")!.values;
    expect(full).toEqual({ body: 64_000, oldQty: 0 });
    // The mapping that does not read the body was not disturbed by its absence…
    const letters = await deadLetters();
    expect(letters.some((l) => l.payload.table === "public.notes")).toBe(false);
    // …and one that reads an unsent value gets an error naming the column and why.
    expect(() => new RowView("public.notes", "new", { body: undefined }).text("body")).toThrow(
      /new\.body: value not sent by Postgres \(unchanged TOAST/,
    );
  });

  it("dead-letters an update whose mapping needs old values the table does not send (REPLICA IDENTITY DEFAULT)", async () => {
    await source`insert into lines values (1, 'I-1', 1, 'placed')`;
    await source`update lines set status = 'cancelled' where id = 1`;
    await eventually("the dead letter", async () => (await deadLetters()).some((l) => l.context.code === "old_row_missing"));
    const letter = (await deadLetters()).find((l) => l.context.code === "old_row_missing")!;
    expect(letter.reason).toContain("REPLICA IDENTITY FULL");
    expect(letter.payload.table).toBe("public.lines");
  });

  it("follows schema changes mid-stream: an added column is fine, a renamed column the mapping needs is dead-lettered, later rows flow", async () => {
    const before = await onHand("SKU-E1");
    await source`alter table receipts add column note text`;
    await source`insert into receipts (item_no, qty, note) values ('I-1', 2, 'hello')`;
    await eventually("the receipt after the added column", async () => (await onHand("SKU-E1")) === before + 2);
    await source`alter table receipts rename column qty to quantity`;
    await source`insert into receipts (item_no, quantity) values ('I-1', 3)`;
    await eventually("the missing column dead letter", async () =>
      (await deadLetters()).some((l) => l.context.code === "missing_column" && l.reason.includes("new.qty")),
    );
    await source`alter table receipts rename column quantity to qty`;
    await source`insert into receipts (item_no, qty) values ('I-1', 4)`;
    await eventually("later rows flow", async () => (await onHand("SKU-E1")) === before + 6);
  });

  it("dead-letters a TRUNCATE of a captured table instead of ignoring it", async () => {
    await source`truncate notes`;
    await eventually("the truncate dead letter", async () => (await deadLetters()).some((l) => l.context.code === "truncate"));
  });
});

describe("the idle-source guard", () => {
  it("advances an idle source's slot while other databases on the server write WAL (keepalives, no heartbeats)", async () => {
    const slot = async () => {
      const [row] = await source<[{ lsn: string }]>`
        select confirmed_flush_lsn::text as lsn from pg_replication_slots where slot_name = ${`tally_${ctx.env}_edges`}`;
      return row!.lsn;
    };
    const toBig = (lsn: string) => {
      const [hi, lo] = lsn.split("/");
      return (BigInt(`0x${hi}`) << 32n) | BigInt(`0x${lo}`);
    };
    const url = new URL(ctx.adminUrl);
    url.pathname = `/other_${ctx.env}`;
    const other = postgres(url.toString(), { max: 1, onnotice: () => {} });
    try {
      await other`create table churn (id serial primary key, pad text)`;
      const start = toBig(await slot());
      let otherLsn = 0n;
      for (let i = 0; i < 20; i++) {
        await other`insert into churn (pad) select md5(g::text) from generate_series(1, 200) g`;
        const [{ lsn }] = await other<[{ lsn: string }]>`select pg_current_wal_lsn()::text as lsn`;
        otherLsn = toBig(lsn);
      }
      await eventually("the idle slot to pass the other database's writes", async () => toBig(await slot()) >= otherLsn, 30_000);
      expect(toBig(await slot())).toBeGreaterThan(start);
    } finally {
      await other.end();
    }
  });
});
