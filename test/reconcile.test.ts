import { execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEMO_STOCK } from "../cdc/demo/seed.ts";
import { compareOnHand, reconciliationCommands } from "../cdc/reconcile.ts";
import { Crosswalk, findSource, lastRuns, runReconciliation, type ResolvedSource } from "../cdc/index.ts";
import type { ReconcileRunOptions } from "../cdc/reconcileRun.ts";
import { decodeCommand } from "../src/contract/index.ts";
import { DashboardHub } from "../src/http/dashboard.ts";
import { decodeTallyConfig } from "../src/platform/configFile.ts";
import { publishCommands } from "../src/wire/index.ts";
import { demoSources, type DemoSources } from "./support/cdc.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { eventually, harness, ROOT, runTally, spawnTally, startInProcess, tallyEnv, type Harness } from "./support/tally.ts";

let ctx: TestContext;
let h: Harness;
let demo: DemoSources;
let tally: Awaited<ReturnType<typeof startInProcess>>;
let env: Record<string, string>;

const onHand = async (sku: string, location: string) => {
  const [row] = await h.sql<[{ qty: string } | undefined]>`
    select qty::text as qty from balances where sku = ${sku} and location = ${location} and bucket = 'on_hand'`;
  return Number(row?.qty ?? 0);
};
const entryCount = async () => (await h.sql<[{ n: number }]>`select count(*)::int as n from ledger_entries`)[0].n;
const countOutcomes = async () =>
  (await h.sql<[{ n: number }]>`select count(*)::int as n from command_outcomes where command_id like 'reconcile:%'`)[0].n;
const stock = (sku: string, location: string) => DEMO_STOCK.find((s) => s.sku === sku && s.location === location)!;

beforeAll(async () => {
  ctx = await testContext();
  h = await harness(ctx);
  demo = await demoSources(ctx);
  // Heartbeats every second: an idle source's confirmed position passes the reconciliation's LSN quickly.
  // The cdc role reconciles every 2 s (report only) and Tally wins at store S02 (its tills are the truth there).
  // Without write-back: these tests need movements the ERP never saw.
  const erp = {
    ...demo.config.sources.erp!,
    heartbeatSeconds: 1,
    reconcileEvery: "2s",
    systemOfRecord: { default: "erp" as const, locations: { S02: "tally" as const } },
    writeBack: undefined,
  };
  tally = await startInProcess(ctx, ["worker", "relay", "cdc"], {}, { ...demo.config, sources: { ...demo.config.sources, erp } });
  // The CLI runs with the demo config without write-back too (with one, units not yet written back are no drift).
  const dir = mkdtempSync(path.join(tmpdir(), "tally-reconcile-"));
  const noWriteBack = path.join(dir, "tally.config.ts");
  writeFileSync(
    noWriteBack,
    `import config from ${JSON.stringify(path.join(ROOT, "tally.config.ts"))};\n` +
      "export default { ...config, sources: { ...config.sources, erp: { ...config.sources.erp, writeBack: undefined } } };\n",
  );
  env = { ...tallyEnv(ctx), ...demo.env, TALLY_CONFIG: noWriteBack };
  await eventually("opening balances", async () => {
    for (const s of DEMO_STOCK) if ((await onHand(s.sku, s.location)) !== s.baseQty) return false;
    return true;
  });
}, 120_000);
afterAll(async () => {
  await tally?.close();
  await demo?.close();
  await h?.close();
});

/** `runReconciliation` of `source` against the demo ERP with `--apply`, tolerance 0, and the given hooks. */
const applyReconciliation = async (source: ResolvedSource, hooks: Partial<Pick<ReconcileRunOptions, "inFlight" | "correctSource">>) =>
  runReconciliation({
    ledger: h.sql,
    sourceSql: demo.erp,
    js: h.nats.js,
    jsm: h.nats.jsm,
    topology: h.topology,
    source,
    crosswalk: await Crosswalk.load(h.sql),
    tolerance: 0,
    timeoutMs: 60_000,
    apply: true,
    ...hooks,
  });

