import { mkdtempSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEMO_STOCK } from "../cdc/demo/seed.ts";
import { WriteBack, findSource, writeBackCorrection, writeBackInFlight, writeBackMark, writeBackSecret, type ResolvedSource } from "../cdc/index.ts";
import { openSink, type Sink, writeBackOrigin } from "../cdc/writeBackSinks.ts";
import type { Command } from "../src/contract/index.ts";
import { createLogger, decodeTallyConfig, verifyPayload, type WriteBackConfig } from "../src/platform/index.ts";
import { publishCommands } from "../src/wire/index.ts";
import { demoSources, type DemoSources } from "./support/cdc.ts";
import { testContext, type TestContext } from "./support/context.ts";
import {
  decodedCommands,
  eventually,
  harness,
  readStream,
  ROOT,
  runTally,
  spawnTally,
  startInProcess,
  tallyEnv,
  type Harness,
} from "./support/tally.ts";

let ctx: TestContext;
let h: Harness;
let demo: DemoSources;
let tally: Awaited<ReturnType<typeof startInProcess>>;
let env: Record<string, string>;
let configFile: string;
let cdc: ReturnType<typeof spawnTally> | null = null;
const log = createLogger("test-writeback", process.env.TALLY_LOG_LEVEL ?? "warn");

const onHand = async (sku: string, location: string) => {
  const [row] = await h.sql<[{ qty: string } | undefined]>`
    select qty::text as qty from balances where sku = ${sku} and location = ${location} and bucket = 'on_hand'`;
  return Number(row?.qty ?? 0);
};
const erpOnHand = async (itemNo: string, location: string) => {
  const [row] = await demo.erp<[{ qty: string } | undefined]>`
    select qty::text as qty from stock_on_hand where item_no = ${itemNo} and location = ${location}`;
  return Number(row?.qty ?? 0);
};
const stock = (sku: string, location: string) => DEMO_STOCK.find((s) => s.sku === sku && s.location === location && s.uom === "EA")!;
const erpEntries = async () => (await h.sql<[{ n: number }]>`select count(*)::int as n from ledger_entries where source_system = 'erp'`)[0].n;

let n = 0;
/** A POS sale (or any movement from Tally's side) of `qty` units. */
const sale = (sku: string, location: string, qty: number, system = "pos"): Command =>
  decodedCommands([
    {
      id: `wb-test-${++n}`,
      type: "adjust",
      sku,
      location,
      qty: -qty,
      reason: "pos sale",
      source: { system, ref: `till-${n}` },
      occurredAt: new Date().toISOString(),
    },
  ])[0]!;

function startCdc(): void {
  cdc = spawnTally(["--config", configFile, "start", "--roles", "cdc"], { ...env, TALLY_METRICS_PORT: "0" });
}
async function killCdc(): Promise<void> {
  const proc = cdc;
  cdc = null;
  if (!proc || proc.exitCode !== null) return;
  const exited = new Promise((resolve) => proc.once("exit", resolve));
  proc.kill("SIGKILL");
  await exited;
}

/** Waits until the ERP's WAL written so far has been read by the CDC reader (so an echo would be in the ledger by now). */
async function readerCaughtUp(): Promise<void> {
  await demo.erp`select pg_logical_emit_message(true, 'test', 'x')`;
  const [{ lsn }] = await demo.erp<[{ lsn: string }]>`select pg_current_wal_lsn()::text as lsn`;
  await eventually("the CDC reader to pass the ERP's current LSN", async () => {
    const [row] = await h.sql<[{ ok: boolean } | undefined]>`
      select confirmed_lsn::pg_lsn >= ${lsn}::pg_lsn as ok from cdc_sources where source = 'erp'`;
    return row?.ok === true;
  });
}

beforeAll(async () => {
  ctx = await testContext();
  h = await harness(ctx);
  demo = await demoSources(ctx);
  env = { ...tallyEnv(ctx), ...demo.env };
  // The demo config, with small batches and a quick writer, so a kill lands between batches.
  const dir = mkdtempSync(path.join(tmpdir(), "tally-writeback-"));
  configFile = path.join(dir, "tally.config.ts");
  writeFileSync(
    configFile,
    `import config from ${JSON.stringify(path.join(ROOT, "tally.config.ts"))};\n` +
      "const erp = config.sources.erp;\n" +
      "export default { ...config, sources: { ...config.sources, erp: { ...erp, heartbeatSeconds: 1, writeBack: { ...erp.writeBack, batchSize: 7, intervalMs: 100, backoffMs: 100, maxBackoffMs: 400 } } } };\n",
  );
  tally = await startInProcess(ctx, ["worker", "relay"], {}, demo.config);
  startCdc();
  await eventually("opening balances", async () => {
    for (const s of DEMO_STOCK) if ((await onHand(s.sku, s.location)) !== s.baseQty) return false;
    return true;
  });
}, 120_000);
afterAll(async () => {
  if (process.env.WB_DEBUG) console.log(cdc?.output());
  await killCdc();
  await tally?.close();
  await demo?.close();
  await h?.close();
});

