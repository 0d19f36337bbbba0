import { execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEMO_STOCK } from "../cdc/demo/seed.ts";
import { reconciliationCommands } from "../cdc/reconcile.ts";
import { decodeCommand } from "../src/contract/index.ts";
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
  // Without write-back: these tests need movements the ERP never saw.
  const erp = { ...demo.config.sources.erp!, heartbeatSeconds: 1, writeBack: undefined };
  tally = await startInProcess(ctx, ["worker", "relay", "cdc"], {}, { ...demo.config, sources: { ...demo.config.sources, erp } });
  env = { ...tallyEnv(ctx), ...demo.env };
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
        "export default { ...config, sources: { ...config.sources, erp: { ...config.sources.erp, systemOfRecord: 'tally' } } };\n",
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