describe("tally reconcile", () => {
  it("finds no drift right after the snapshot (exit 0)", async () => {
    const r = await runTally(["reconcile", "erp", "--format", "json"], env);
    expect(r.code, r.output).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report.source).toBe("erp");
    expect(report.at).toMatch(/^[0-9A-F]+\/[0-9A-F]+$/);
    expect(report.drift).toEqual([]);
  }, 60_000);

  it("reports exactly the drifted pairs (a stale ERP row, a POS sale the ERP never saw); writes nothing without --apply", async () => {
    const a = stock("SKU-0001", "S01");
    const b = stock("SKU-0002", "DC1");
    // The ERP's on-hand changes without any movement CDC streams (stock_on_hand is not captured).
    expect(a.uom).toBe("EA");
    await demo.erp`update stock_on_hand set qty = qty + 7 where item_no = ${a.itemNo} and location = 'S01'`;
    await demo.erp`update stock_on_hand set qty = 0 where item_no = ${b.itemNo} and location = 'DC1'`;
    // The ledger moves (a sale at the till) while the ERP does not.
    const sale = decodeCommand({
      id: "test-pos-sale-1",
      type: "adjust",
      sku: "SKU-0003",
      location: "S02",
      qty: -3,
      reason: "pos sale",
      source: { system: "pos", ref: "till-1" },
      occurredAt: new Date().toISOString(),
    });
    if (sale._tag === "Left") throw new Error(sale.left.message);
    await publishCommands(h.nats.js, h.topology, [sale.right]);
    const c = stock("SKU-0003", "S02");
    await eventually("the sale applied", async () => (await onHand("SKU-0003", "S02")) === c.baseQty - 3);
    const entries = await entryCount();

    const json = await runTally(["reconcile", "erp", "--format", "json"], env);
    expect(json.code, json.output).toBe(3);
    expect(JSON.parse(json.stdout).drift).toEqual([
      { sku: "SKU-0001", location: "S01", ledger: a.baseQty, source: a.baseQty + 7, diff: 7 },
      { sku: "SKU-0002", location: "DC1", ledger: b.baseQty, source: 0, diff: -b.baseQty },
      { sku: "SKU-0003", location: "S02", ledger: c.baseQty - 3, source: c.baseQty, diff: 3 },
    ]);

    const csv = await runTally(["reconcile", "erp", "--format", "csv"], env);
    expect(csv.code).toBe(3);
    const parsed = execFileSync("python3", ["-c", "import csv,sys,json; print(json.dumps(list(csv.reader(sys.stdin))))"], { input: csv.stdout });
    expect(JSON.parse(parsed.toString())).toEqual([
      ["sku", "location", "ledger", "source", "diff"],
      ["SKU-0001", "S01", String(a.baseQty), String(a.baseQty + 7), "7"],
      ["SKU-0002", "DC1", String(b.baseQty), "0", String(-b.baseQty)],
      ["SKU-0003", "S02", String(c.baseQty - 3), String(c.baseQty), "3"],
    ]);

    const table = await runTally(["reconcile", "erp"], env);
    expect(table.code).toBe(3);
    expect(table.stdout).toContain("3 (SKU, location) pairs differ");

    // --tolerance 3 ignores |diff| <= 3: the sale's drift is within it.
    const tolerant = await runTally(["reconcile", "erp", "--format", "json", "--tolerance", "3"], env);
    expect(JSON.parse(tolerant.stdout).drift.map((d: { sku: string }) => d.sku)).toEqual(["SKU-0001", "SKU-0002"]);
    expect(await entryCount()).toBe(entries);
    expect(await countOutcomes()).toBe(0);
  }, 120_000);

  it("--apply where Tally is the system of record only reports (exit 3) and writes nothing", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "tally-reconcile-"));
    const file = path.join(dir, "tally.config.ts");
    writeFileSync(
      file,
      `import config from ${JSON.stringify(path.join(ROOT, "tally.config.ts"))};\n` +
        "export default { ...config, sources: { ...config.sources, erp: { ...config.sources.erp, systemOfRecord: 'tally', writeBack: undefined } } };\n",
    );
    const entries = await entryCount();
    const r = await runTally(["--config", file, "reconcile", "erp", "--format", "json", "--apply"], env);
    expect(r.code, r.output).toBe(3);
    expect(JSON.parse(r.stdout).drift).toHaveLength(3);
    expect(r.output).toContain("Tally is the system of record for erp");
    expect(await entryCount()).toBe(entries);
    expect(await countOutcomes()).toBe(0);
  }, 60_000);

  it("--apply records one count per drifted pair, then finds none; a second --apply changes nothing", async () => {
    const before = await entryCount();
    const first = await runTally(["reconcile", "erp", "--format", "json", "--apply"], env);
    expect(first.code, first.output).toBe(0);
    const out = JSON.parse(first.stdout);
    expect(out.drift).toHaveLength(3);
    expect(out.applied).toHaveLength(3);
    expect(out.after).toEqual([]);
    expect(await onHand("SKU-0001", "S01")).toBe(stock("SKU-0001", "S01").baseQty + 7);
    expect(await onHand("SKU-0002", "DC1")).toBe(0);
    expect(await onHand("SKU-0003", "S02")).toBe(stock("SKU-0003", "S02").baseQty);
    const counts = await h.sql<Array<{ sku: string; movement: string }>>`
      select sku, movement from ledger_entries where command_id like 'reconcile:%' order by sku`;
    expect(counts.map((e) => e.sku)).toEqual(["SKU-0001", "SKU-0002", "SKU-0003"]);
    const afterFirst = await entryCount();
    expect(afterFirst).toBe(before + 3);

    const second = await runTally(["reconcile", "erp", "--format", "json", "--apply"], env);
    expect(second.code, second.output).toBe(0);
    expect(JSON.parse(second.stdout).drift).toEqual([]);
    expect(await entryCount()).toBe(afterFirst);
    expect(await countOutcomes()).toBe(3);
  }, 120_000);

  it("compares at one point: a receipt the ERP books together with its on-hand, reconciled at once, is no drift", async () => {
    const d = stock("SKU-0004", "S01");
    const before = await onHand("SKU-0004", "S01");
    expect(before).toBe(d.baseQty);
    // The worker cannot apply to this balance while the test holds its row: the ledger lags the ERP.
    const lock = await h.sql.reserve();
    await lock`begin`;
    await lock`select qty from balances where sku = 'SKU-0004' and location = 'S01' and bucket = 'on_hand' for update`;
    // One ERP transaction: the streamed receipt and the on-hand it changes.
    await demo.erp.begin(async (tx) => {
      // The ERP's own trigger books the receipt on stock_on_hand in this transaction.
      await tx`insert into goods_receipts (item_no, location, qty, uom) values (${d.itemNo}, 'S01', 5, 'EA')`;
    });
    const child = spawnTally(["reconcile", "erp", "--format", "json"], env);
    let stdout = "";
    child.stdout!.on("data", (b: Buffer) => (stdout += b.toString()));
    const exited = new Promise<number | null>((resolve) => child.on("exit", (c) => resolve(c)));
    // Once reconcile is connected, long enough for it to read the ERP and compare, were it not waiting for the worker.
    await eventually("reconcile connected", async () => {
      const [{ n }] = await h.sql<[{ n: number }]>`
        select count(*)::int as n from pg_stat_activity where application_name = 'tally-reconcile' and datname = current_database()`;
      return n > 0;
    });
    await new Promise((r) => setTimeout(r, 6_000));
    expect(await onHand("SKU-0004", "S01")).toBe(before);
    await lock`commit`;
    lock.release();
    const code = await exited;
    expect(code, child.output()).toBe(0);
    expect(JSON.parse(stdout).drift).toEqual([]);
    expect(await onHand("SKU-0004", "S01")).toBe(before + 5);
  }, 60_000);

  it("a ledger that does not catch up within --timeout is a failure naming what is behind (exit 1), not a report", async () => {
    const d = stock("SKU-0005", "S02");
    const lock = await h.sql.reserve();
    await lock`begin`;
    await lock`select qty from balances where sku = 'SKU-0005' and location = 'S02' and bucket = 'on_hand' for update`;
    try {
      await demo.erp`insert into goods_receipts (item_no, location, qty, uom) values (${d.itemNo}, 'S02', 1, 'EA')`;
      const r = await runTally(["reconcile", "erp", "--timeout", "3"], env);
      expect(r.code, r.output).toBe(1);
      expect(r.output).toMatch(/the workers have not applied the commands up to [0-9A-F]+\/[0-9A-F]+ after 3s/);
      expect(r.stdout).toBe("");
    } finally {
      await lock`commit`;
      lock.release();
    }
  }, 60_000);

  it("usage errors exit 2; a source without an onHand declaration fails with a clear message (exit 1)", async () => {
    const bad = await runTally(["reconcile", "erp", "--format", "xml"], env);
    expect(bad.code).toBe(2);
    const shop = await runTally(["reconcile", "shop"], env);
    expect(shop.code).toBe(1);
    expect(shop.output).toContain("declares no onHand table");
  }, 60_000);
});