describe("write-back to the ERP", () => {
  it("POS sales reach inbound_movements exactly once across kill -9 of the writer; stock_on_hand follows; nothing echoes", async () => {
    const a = stock("SKU-0001", "S01");
    const b = stock("SKU-0003", "S02");
    const erpBefore = { a: await erpOnHand(a.itemNo, "S01"), b: await erpOnHand(b.itemNo, "S02") };
    expect(erpBefore).toEqual({ a: Number(a.qty), b: Number(b.qty) });
    const echoBefore = await erpEntries();
    const sales = Array.from({ length: 60 }, (_, i) => (i % 2 === 0 ? sale("SKU-0001", "S01", 1) : sale("SKU-0003", "S02", 1)));
    const ids = sales.map((s) => s.id);
    const delivered = async () =>
      (await demo.erp<[{ n: number }]>`select count(*)::int as n from inbound_movements where command_id = any(${ids})`)[0].n;
    // Kill the cdc process (reader and writer) three times while the sales are being written back.
    for (let round = 0; round < 3; round++) {
      await publishCommands(h.nats.js, h.topology, sales.slice(round * 20, round * 20 + 20));
      const target = (round + 1) * 20 - 10 + Math.floor(Math.random() * 8);
      await eventually("some of the sales written back", async () => (await delivered()) >= Math.min(target, (round + 1) * 20));
      await killCdc();
      startCdc();
    }
    await eventually("every sale written back", async () => (await delivered()) === sales.length);
    // Exactly once: the import job ran once per leg (a re-sent row inserts nothing and triggers nothing).
    const [{ imported }] = await demo.erp<[{ imported: number }]>`
      select count(*)::int as imported from stock_adjustments where origin = 'tally' and reason like any(${ids.map((id) => `% ${id}`)})`;
    expect(imported).toBe(sales.length);
    // In order per SKU: the ERP booked each SKU's sales in the order they were made.
    const booked = await demo.erp<Array<{ reason: string }>>`
      select reason from stock_adjustments where origin = 'tally' and item_no = ${a.itemNo} and reason like any(${ids.map((id) => `% ${id}`)})
       order by adjustment_id`;
    expect(booked.map((r) => r.reason.split(" ").at(-1))).toEqual(sales.filter((s) => s.sku === "SKU-0001").map((s) => s.id));
    const rows = await demo.erp<Array<{ item_no: string; qty: string; uom: string; movement: string; source_system: string }>>`
      select item_no, qty::text, uom, movement, source_system from inbound_movements where command_id = ${ids[0]!}`;
    expect(rows).toEqual([{ item_no: a.itemNo, qty: "-1.000", uom: "EA", movement: "adjust", source_system: "pos" }]);
    expect(await erpOnHand(a.itemNo, "S01")).toBe(erpBefore.a - 30);
    expect(await erpOnHand(b.itemNo, "S02")).toBe(erpBefore.b - 30);
    // No echo: the ERP's import (its adjustments, its on-hand) never comes back as a movement.
    await readerCaughtUp();
    expect(await erpEntries()).toBe(echoBefore);
    expect(await onHand("SKU-0001", "S01")).toBe(a.baseQty - 30);
  }, 180_000);

  it("the reader skips transactions of the write-back's replication origin, whatever they touch", async () => {
    const before = await erpEntries();
    const item = stock("SKU-0004", "S01");
    const conn = await demo.erp.reserve();
    try {
      // Any origin of the write-back's family (the writer holds its own meanwhile).
      const origin = `${writeBackOrigin("erp")}_test`;
      await conn`select pg_replication_origin_create(${origin})`;
      await conn`select pg_replication_origin_session_setup(${origin})`;
      // An adjustment without the origin column's mark: only the session's origin tells it apart.
      await conn`insert into stock_adjustments (item_no, location, qty, reason) values (${item.itemNo}, 'S01', -5, 'tagged')`;
      await conn`select pg_replication_origin_session_reset()`;
    } finally {
      conn.release();
    }
    await demo.erp`insert into stock_adjustments (item_no, location, qty, reason) values (${item.itemNo}, 'S01', -1, 'untagged')`;
    await eventually("the untagged adjustment in the ledger", async () => (await erpEntries()) === before + 1);
    await readerCaughtUp();
    expect(await erpEntries()).toBe(before + 1);
    expect(await onHand("SKU-0004", "S01")).toBe(item.baseQty - 1);
  }, 60_000);

  it("ERP refusing (inbound table gone) → backoff, then delivered in order", async () => {
    await demo.erp`alter table inbound_movements rename to inbound_movements_away`;
    const sales = [sale("SKU-0001", "S01", 2), sale("SKU-0001", "S01", 3)];
    try {
      await publishCommands(h.nats.js, h.topology, sales);
      await eventually("a failed attempt logged", async () => /write-back batch failed; retrying after a backoff/.test(cdc!.output()));
      await new Promise((r) => setTimeout(r, 800));
      const [{ n: waiting }] = await demo.erp<[{ n: number }]>`
        select count(*)::int as n from inbound_movements_away where command_id = any(${sales.map((s) => s.id)})`;
      expect(waiting).toBe(0);
    } finally {
      await demo.erp`alter table inbound_movements_away rename to inbound_movements`;
    }
    await eventually("both delivered", async () => {
      const rows = await demo.erp<Array<{ command_id: string }>>`
        select command_id from inbound_movements where command_id = any(${sales.map((s) => s.id)}) order by received_at, qty desc`;
      return rows.length === 2;
    });
    const [first, second] = await demo.erp<Array<{ adjustment_id: string; reason: string }>>`
      select adjustment_id::text, reason from stock_adjustments where reason like any(${sales.map((s) => `% ${s.id}`)}) order by adjustment_id`;
    expect([first!.reason, second!.reason]).toEqual([`tally adjust ${sales[0]!.id}`, `tally adjust ${sales[1]!.id}`]);
  }, 90_000);

  it("a SKU with no ERP item is dead-lettered with the reason; the rest still flows", async () => {
    const orphan = decodedCommands([
      {
        id: `wb-test-orphan`,
        type: "receive",
        sku: "SKU-NO-ERP",
        location: "S01",
        qty: 4,
        source: { system: "api", ref: "orphan" },
        occurredAt: new Date().toISOString(),
      },
    ])[0]!;
    const after = sale("SKU-0001", "S01", 1);
    await publishCommands(h.nats.js, h.topology, [orphan, after]);
    await eventually("the next sale delivered", async () => {
      const [{ n }] = await demo.erp<[{ n: number }]>`select count(*)::int as n from inbound_movements where command_id = ${after.id}`;
      return n === 1;
    });
    let letters: Array<{ data: unknown }> = [];
    await eventually("the dead letter", async () => {
      letters = await readStream(h, h.topology.dlqStream, h.topology.dlqSubject("writeback"));
      return letters.length > 0;
    });
    const letter = letters[0]!.data as { reason: string; payload: { command_id: string }; context: { source: string } };
    expect(letter.reason).toMatch(/SKU SKU-NO-ERP has no erp_item identifier in the item crosswalk/);
    expect(letter.payload.command_id).toBe("wb-test-orphan");
    expect(letter.context.source).toBe("erp");
    const [{ n }] = await demo.erp<[{ n: number }]>`select count(*)::int as n from inbound_movements where command_id = 'wb-test-orphan'`;
    expect(n).toBe(0);
  }, 60_000);

  it("journal lines reach inbound_journal (the ERP's own journals are not sent back)", async () => {
    await h.sql`
      with j as (
        insert into gl_journals (journal_id, kind, business_date, posted_on, period, currency, command_id, movement, source_system, source_ref)
        values ('wb-journal-1', 'inventory', '2026-11-30', '2026-11-30', '2026-11', 'EUR', 'wb-journal-1', 'adjust', 'pos', 'till-9'),
               ('wb-journal-erp', 'inventory', '2026-11-30', '2026-11-30', '2026-11', 'EUR', 'wb-journal-erp', 'receive', 'erp', 'gr-1')
        returning journal_id)
      insert into gl_lines (journal_id, line, account, cost_center, debit, credit, sku, qty, unit, leg)
      values ('wb-journal-1', 1, '5000', 'S01', 1250, 0, 'SKU-0001', 1, 'EA', 1),
             ('wb-journal-1', 2, '1400', 'S01', 0, 1250, 'SKU-0001', 1, 'EA', 1),
             ('wb-journal-erp', 1, '1400', 'DC1', 900, 0, 'SKU-0002', 1, 'EA', 1),
             ('wb-journal-erp', 2, '2100', 'DC1', 0, 900, 'SKU-0002', 1, 'EA', 1)`;
    await eventually("the journal written back", async () => {
      const [{ n }] = await demo.erp<[{ n: number }]>`select count(*)::int as n from inbound_journal where journal_id = 'wb-journal-1'`;
      return n === 2;
    });
    const lines = await demo.erp<Array<Record<string, unknown>>>`
      select journal_id, line, account, cost_center, debit::text, credit::text, currency, item_no, sku from inbound_journal order by journal_id, line`;
    expect(lines).toEqual([
      {
        journal_id: "wb-journal-1",
        line: 1,
        account: "5000",
        cost_center: "S01",
        debit: "1250",
        credit: "0",
        currency: "EUR",
        item_no: "100001",
        sku: "SKU-0001",
      },
      {
        journal_id: "wb-journal-1",
        line: 2,
        account: "1400",
        cost_center: "S01",
        debit: "0",
        credit: "1250",
        currency: "EUR",
        item_no: "100001",
        sku: "SKU-0001",
      },
    ]);
  }, 60_000);

  it("a replenishment request (low stock at a store) becomes a purchase-requisition suggestion, once", async () => {
    const item = stock("SKU-0008", "S01");
    const big = sale("SKU-0008", "S01", item.baseQty - 5);
    await publishCommands(h.nats.js, h.topology, [big]);
    await eventually("the requisition in the ERP", async () => {
      const [{ n }] = await demo.erp<[{ n: number }]>`select count(*)::int as n from inbound_requisitions where command_id = ${big.id}`;
      return n === 1;
    });
    const [row] = await demo.erp<Array<{ requisition_id: string; item_no: string; location: string; qty: string; uom: string; status: string }>>`
      select requisition_id, item_no, location, qty::text, uom, status from inbound_requisitions where command_id = ${big.id}`;
    expect(row).toMatchObject({ requisition_id: `${big.id}:SKU-0008:S01`, item_no: item.itemNo, location: "S01", uom: "EA", status: "suggested" });
    expect(Number(row!.qty)).toBeGreaterThan(0);
  }, 60_000);

  it("a batch the ERP committed but the writer did not record (a crash in between) is sent again and inserted once", async () => {
    await killCdc();
    const source = findSource(demo.config, "erp", ctx.env, env);
    const item = stock("SKU-0006", "S01");
    const before = await erpOnHand(item.itemNo, "S01");
    const sales = [sale("SKU-0006", "S01", 1), sale("SKU-0006", "S01", 2)];
    await publishCommands(h.nats.js, h.topology, sales);
    await eventually("the sales applied", async () => (await onHand("SKU-0006", "S01")) === item.baseQty - 3);
    // The real sink into the ERP, failing once right after the ERP committed: the position is not written.
    const real = openSink(source, log);
    let commits = 0;
    const sink: Sink = {
      send: async (batch) => {
        await real.send(batch);
        if (batch.kind === "movements" && commits++ === 0) throw new Error("crashed after the ERP's commit");
      },
      close: () => real.close(),
    };
    const writer = new WriteBack({ source, sql: h.sql, currency: "EUR", js: h.nats.js, topology: h.topology, log, openSink: () => sink }).start();
    try {
      await eventually("both sales written back", async () => {
        const [{ n }] = await demo.erp<
          [{ n: number }]
        >`select count(*)::int as n from inbound_movements where command_id = any(${sales.map((s) => s.id)})`;
        return n === 2 && commits >= 2;
      });
    } finally {
      await writer.stop();
    }
    const [{ imported }] = await demo.erp<[{ imported: number }]>`
      select count(*)::int as imported from stock_adjustments where origin = 'tally' and reason like any(${sales.map((s) => `% ${s.id}`)})`;
    expect(imported).toBe(2);
    expect(await erpOnHand(item.itemNo, "S01")).toBe(before - 3);
    startCdc();
  }, 60_000);

  it("for reconciliation: legs in flight per (SKU, location) in the ERP's snapshot; a correction is written once", async () => {
    const source = findSource(demo.config, "erp", ctx.env, env);
    await killCdc();
    const pending = sale("SKU-0002", "S01", 2);
    await publishCommands(h.nats.js, h.topology, [pending]);
    await eventually("the sale applied", async () => (await h.sql`select 1 from ledger_entries where command_id = ${pending.id}`).length === 1);
    const inFlight = async () => {
      const mark = await writeBackMark(h.sql, "erp");
      return demo.erp.begin("isolation level repeatable read", (tx) => writeBackInFlight(h.sql, source, tx, mark));
    };
    expect(await inFlight()).toEqual([{ sku: "SKU-0002", location: "S01", qty: -2 }]);
    startCdc();
    await eventually("the sale written back", async () => (await inFlight()).length === 0);

    const item = stock("SKU-0005", "S02");
    const before = await erpOnHand(item.itemNo, "S02");
    const echo = await erpEntries();
    for (let i = 0; i < 2; i++) await writeBackCorrection(h.sql, source, { sku: "SKU-0005", location: "S02", qty: 4, key: "0/ABC" }, log);
    expect(await erpOnHand(item.itemNo, "S02")).toBe(before + 4);
    const rows = await demo.erp`select command_id from inbound_movements where movement = 'reconciliation'`;
    expect(rows.map((r) => r.command_id)).toEqual(["reconcile:erp:0/ABC:SKU-0005:S02"]);
    await readerCaughtUp();
    expect(await erpEntries()).toBe(echo);
  }, 90_000);
});

