import { afterAll, beforeAll, describe, expect, it } from "vitest";
import postgres from "postgres";
import { pino } from "pino";
import { enableSource, formatStatuses, sourceStatus, type SourceStatus } from "../cdc/admin.ts";
import { findSource, parseLsn } from "../cdc/index.ts";
import type { Change, ItemDefinition, RowView } from "../src/contract/mapping.ts";
import { verifyLedger } from "../ledger/index.ts";
import { startTally } from "../src/app/roles.ts";
import { decodeTallyConfig } from "../src/platform/configFile.ts";
import { ProcessMetrics } from "../src/app/processMetrics.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { eventually, harness, readStream, runTally, tallyEnv, testSettings, type Harness } from "./support/tally.ts";

/**
 * What the reader does when the ground moves under it: its slot dropped behind its back (mid-stream,
 * or while Tally was stopped and then created again by `tally source enable`), a captured table
 * dropped and created again, and a first snapshot held up by long transactions. The source is an
 * ERP-like database whose every receipt also updates its stock table, so a re-snapshot's counts can
 * be checked against the ledger.
 */
const SOURCE_SQL = `
  create table items (item_no text primary key, sku text not null);
  create table stock (item_no text, location text, qty int not null, primary key (item_no, location));
  create table receipts (id bigserial primary key, item_no text not null, location text not null, qty int not null);
  insert into items select 'I' || i, 'SKU-L' || i from generate_series(1, 5) i;
  insert into stock select 'I' || i, 'DC1', 10 * i from generate_series(1, 5) i;
`;

const item = (row: RowView): ItemDefinition => ({
  sku: row.text("sku"),
  kind: "stock",
  baseUnit: "EA",
  identifiers: [{ system: "item_no", id: row.text("item_no") }],
});