/** A POS sale at the till, which the ERP does not see (nothing writes it back in this test). */
async function posSale(id: string, sku: string, location: string, qty: number): Promise<void> {
  const sale = decodeCommand({
    id,
    type: "adjust",
    sku,
    location,
    qty: -qty,
    reason: "pos sale",
    source: { system: "pos", ref: id },
    occurredAt: new Date().toISOString(),
  });
  if (sale._tag === "Left") throw new Error(sale.left.message);
  const before = await onHand(sku, location);
  await publishCommands(h.nats.js, h.topology, [sale.right]);
  await eventually(`the sale ${id} applied`, async () => (await onHand(sku, location)) === before - qty);
}

/** EA pairs no earlier test touched: one at S01 (the ERP wins there), one at S02 (Tally wins there, in the cdc role's config). */
const fresh = (location: string, n: number) => DEMO_STOCK.filter((s) => s.uom === "EA" && s.location === location && s.sku > "SKU-0005")[n]!;
const erpQty = async (itemNo: string, location: string) =>
  Number((await demo.erp<[{ qty: string }]>`select qty::text as qty from stock_on_hand where item_no = ${itemNo} and location = ${location}`)[0].qty);
const lastRun = async () => (await lastRuns(h.sql, "erp"))[0];
/** Brings the ERP's on-hand to the ledger's for one pair (so the next test starts without drift there). */
const erpToLedger = async (s: { itemNo: string; sku: string; location: string }) =>
  demo.erp`update stock_on_hand set qty = ${await onHand(s.sku, s.location)} where item_no = ${s.itemNo} and location = ${s.location}`;