describe("tally reconcile with the write-back", () => {
  it("a sale still on its way to the ERP is no drift; where Tally wins, --apply writes the correction into the ERP once", async () => {
    // Tally is the system of record at S02: its tills are the truth there.
    const sorFile = path.join(path.dirname(configFile), "tally.sor.config.ts");
    writeFileSync(
      sorFile,
      `import base from ${JSON.stringify(configFile)};\n` +
        'export default { ...base, sources: { ...base.sources, erp: { ...base.sources.erp, systemOfRecord: { default: "erp", locations: { S02: "tally" } } } } };\n',
    );
    const reconcile = async (...args: ReadonlyArray<string>) => {
      const r = await runTally(["--config", sorFile, "reconcile", "erp", "--format", "json", ...args], env);
      return {
        code: r.code,
        out: r.output,
        json: JSON.parse(r.stdout) as { drift: Array<{ sku: string; location: string; diff: number }>; corrected?: Array<unknown> },
      };
    };
    const pair = (d: { sku: string; location: string }) => `${d.sku}@${d.location}`;

    // The writer is held up (an ERP session locks the inbound table against inserts; reads go on): a POS sale is in the ledger, not in the ERP.
    const held = await demo.erp.reserve();
    await held`begin`;
    await held`lock table inbound_movements in exclusive mode`;
    const item = stock("SKU-0003", "S01");
    const erpBefore = await erpOnHand(item.itemNo, "S01");
    let inFlight: Awaited<ReturnType<typeof reconcile>>;
    try {
      const pending = sale("SKU-0003", "S01", 2);
      await publishCommands(h.nats.js, h.topology, [pending]);
      await eventually("the sale applied", async () => (await h.sql`select 1 from ledger_entries where command_id = ${pending.id}`).length === 1);
      inFlight = await reconcile();
      expect(await erpOnHand(item.itemNo, "S01")).toBe(erpBefore);
    } finally {
      await held`rollback`;
      held.release();
    }
    expect(inFlight.json.drift.map(pair), inFlight.out).not.toContain("SKU-0003@S01");
    await eventually("the sale written back", async () => (await erpOnHand(item.itemNo, "S01")) === erpBefore - 2);

    // Drift injected into the ERP at S02, where Tally wins: reported, and corrected in the ERP, not in the ledger.
    const s02 = stock("SKU-0006", "S02");
    const ledgerS02 = await onHand("SKU-0006", "S02");
    await demo.erp`update stock_on_hand set qty = qty + 7 where item_no = ${s02.itemNo} and location = 'S02'`;
    const report = await reconcile();
    const drift = report.json.drift.find((d) => pair(d) === "SKU-0006@S02");
    expect(drift, report.out).toMatchObject({ diff: (await erpOnHand(s02.itemNo, "S02")) - ledgerS02 });
    const applied = await reconcile("--apply");
    expect(applied.json.corrected, applied.out).toContainEqual(expect.objectContaining({ sku: "SKU-0006", location: "S02" }));
    expect(await erpOnHand(s02.itemNo, "S02")).toBe(ledgerS02);
    expect(await onHand("SKU-0006", "S02")).toBe(ledgerS02);
    const again = await reconcile("--apply");
    expect(again.json.drift.map(pair), again.out).not.toContain("SKU-0006@S02");
    const corrections = await demo.erp`select command_id from inbound_movements where movement = 'reconciliation' and item_no = ${s02.itemNo}`;
    expect(corrections).toHaveLength(1);
  }, 120_000);
});