// Slot and publication take their default names (tally_<env>_erp), as `tally source enable erp` makes them.
const config = decodeTallyConfig({
  channels: { web: { locations: ["DC1"] } },
  sources: {
    erp: {
      heartbeatSeconds: 1,
      statusSeconds: 1,
      tables: {
        "public.items": { map: (c: Change) => ({ items: [item(c.new!)] }) },
        "public.receipts": {
          map: (c: Change) => [
            { type: "receive", item: { system: "item_no", id: c.new!.text("item_no") }, location: c.new!.text("location"), qty: c.new!.int("qty") },
          ],
        },
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
let tally: Awaited<ReturnType<typeof startTally>> | null = null;
const logLines: Array<Record<string, unknown>> = [];

beforeAll(async () => {
  ctx = await testContext();
  const admin = postgres(ctx.adminUrl, { max: 1, onnotice: () => {} });
  await admin.unsafe(`create database loss_${ctx.env}`);
  await admin.end();
  const url = new URL(ctx.adminUrl);
  url.pathname = `/loss_${ctx.env}`;
  process.env.TALLY_SOURCE_ERP_URL = url.toString();
  source = postgres(url.toString(), { max: 4, onnotice: () => {} });
  await source.unsafe(SOURCE_SQL);
  await enableSource(source, resolved());
  h = await harness(ctx);
});
afterAll(async () => {
  await tally?.close();
  await source?.end();
  await h?.close();
  delete process.env.TALLY_SOURCE_ERP_URL;
});

const resolved = () => findSource(config, "erp", ctx.env);
const slotName = () => `tally_${ctx.env}_erp`;
const reader = () => tally!.readers[0]!;

/** Tally's worker, relay and cdc roles in this process, logging into `logLines`. */
async function start(): Promise<void> {
  const log = pino({ level: "info" }, { write: (line: string) => void logLines.push(JSON.parse(line) as Record<string, unknown>) });
  tally = await startTally(testSettings(ctx), config, ["worker", "relay", "cdc"], log);
}
async function stop(): Promise<void> {
  await tally?.close();
  tally = null;
}

/** A receipt in the source, as the ERP books it: the receipt row and its stock, in one transaction. */
async function receive(itemNo: string, qty: number): Promise<void> {
  await source.begin(async (tx) => {
    await tx`insert into receipts (item_no, location, qty) values (${itemNo}, 'DC1', ${qty})`;
    await tx`update stock set qty = qty + ${qty} where item_no = ${itemNo} and location = 'DC1'`;
  });
}

const onHand = async (sku: string) => {
  const [row] = await h.sql<[{ qty: number } | undefined]>`select qty from balances where sku = ${sku} and location = 'DC1' and bucket = 'on_hand'`;
  return row?.qty ?? 0;
};
const sourceStock = async (itemNo: string) => {
  const [row] = await source<[{ qty: number }]>`select qty from stock where item_no = ${itemNo} and location = 'DC1'`;
  return row!.qty;
};
/** The ledger's on-hand equals the source's stock table for every item. */
const ledgerMatchesSource = async () => {
  for (let i = 1; i <= 5; i++) if ((await onHand(`SKU-L${i}`)) !== (await sourceStock(`I${i}`))) return false;
  return true;
};

const alerts = async () =>
  (await readStream(h, h.topology.eventsStream, h.topology.eventSubject("alert"))).map((m) => m.data as Record<string, unknown> & { kind: string });
const slotExists = async () => (await source`select 1 from pg_replication_slots where slot_name = ${slotName()}`).length > 0;
const status = async (): Promise<SourceStatus> => sourceStatus(source, h.sql, resolved());
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Terminates whatever streams the slot and drops it, as a DBA or a failover script might (the reader reconnects fast: retry). */
async function dropSlotBehindTallysBack(): Promise<void> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    await source`select pg_terminate_backend(active_pid) from pg_replication_slots where slot_name = ${slotName()} and active_pid is not null`;
    try {
      await source`select pg_drop_replication_slot(${slotName()})`;
      return;
    } catch (error) {
      if ((error as { code?: string }).code !== "55006" || Date.now() > deadline) throw error;
      await sleep(20);
    }
  }
}

describe("the first snapshot", () => {
  it("says which source transactions its slot waits for (pid and age), in the log and in `tally source status`", async () => {
    // A transaction holding a transaction id: a new slot cannot become consistent before it ends.
    const blocker = await source.reserve();
    await blocker`begin`;
    await blocker`insert into receipts (item_no, location, qty) values ('I1', 'DC1', 0)`;
    const [{ pid }] = await blocker<[{ pid: number }]>`select pg_backend_pid() as pid`;
    try {
      await start();
      await eventually(
        "the wait reported in cdc_sources",
        async () => {
          const s = await status();
          return s.snapshot.waitingFor?.transactions.some((t) => t.pid === pid) ?? false;
        },
        30_000,
      );
      const s = await status();
      expect(s.snapshot.state).toBe("in_progress");
      expect(formatStatuses([s])).toContain(`snapshot waits for`);
      expect(formatStatuses([s])).toMatch(new RegExp(`pid ${pid} \\(\\d+s\\)`));
      const line = logLines.find((l) => String(l.msg).includes("creating the slot waits for these transactions"));
      expect(line, "a log line naming the transactions").toBeDefined();
      expect((line!.waitingFor as Array<{ pid: number; ageSeconds: number }>).some((t) => t.pid === pid && t.ageSeconds >= 0)).toBe(true);
    } finally {
      await blocker`rollback`;
      blocker.release();
    }
    // A slot waits for every transaction on the server, other test files' too: give it time.
    await eventually("the snapshot done", async () => (await status()).snapshot.state === "done", 150_000);
    expect((await status()).snapshot.waitingFor).toBeNull();
    await eventually("opening stock in the ledger", ledgerMatchesSource);
  }, 240_000);
});

describe("a replication slot lost behind Tally's back", () => {
  it("mid-stream: the source halts with an alert naming the gap, no slot is created silently, and `tally source resnapshot` is the way on", async () => {
    await receive("I1", 1);
    await eventually("a receipt streamed", ledgerMatchesSource);
    const bound = async () => (await h.sql<[{ bound: string }]>`select slot_bound_lsn as bound from cdc_sources where source = 'erp'`)[0].bound;
    const boundBefore = await bound();

    await dropSlotBehindTallysBack();
    await receive("I2", 7); // committed while there is no slot: no reader will ever see it
    await eventually("the slot-lost alert", async () => (await alerts()).some((a) => a.kind === "cdc_slot_lost"), 30_000);
    const alert = (await alerts()).find((a) => a.kind === "cdc_slot_lost")!;
    expect(alert).toMatchObject({ type: "alert", source: "erp", slot: slotName(), action: "tally source resnapshot erp" });
    // The gap starts at the last LSN confirmed to the slot (heartbeats may have moved it on since boundBefore).
    const last = await bound();
    expect(alert.lastConfirmedLsn).toBe(last);
    expect(parseLsn(last) >= parseLsn(boundBefore)).toBe(true);
    expect(typeof alert.lastConfirmedAt).toBe("string");
    expect(String(alert.message)).toContain(`changes committed after ${last}`);
    expect(reader().metrics.halted).toBe("slot_lost");
    const metrics = new ProcessMetrics({ nats: h.nats, topology: h.topology, readers: tally!.readers });
    expect(await metrics.registry.metrics()).toContain('tally_cdc_source_halted{source="erp"} 1');

    // Halted, not re-created: no slot, nothing streams, the gap's receipt is not in the ledger.
    await sleep(3000);
    expect(await slotExists()).toBe(false);
    expect(reader().streaming).toBe(false);
    expect(await onHand("SKU-L2")).toBe(20);
    const s = await status();
    expect(s.halted).toMatchObject({ reason: "slot_lost", lastConfirmedLsn: last });
    expect(formatStatuses([s])).toMatch(/halted .*HALTED since .*slot_lost.*run tally source resnapshot erp/);

    // The operator chooses: a new slot and a snapshot of the source's tables.
    const result = await runTally(["source", "resnapshot", "erp", "--timeout", "150"], tallyEnv(ctx));
    expect(result.output).toContain("source erp is halted (slot_lost)");
    expect(result.output).toContain("re-snapshot done");
    expect(result.code).toBe(0);
    await eventually("streaming again", async () => reader().streaming);
    expect(reader().metrics.halted).toBeNull();
    expect((await status()).halted).toBeNull();
    await eventually("the counts include what moved in the gap", ledgerMatchesSource);
    await receive("I3", 2);
    await eventually("later receipts flow", ledgerMatchesSource);
    expect((await verifyLedger(h.sql)).problem).toBeNull();
  }, 240_000);

  it("while Tally was stopped, and created again by `tally source enable`: the new slot is not streamed from — the source halts until a re-snapshot", async () => {
    await stop();
    await dropSlotBehindTallysBack(); // the stopped reader's walsender may still be exiting
    await receive("I4", 5); // lost: no slot
    await enableSource(source, resolved()); // a new slot of the same name
    await receive("I4", 3); // after the new slot: the stream would carry it, but not the 5 before
    const before = (await alerts()).length;
    await start();
    await eventually("the slot-replaced alert", async () => (await alerts()).slice(before).some((a) => a.kind === "cdc_slot_replaced"), 30_000);
    const alert = (await alerts()).slice(before).find((a) => a.kind === "cdc_slot_replaced")!;
    expect(alert.lastConfirmedLsn).toEqual(expect.any(String));
    expect(alert.slotConfirmedLsn).toEqual(expect.any(String));
    expect(String(alert.message)).toContain("past the last position Tally confirmed to it");
    expect(reader().metrics.halted).toBe("slot_replaced");
    await sleep(2000);
    expect(reader().streaming).toBe(false);
    expect(await onHand("SKU-L4")).toBe(40); // neither receipt: not streamed from a slot with a gap before it
    expect((await status()).halted?.reason).toBe("slot_replaced");

    const result = await runTally(["source", "resnapshot", "erp", "--timeout", "150"], tallyEnv(ctx));
    expect(result.output).toContain("re-snapshot done");
    await eventually("the ledger equals the source after the re-snapshot", ledgerMatchesSource);
    expect(await onHand("SKU-L4")).toBe(48);
  }, 240_000);

  it("a restart with Tally's own slot streams on without a snapshot (the slot is recognised, not replaced)", async () => {
    const snapshots = async () => (await h.sql<[{ lsn: string }]>`select snapshot_lsn as lsn from cdc_sources where source = 'erp'`)[0].lsn;
    const lsn = await snapshots();
    const before = (await alerts()).length;
    await stop();
    await receive("I5", 4); // while stopped: the slot keeps it
    await start();
    await eventually("the receipt made while stopped", ledgerMatchesSource);
    expect(reader().metrics.halted).toBeNull();
    expect(reader().metrics.snapshots).toBe(0);
    expect(await snapshots()).toBe(lsn);
    expect((await alerts()).slice(before).filter((a) => String(a.kind).startsWith("cdc_slot"))).toEqual([]);
  }, 60_000);
});

describe("a captured table dropped and created again", () => {
  it("falls out of the publication: the reader alerts naming it, `tally source status` shows it, `tally source enable` repairs it", async () => {
    const before = (await alerts()).length;
    await source.unsafe(`
      drop table receipts;
      create table receipts (id bigserial primary key, item_no text not null, location text not null, qty int not null);`);
    await eventually(
      "the publication alert",
      async () => (await alerts()).slice(before).some((a) => a.kind === "cdc_publication_incomplete"),
      30_000,
    );
    const alert = (await alerts()).slice(before).find((a) => a.kind === "cdc_publication_incomplete")!;
    expect(alert).toMatchObject({ source: "erp", tables: ["public.receipts"], action: "tally source enable erp" });
    expect(reader().metrics.publicationMissing).toEqual(["public.receipts"]);
    const metrics = new ProcessMetrics({ nats: h.nats, topology: h.topology, readers: tally!.readers });
    expect(await metrics.registry.metrics()).toContain('tally_cdc_publication_missing_tables{source="erp"} 1');
    const s = await status();
    expect(s.publication.missing).toEqual(["public.receipts"]);
    expect(formatStatuses([s])).toContain("publication lacks public.receipts (not captured): run tally source enable erp");

    await enableSource(source, resolved());
    await eventually("the publication complete again", async () => reader().metrics.publicationMissing.length === 0, 30_000);
    expect((await status()).publication.missing).toEqual([]);
    await receive("I1", 6);
    await eventually("receipts in the re-created table flow", ledgerMatchesSource);
    // Its first change came under the new table's relation id.
    await eventually("the re-created table alert", async () => (await alerts()).slice(before).some((a) => a.kind === "cdc_table_recreated"));
  }, 90_000);

  it("re-created inside the publication in one transaction: its new relation id raises an alert", async () => {
    const before = (await alerts()).length;
    await source.begin(async (tx) => {
      await tx.unsafe(`alter publication ${`tally_${ctx.env}_erp`} drop table receipts`);
      await tx.unsafe(`drop table receipts`);
      await tx.unsafe(`create table receipts (id bigserial primary key, item_no text not null, location text not null, qty int not null)`);
      await tx.unsafe(`alter publication ${`tally_${ctx.env}_erp`} add table receipts`);
    });
    const [{ oid }] = await source<[{ oid: number }]>`select 'public.receipts'::regclass::oid::int as oid`;
    await receive("I2", 1);
    await eventually("the table-recreated alert", async () => (await alerts()).slice(before).some((a) => a.kind === "cdc_table_recreated"), 30_000);
    const alert = (await alerts()).slice(before).find((a) => a.kind === "cdc_table_recreated")!;
    expect(alert).toMatchObject({ source: "erp", table: "public.receipts", relationId: oid });
    expect(alert.previousRelationId).not.toBe(oid);
    await eventually("the receipt still flows", ledgerMatchesSource);
    expect((await alerts()).slice(before).some((a) => a.kind === "cdc_publication_incomplete")).toBe(false);
  }, 60_000);
});