describe("reconciliation in the cdc role, per system of record", () => {
  const a = fresh("S01", 0);
  const b = fresh("S02", 0);

  it("the scheduled run reports exactly the drift injected into the ERP: in reconcile_runs and the metric, writing nothing", async () => {
    // Start from no drift at all (earlier tests leave a receipt the ERP's on-hand never saw).
    const align = await runTally(["reconcile", "erp", "--format", "json", "--apply"], env);
    expect(align.code, align.output).toBe(0);
    await eventually("a scheduled run without drift", async () => (await lastRun())?.pairs === 0 && (await lastRun())?.error === null, 60_000);
    const entries = await entryCount();
    await demo.erp`update stock_on_hand set qty = qty + 4 where item_no = ${a.itemNo} and location = 'S01'`;
    await demo.erp`update stock_on_hand set qty = qty - 2 where item_no = ${b.itemNo} and location = 'S02'`;
    await eventually("a scheduled run that sees the drift", async () => (await lastRun())?.pairs === 2, 60_000);
    const run = (await lastRun())!;
    expect(run).toMatchObject({ source: "erp", trigger: "schedule", pairs: 2, units: 6, applied: 0, error: null, tolerance: 0 });
    expect(run.at).toMatch(/^[0-9A-F]+\/[0-9A-F]+$/);
    expect(run.drift).toEqual([
      { sku: a.sku, location: "S01", ledger: a.baseQty, source: a.baseQty + 4, diff: 4 },
      { sku: b.sku, location: "S02", ledger: b.baseQty, source: b.baseQty - 2, diff: -2 },
    ]);
    const text = await tally.metrics.registry.metrics();
    expect(text).toMatch(/^tally_reconcile_drift_units\{source="erp"\} 6$/m);
    expect(text).toMatch(/^tally_reconcile_drift_pairs\{source="erp"\} 2$/m);
    const ts = Number(/^tally_reconcile_last_run_timestamp_seconds\{source="erp"\} (\S+)$/m.exec(text)?.[1]);
    expect(Math.abs(ts - Date.now() / 1000)).toBeLessThan(30);
    // The dashboard's block: the last run per source, its largest pairs first.
    const hub = new DashboardHub({ sql: h.sql, nats: h.nats, topology: h.topology, config: demo.config, readers: [] } as never);
    // (a later scheduled run may have replaced the one above: the same drift, another time and position)
    const [block] = (await hub.summary([])).reconciliation!;
    expect(block!.finishedAt >= run.finishedAt).toBe(true);
    expect([
      {
        ...block,
        finishedAt: run.finishedAt,
        at: run.at,
      },
    ]).toEqual([
      {
        source: "erp",
        finishedAt: run.finishedAt,
        trigger: "schedule",
        at: run.at,
        pairs: 2,
        units: 6,
        applied: 0,
        toWriteBack: 0,
        error: null,
        top: run.drift,
      },
    ]);
    // reconcileApply is off: the schedule reports only.
    expect(await entryCount()).toBe(entries);
    const [{ kept }] = await h.sql<[{ kept: number }]>`select count(*)::int as kept from reconcile_runs where source = 'erp'`;
    expect(kept).toBeGreaterThan(1);
  }, 180_000);

  it("--apply per location: where the ERP wins a count, where Tally wins no ledger change and the correction hook gets the diff", async () => {
    const config = decodeTallyConfig({
      ...demo.config,
      sources: { erp: { ...demo.config.sources.erp!, systemOfRecord: { default: "erp", locations: { S02: "tally" } }, writeBack: undefined } },
    });
    const source = findSource(config, "erp", ctx.env, { ...process.env, ...demo.env });
    const corrections: Array<[string, string, number]> = [];
    const run = async (correct: boolean) =>
      applyReconciliation(source, {
        ...(correct ? { correctSource: async (sku: string, location: string, diff: number) => void corrections.push([sku, location, diff]) } : {}),
      });
    const first = await run(true);
    const tallyPair = { sku: b.sku, location: "S02", ledger: b.baseQty, source: b.baseQty - 2, diff: -2 };
    expect(first.report.drift).toEqual([{ sku: a.sku, location: "S01", ledger: a.baseQty, source: a.baseQty + 4, diff: 4 }, tallyPair]);
    expect(first.applied.map((c) => [c.type, c.sku, c.location, (c as { qty: number }).qty])).toEqual([["count", a.sku, "S01", a.baseQty + 4]]);
    expect(first.corrected).toEqual([tallyPair]);
    expect(first.toWriteBack).toEqual([]);
    expect(corrections).toEqual([[b.sku, "S02", -2]]);
    expect(first.after?.drift).toEqual([tallyPair]);
    expect(await onHand(a.sku, "S01")).toBe(a.baseQty + 4);
    expect(await onHand(b.sku, "S02")).toBe(b.baseQty);

    // Without a write-back wired, the Tally-wins pair is reported "to write back"; the ERP-wins pair needs nothing more.
    const entries = await entryCount();
    const second = await run(false);
    expect(second.report.drift).toEqual([tallyPair]);
    expect(second.applied).toEqual([]);
    expect(second.toWriteBack).toEqual([tallyPair]);
    expect(corrections).toHaveLength(1);
    expect(await entryCount()).toBe(entries);
    expect(await onHand(b.sku, "S02")).toBe(b.baseQty);
    await erpToLedger(b);
  }, 120_000);

  it("resnapshot after POS sales: undone by reconciliation counts where the ERP wins, kept where Tally wins; policies still refreshed", async () => {
    const c = fresh("S01", 1);
    const d = fresh("S02", 1);
    await posSale("test-resnap-sale-s01", c.sku, "S01", 3);
    await posSale("test-resnap-sale-s02", d.sku, "S02", 3);
    const r = await runTally(["source", "resnapshot", "erp", "--timeout", "150"], env);
    expect(r.code, r.output).toBe(0);
    expect(r.stdout).toContain("re-snapshot done");
    // The drift report first (before anything was applied), then what the system of record decided.
    expect(r.stdout).toContain("2 (SKU, location) pairs differ");
    expect(r.stdout).toMatch(new RegExp(`${c.sku}\\s+S01\\s+${c.baseQty - 3}\\s+${c.baseQty}\\s+3`));
    expect(r.stdout).toContain("1 counts recorded (reason reconciliation) where the source wins; 1 pairs where Tally wins left unchanged");
    // ERP wins at S01: its 'stale' quantity is the truth, set by a reconciliation count; Tally wins at S02: the sale stays.
    expect(await onHand(c.sku, "S01")).toBe(c.baseQty);
    expect(await onHand(d.sku, "S02")).toBe(d.baseQty - 3);
    const counts = await h.sql<Array<{ sku: string; location: string }>>`
      select sku, location from ledger_entries where command_id like 'reconcile:erp:%' and sku in (${c.sku}, ${d.sku})`;
    expect(counts).toEqual([{ sku: c.sku, location: "S01" }]);
    const [{ lsn }] = await h.sql<[{ lsn: string }]>`select snapshot_lsn as lsn from cdc_sources where source = 'erp'`;
    const snapshotCommands = async (table: string) =>
      (await h.sql<[{ n: number }]>`select count(*)::int as n from command_outcomes where command_id like ${`erp:snapshot:${lsn}:${table}:%`}`)[0].n;
    expect(await snapshotCommands("public.stock_on_hand")).toBe(0);
    await eventually("the re-snapshot's policies applied", async () => (await snapshotCommands("public.item_locations")) > 0);
    const [resnap] = await h.sql<Array<{ to_write_back: Array<{ sku: string }>; applied: number }>>`
      select to_write_back, applied from reconcile_runs where source = 'erp' and trigger = 'resnapshot' order by run_id desc limit 1`;
    expect(resnap).toMatchObject({ applied: 1, to_write_back: [{ sku: d.sku, location: "S02", diff: 3 }] });
    expect(await erpQty(d.itemNo, "S02")).toBe(d.baseQty);
  }, 240_000);
});