describe("write-back config", () => {
  it("refuses a writeBack with both or neither of movements and http, naming the field", () => {
    const base = { tables: {} };
    const decode = (writeBack: unknown) => () => decodeTallyConfig({ channels: {}, sources: { erp: { ...base, writeBack } } });
    expect(decode({ movements: "public.inbound_movements", http: { url: "https://erp.example/in" } })).toThrow(
      /sources\.erp\.writeBack: expected either movements \(inbound tables\) or http, not both/,
    );
    expect(decode({})).toThrow(/sources\.erp\.writeBack: expected either movements/);
    expect(decode({ movements: "inbound" })).toThrow(/sources\.erp\.writeBack\.movements: expected schema\.table/);
    expect(decode({ http: { url: "ftp://x" } })).toThrow(/sources\.erp\.writeBack\.http\.url: expected an http:\/\/ or https:\/\/ URL/);
    const http = {
      ...findSource(demo.config, "erp", ctx.env, env),
      writeBack: decodeTallyConfig({ channels: {}, sources: { erp: { ...base, writeBack: { http: { url: "https://erp.example/in" } } } } }).sources
        .erp!.writeBack,
    };
    expect(() => writeBackSecret(http, {})).toThrow(/TALLY_WRITEBACK_ERP_SECRET must hold the signing secret/);
  });
});

