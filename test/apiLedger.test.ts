import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodeCommand, type Command } from "../src/contract/command.ts";
import { verifyLedger } from "../ledger/index.ts";
import { EXPORT_COLUMNS, EXPORT_CURSOR_HEADER, EXPORT_SUMMARY_TRAILER, type ExportSummary } from "../ledger/export.ts";
import { publishCommands } from "../src/wire/publisher.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { runTally, tallyEnv } from "./support/tally.ts";
import { settle, startApi, type ApiFixture } from "./apiSupport.ts";

let ctx: TestContext;
let api: ApiFixture;
let dir: string;
let ids: Array<string>;
let between: string;

beforeAll(async () => {
  ctx = await testContext();
  api = await startApi(ctx);
  dir = await mkdtemp(path.join(tmpdir(), "tally-ledger-"));
  const cmds = (offset: number): Array<Command> =>
    Array.from({ length: 20 }, (_, i) => {
      const d = decodeCommand({
        id: `led:${offset + i}`,
        type: i % 4 === 3 ? "sell" : "receive",
        sku: `L-${i % 3}`,
        location: i % 2 ? "S01" : "DC1",
        qty: 1 + (i % 5),
        source: { system: "erp", ref: `gr,"${i}"` }, // a comma and quotes, for the CSV
        occurredAt: "2026-11-26T10:00:00Z",
      });
      if (d._tag === "Left") throw d.left;
      return d.right;
    });
  const first = cmds(0);
  await publishCommands(api.h.nats.js, api.h.topology, first);
  await settle(
    api.h,
    first.map((c) => c.id),
  );
  await new Promise((r) => setTimeout(r, 20));
  between = new Date().toISOString();
  await new Promise((r) => setTimeout(r, 20));
  const second = cmds(20);
  await publishCommands(api.h.nats.js, api.h.topology, second);
  await settle(
    api.h,
    second.map((c) => c.id),
  );
  ids = [...first, ...second].map((c) => c.id);
});
afterAll(async () => {
  await api?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

type Entry = {
  entryId: number;
  commandId: string;
  sku: string;
  location: string;
  movement: string;
  recordedAt: string;
  delta: number;
  value: number | string | null;
  unitCost: number | string | null;
  valuationFlag: string | null;
};

async function allPages(query: string, limit: number, as: "ledger" | "storeLedger" = "ledger"): Promise<{ entries: Array<Entry>; pages: number }> {
  const entries: Array<Entry> = [];
  let cursor: string | null = null;
  let pages = 0;
  do {
    const r = await api.call({ method: "GET", url: `/v1/ledger/entries?limit=${limit}${query}${cursor ? `&cursor=${cursor}` : ""}`, as });
    expect(r.statusCode).toBe(200);
    const body = r.json() as { entries: Array<Entry>; nextCursor: string | null };
    entries.push(...body.entries);
    cursor = body.nextCursor;
    pages++;
  } while (cursor !== null);
  return { entries, pages };
}

describe("GET /v1/ledger/entries", () => {
  it("pages through every entry in entry order, each exactly once", async () => {
    const { entries, pages } = await allPages("", 7);
    expect(entries).toHaveLength(40);
    expect(pages).toBe(6);
    const order = entries.map((e) => e.entryId);
    expect([...order].sort((a, b) => a - b)).toEqual(order);
    expect(new Set(order).size).toBe(40);
    expect(new Set(entries.map((e) => e.commandId))).toEqual(new Set(ids));
    expect(entries[0]).toMatchObject({ leg: 1, bucket: "on_hand", sourceSystem: "erp", skuSeq: 1, prevHash: "0".repeat(64) });
  });

  it("filters by SKU, location, movement and time", async () => {
    const sku = await allPages("&sku=L-1", 4);
    expect(sku.entries.length).toBeGreaterThan(0);
    expect(sku.entries.every((e) => e.sku === "L-1")).toBe(true);
    // One SKU pages through its chain index from the cursor's entry: every entry once, in entry order.
    const stored = (await api.sql<Array<{ entry_id: number }>>`select entry_id from ledger_entries where sku = 'L-1' order by entry_id`).map(
      (r) => r.entry_id,
    );
    expect(stored.length).toBeGreaterThan(1);
    expect((await allPages("&sku=L-1", 1)).entries.map((e) => e.entryId)).toEqual(stored);
    // A cursor that is another SKU's entry: the SKU's entries after it, in entry order. The latest
    // one below L-1's last entry always exists (the first round settled before the second began),
    // whether or not the partitions' commits interleaved L-1's chain with other entries.
    const [other] = await api.sql<Array<{ entry_id: number }>>`
      select entry_id from ledger_entries where sku <> 'L-1' and entry_id < ${stored.at(-1)!} order by entry_id desc limit 1`;
    expect(other).toBeDefined();
    const after = await api.call({ method: "GET", url: `/v1/ledger/entries?sku=L-1&limit=1000&cursor=${other!.entry_id}`, as: "ledger" });
    expect((after.json() as { entries: Array<Entry> }).entries.map((e) => e.entryId)).toEqual(stored.filter((id) => id > other!.entry_id));
    const loc = await allPages("&location=S01&type=sell", 100);
    expect(loc.entries.every((e) => e.location === "S01" && e.movement === "sell")).toBe(true);
    expect(loc.entries).toHaveLength(10);
    const late = await allPages(`&from=${encodeURIComponent(between)}`, 100);
    expect(late.entries.map((e) => e.commandId).sort()).toEqual(ids.slice(20).sort());
    const early = await allPages(`&to=${encodeURIComponent(between)}`, 100);
    expect(early.entries).toHaveLength(20);
  });

  it("shows a channel token its channel's locations only (403 for another location)", async () => {
    const store = await allPages("", 100, "storeLedger");
    expect(store.entries).toHaveLength(20);
    expect(store.entries.every((e) => e.location === "S01")).toBe(true);
    expect((await api.call({ method: "GET", url: "/v1/ledger/entries?location=DC1", as: "storeLedger" })).statusCode).toBe(403);
  });

  it("carries each entry's value, unit cost and valuation flag as stored (numbers; null where absent)", async () => {
    const { entries } = await allPages("", 1000);
    const stored = await api.sql<Array<{ entry_id: number; value: string | null; unit_cost: string | null; valuation_flag: string | null }>>`
      select entry_id, value, unit_cost, valuation_flag from ledger_entries order by entry_id`;
    const num = (v: string | null) => (v === null ? null : Number(v));
    expect(entries.map((e) => [e.entryId, e.value, e.unitCost, e.valuationFlag])).toEqual(
      stored.map((r) => [r.entry_id, num(r.value), num(r.unit_cost), r.valuation_flag]),
    );
    // The worker valued every on_hand leg: the check above compared values, not only nulls.
    expect(entries.every((e) => typeof e.value === "number")).toBe(true);
    expect(entries.some((e) => e.valuationFlag !== null)).toBe(true);
    // The CSV export carries the same, in plain integer digits (empty where null).
    const csv = (await api.call({ method: "GET", url: "/v1/ledger/export?format=csv", as: "ledger" })).body.slice(0, -2).split("\r\n");
    const col = (name: string) => EXPORT_COLUMNS.indexOf(name as (typeof EXPORT_COLUMNS)[number]);
    // No cell here is quoted before the value columns (source_ref, the one with commas, comes after).
    const cells = csv.slice(1).map((l) => l.split(","));
    expect(cells.map((c) => [c[col("value")], c[col("unit_cost")], c[col("valuation_flag")]])).toEqual(
      stored.map((r) => [r.value ?? "", r.unit_cost ?? "", r.valuation_flag ?? ""]),
    );
  });

  it("answers 400 for a bad cursor, limit, type or date", async () => {
    for (const q of ["cursor=abc", "limit=0", "limit=5000", "type=steal", "from=yesterday"]) {
      const r = await api.call({ method: "GET", url: `/v1/ledger/entries?${q}`, as: "ledger" });
      expect(r.statusCode, q).toBe(400);
      expect(r.json().code).toBe("invalid_request");
    }
  });
});

describe("GET /v1/ledger/export", () => {
  const summaryOf = (r: { trailers: Record<string, string> }): ExportSummary => JSON.parse(r.trailers[EXPORT_SUMMARY_TRAILER]!) as ExportSummary;

  it("streams RFC 4180 CSV (header, rows, nothing else), the summary in a trailer that matches verify", async () => {
    const r = await api.call({ method: "GET", url: "/v1/ledger/export?format=csv", as: "ledger" });
    expect(r.statusCode).toBe(200);
    expect(r.headers["content-type"]).toMatch(/text\/csv/);
    expect(r.body.endsWith("\r\n")).toBe(true);
    const lines = r.body.slice(0, -2).split("\r\n");
    expect(lines[0]).toBe(EXPORT_COLUMNS.join(","));
    expect(lines).toHaveLength(41);
    expect(lines[1]).toMatch(/,"gr,""\d+""",/);
    expect(r.body).not.toContain("summary");
    const summary = summaryOf(r);
    const report = await verifyLedger(api.sql);
    expect(report.ok).toBe(true);
    expect(summary.count).toBe(report.entries);
    // No item master defines these SKUs: their unit is "" (and so is the CSV cell).
    const sums = await api.sql<Array<{ bucket: string; total: number }>>`select bucket, sum(qty)::float8 as total from balances group by bucket`;
    for (const s of sums) expect(summary.sums[""]![s.bucket]).toBe(s.total);
    const [last] = await api.sql<Array<{ hash: string }>>`select hash from ledger_entries order by entry_id desc limit 1`;
    expect(summary.lastHash).toBe(last!.hash);
    expect(r.headers[EXPORT_CURSOR_HEADER]).toBe(summary.nextCursor);
  });

  it("streams NDJSON over a range, one entry per line and nothing else", async () => {
    const r = await api.call({ method: "GET", url: `/v1/ledger/export?format=ndjson&from=${encodeURIComponent(between)}`, as: "ledger" });
    expect(r.body.endsWith("}\n")).toBe(true);
    const lines = r.body
      .slice(0, -1)
      .split("\n")
      .map((l) => JSON.parse(l));
    expect(lines).toHaveLength(20);
    expect(lines[0]).toHaveProperty("hash");
    expect(lines[0]).toHaveProperty("unit", "");
    expect(summaryOf(r)).toMatchObject({ count: 20, from: between });
  });

  it("resumes from the cursor: nothing new, nothing repeated", async () => {
    const first = await api.call({ method: "GET", url: "/v1/ledger/export?format=ndjson", as: "ledger" });
    const cursor = first.headers[EXPORT_CURSOR_HEADER] as string;
    const again = await api.call({ method: "GET", url: `/v1/ledger/export?format=ndjson&cursor=${cursor}`, as: "ledger" });
    expect(again.statusCode).toBe(200);
    expect(again.body).toBe("");
    expect(summaryOf(again)).toMatchObject({ count: 0, cursor });
  });

  it("answers 400 for a bad format, date or cursor, 403 for a channel token", async () => {
    expect((await api.call({ method: "GET", url: "/v1/ledger/export?format=xlsx", as: "ledger" })).statusCode).toBe(400);
    expect((await api.call({ method: "GET", url: "/v1/ledger/export?to=soon", as: "ledger" })).statusCode).toBe(400);
    expect((await api.call({ method: "GET", url: "/v1/ledger/export?cursor=-1", as: "ledger" })).statusCode).toBe(400);
    expect((await api.call({ method: "GET", url: "/v1/ledger/export", as: "storeLedger" })).statusCode).toBe(403);
  });

  it("does the same from the CLI: tally ledger export --format --out, the summary beside the file and on stderr", async () => {
    const out = path.join(dir, "ledger.ndjson");
    const r = await runTally(["ledger", "export", "--format", "ndjson", "--out", out, "--to", between], tallyEnv(ctx));
    expect(r.code).toBe(0);
    const lines = (await readFile(out, "utf8")).slice(0, -1).split("\n");
    expect(lines).toHaveLength(20);
    const summary = JSON.parse(await readFile(`${out}.summary.json`, "utf8")) as ExportSummary;
    expect(summary.count).toBe(20);
    expect(r.output).toContain(JSON.stringify(summary));
    const csv = await runTally(["ledger", "export"], tallyEnv(ctx));
    expect(csv.stdout.split("\r\n")[0]).toBe(EXPORT_COLUMNS.join(","));
    expect(csv.stdout.split("\r\n")).toHaveLength(42); // header, 40 rows, the empty string after the last CRLF
    const stderrSummary = JSON.parse(csv.output.replace(csv.stdout, "").trim()) as ExportSummary;
    expect(stderrSummary.count).toBe(40);
    const resumed = await runTally(["ledger", "export", "--cursor", stderrSummary.nextCursor], tallyEnv(ctx));
    expect(resumed.stdout).toBe(`${EXPORT_COLUMNS.join(",")}\r\n`);
    const bad = await runTally(["ledger", "export", "--format", "xml"], tallyEnv(ctx));
    expect(bad.code).toBe(2);
    expect(bad.output).toContain("--format: expected csv or ndjson");
  });
});

describe("tally token new", () => {
  it("prints a token and the hashed entry to configure", async () => {
    const r = await runTally(["token", "new", "checkout", "--scopes", "reservations:write", "--channel", "web"], tallyEnv(ctx));
    expect(r.code).toBe(0);
    const entry = JSON.parse(r.stdout.trim().split("\n").at(-1)!);
    expect(entry).toMatchObject({ id: "checkout", scopes: ["reservations:write"], channel: "web" });
    expect(entry.sha256).toMatch(/^[0-9a-f]{64}$/);
    const bad = await runTally(["token", "new", "x", "--scopes", "root"], tallyEnv(ctx));
    expect(bad.code).toBe(2);
  });
});