describe("a halted source's re-snapshot", () => {
  it("a new slot and a full snapshot also leave on-hand to reconciliation: POS sales kept where Tally wins, the ERP's quantity where it wins", async () => {
    const f = fresh("S01", 3);
    const g = fresh("S02", 3);
    const align = await runTally(["reconcile", "erp", "--format", "json", "--apply"], env);
    expect(align.code, align.output).toBe(0);
    await posSale("test-halt-sale-s01", f.sku, "S01", 2);
    await posSale("test-halt-sale-s02", g.sku, "S02", 2);
    // The slot is dropped behind Tally's back (a failover, a DBA): the source halts until an operator re-snapshots.
    const slot = findSource(demo.config, "erp", ctx.env, { ...process.env, ...demo.env }).slot;
    const reader = tally.readers.find((r) => r.name === "erp")!;
    await eventually("the slot dropped", async () => {
      await demo.erp`select pg_terminate_backend(active_pid) from pg_replication_slots where slot_name = ${slot} and active_pid is not null`;
      return demo.erp`select pg_drop_replication_slot(${slot})`.then(
        () => true,
        () => false, // still active: the reader reconnected in between, terminate it again
      );
    });
    await eventually("the source halted", async () => reader.metrics.halted === "slot_lost", 60_000);
    const r = await runTally(["source", "resnapshot", "erp", "--timeout", "150"], env);
    expect(r.code, r.output).toBe(0);
    expect(r.stdout).toContain("source erp is halted (slot_lost)");
    expect(r.stdout).toContain("re-snapshot done");
    expect(r.stdout).toContain("2 (SKU, location) pairs differ");
    expect(r.stdout).toContain("1 counts recorded (reason reconciliation) where the source wins; 1 pairs where Tally wins left unchanged");
    expect(await onHand(f.sku, "S01")).toBe(f.baseQty);
    expect(await onHand(g.sku, "S02")).toBe(g.baseQty - 2);
    const [{ lsn }] = await h.sql<[{ lsn: string }]>`select snapshot_lsn as lsn from cdc_sources where source = 'erp'`;
    const [{ n }] = await h.sql<[{ n: number }]>`
      select count(*)::int as n from command_outcomes where command_id like ${`erp:snapshot:${lsn}:public.stock_on_hand:%`}`;
    expect(n).toBe(0);
    await eventually("streaming again", async () => reader.streaming);
  }, 240_000);
});