describe("write-back over HTTP", () => {
  it("POSTs signed batches, retried after failures, and resumes from its position", async () => {
    const secret = "writeback-secret-0123456789";
    const received: Array<{ kind: string; rows: Array<{ command_id: string; leg: number }> }> = [];
    let calls = 0;
    let bad = 0;
    const server: Server = createServer((req, res) => {
      let body = "";
      req.on("data", (d: Buffer) => (body += d.toString()));
      req.on("end", () => {
        calls++;
        if (!verifyPayload(secret, req.headers["tally-signature"] as string | undefined, body)) bad++;
        // The first two attempts fail: the writer must back off and send the same batch again.
        if (calls <= 2) return res.writeHead(503).end();
        received.push(JSON.parse(body));
        res.writeHead(204).end();
      });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/inbound`;
    const writeBack: WriteBackConfig = {
      http: { url, timeoutMs: 2000 },
      itemSystem: "erp_item",
      units: { g: { unit: "KG", factor: 1000 } },
      batchSize: 1000,
      maxAttempts: 10,
      backoffMs: 50,
      maxBackoffMs: 200,
      intervalMs: 100,
    };
    process.env.TALLY_WRITEBACK_ERPHTTP_SECRET = secret;
    const source: ResolvedSource = { ...findSource(demo.config, "erp", ctx.env, env), name: "erphttp", writeBack };
    const make = () => new WriteBack({ source, sql: h.sql, currency: "EUR", js: h.nats.js, topology: h.topology, log }).start();
    const target = sale("SKU-0001", "S02", 1);
    await publishCommands(h.nats.js, h.topology, [target]);
    await eventually("the sale applied", async () => (await h.sql`select 1 from ledger_entries where command_id = ${target.id}`).length === 1);
    let writer = make();
    try {
      const sent = () => received.flatMap((b) => (b.kind === "movements" ? b.rows.map((r) => `${r.command_id}#${r.leg}`) : []));
      await eventually("the sale POSTed", async () => sent().includes(`${target.id}#1`));
      expect(calls).toBeGreaterThanOrEqual(3);
      expect(bad).toBe(0);
      expect(writer.metrics.failedAttempts).toBeGreaterThanOrEqual(2);
      // Each leg once, although the first batch was attempted three times.
      expect(new Set(sent()).size).toBe(sent().length);
      await writer.stop();
      // A new writer resumes from the position: nothing sent again, only what is new.
      const already = sent().length;
      const next = sale("SKU-0001", "S02", 1);
      await publishCommands(h.nats.js, h.topology, [next]);
      writer = make();
      await eventually("the next sale POSTed", async () => sent().includes(`${next.id}#1`));
      // Nothing the first writer had sent was sent again.
      expect(new Set(sent()).size).toBe(sent().length);
      expect(sent().length).toBeGreaterThan(already);
    } finally {
      await writer.stop();
      server.close();
    }
  }, 60_000);
});