describe("write-back in flight and the run history", () => {
  it("units the inFlight hook reports (read inside the source's snapshot) are no drift, and --apply leaves them alone", async () => {
    // A reconciliation the re-snapshot tests above asked the cdc role for (it applies) must be over first: and
    // over it is, once (a request that was never cleared made the role reconcile with --apply every second).
    await eventually("no reconciliation requested of the cdc role", async () => {
      const [row] = await h.sql<[{ idle: boolean }]>`select reconcile_requested_at is null as idle from cdc_sources where source = 'erp'`;
      return row.idle;
    });
    const e = fresh("S01", 2);
    const align = await runTally(["reconcile", "erp", "--format", "json", "--apply"], env);
    expect(align.code, align.output).toBe(0);
    await posSale("test-inflight-sale", e.sku, "S01", 2);
    // Without write-back: the hook below is the only one (a source with one gets the write-back's).
    const noWriteBack = { ...demo.config, sources: { erp: { ...demo.config.sources.erp!, writeBack: undefined } } };
    const source = findSource(noWriteBack, "erp", ctx.env, { ...process.env, ...demo.env });
    const isolation: Array<string> = [];
    const run = async (withHook: boolean) =>
      applyReconciliation(source, {
        ...(withHook
          ? {
              inFlight: async () => async (tx) => {
                isolation.push((await tx<[{ level: string }]>`select current_setting('transaction_isolation') as level`)[0].level);
                return [{ sku: e.sku, location: "S01", qty: -2 }];
              },
            }
          : {}),
      });
    const entries = await entryCount();
    const held = await run(true);
    expect(held.report.drift).toEqual([]);
    expect(held.applied).toEqual([]);
    expect(isolation).toEqual(["repeatable read"]);
    expect(await entryCount()).toBe(entries);
    // Without the hook the sale is drift, and the ERP (system of record at S01) wins it back.
    const undone = await run(false);
    expect(undone.report.drift).toEqual([{ sku: e.sku, location: "S01", ledger: e.baseQty - 2, source: e.baseQty, diff: 2 }]);
    expect(await onHand(e.sku, "S01")).toBe(e.baseQty);
  }, 120_000);

  it("keeps the last 1000 runs per source", async () => {
    const { recordRun } = await import("../cdc/reconcileRun.ts");
    for (let i = 0; i < 1003; i++)
      await recordRun(h.sql, { source: "history-test", trigger: "schedule", startedAt: new Date(), tolerance: 0, error: `run ${i}` });
    const rows = await h.sql<Array<{ error: string }>>`select error from reconcile_runs where source = 'history-test' order by run_id`;
    expect(rows).toHaveLength(1000);
    expect(rows[0]!.error).toBe("run 3");
    expect((await lastRuns(h.sql, "history-test"))[0]).toMatchObject({ error: "run 1002", pairs: 0, units: 0 });
  }, 120_000);
});

describe("config and comparison", () => {
  it("systemOfRecord per location and reconcileEvery decode; a bad duration names its field", () => {
    const base = { channels: { web: { locations: ["S01"] } } };
    const source = { tables: {}, systemOfRecord: { default: "erp", locations: { S01: "tally" } }, reconcileEvery: "15m" };
    const config = decodeTallyConfig({ ...base, sources: { erp: source } });
    const resolved = findSource(config, "erp", "test", { TALLY_SOURCE_ERP_URL: "postgres://x/y" });
    expect(resolved).toMatchObject({
      systemOfRecord: { default: "erp", locations: { S01: "tally" } },
      reconcileEveryMs: 900_000,
      reconcileTolerance: 0,
      reconcileApply: false,
    });
    expect(
      findSource(decodeTallyConfig({ ...base, sources: { erp: { tables: {} } } }), "erp", "test", { TALLY_SOURCE_ERP_URL: "postgres://x/y" }),
    ).toMatchObject({
      systemOfRecord: { default: "erp", locations: {} },
      reconcileEveryMs: null,
    });
    expect(() => decodeTallyConfig({ ...base, sources: { erp: { ...source, reconcileEvery: "15 minutes" } } })).toThrow(
      /sources\.erp\.reconcileEvery: expected a duration/,
    );
    expect(() =>
      decodeTallyConfig({ ...base, sources: { erp: { ...source, systemOfRecord: { default: "erp", locations: { S01: "pos" } } } } }),
    ).toThrow(/sources\.erp\.systemOfRecord/);
  });

  it("units in flight to the source are taken off the ledger's side; a count then sets the ledger to source + in flight", () => {
    const m = (qty: number) => new Map([["X\u0000S01", { sku: "X", location: "S01", qty }]]);
    // The ledger sold 3 the ERP has not received yet: no drift.
    expect(compareOnHand(m(20), m(17), 0, m(-3))).toEqual([]);
    // The ERP also lost 2 on its own: drift of 2, with the sale still in flight.
    const drift = compareOnHand(m(18), m(17), 0, m(-3));
    expect(drift).toEqual([{ sku: "X", location: "S01", ledger: 17, source: 18, diff: -2, inFlight: -3 }]);
    const [count] = reconciliationCommands({ source: "erp", at: "0/1", drift }, "2026-11-30T12:00:00Z");
    expect(count).toMatchObject({ type: "count", qty: 15 });
  });
});

describe("reconciliationCommands", () => {
  it("are counts with reason reconciliation, under the same deterministic id as before the reason existed", () => {
    const report = { source: "erp", at: "0/16B3748", drift: [{ sku: "SKU-0001", location: "S01", ledger: 35, source: 42, diff: 7 }] };
    const commands = reconciliationCommands(report, "2026-11-30T12:00:00Z");
    expect(commands).toHaveLength(1);
    const command = commands[0]!;
    expect(command).toMatchObject({ type: "count", sku: "SKU-0001", location: "S01", qty: 42, reason: "reconciliation" });
    // sha256("erp\0SKU-0001\0S01\00/16B3748\042"), first 32 hex digits: what earlier releases published.
    expect(command.id).toBe("reconcile:erp:83d451337260277507f2e8cd441d0056");
    expect(reconciliationCommands(report, "2026-12-01T00:00:00Z")[0]!.id).toBe(command.id);
  });
});
