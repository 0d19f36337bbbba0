import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Sql } from "../src/platform/db.ts";
import { EXPORT_COLUMNS, EXPORT_CURSOR_HEADER, EXPORT_SUMMARY_TRAILER, type ExportSummary } from "../ledger/export.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { eventually } from "./support/tally.ts";
import { startApi, type ApiFixture } from "./apiSupport.ts";
import { pythonWithPandas, run } from "./support/python.ts";

let ctx: TestContext;
let api: ApiFixture;
let dir: string;

beforeAll(async () => {
  ctx = await testContext();
  // No worker: the writers below insert entries themselves, holding their transactions open a while.
  api = await startApi(ctx, { background: false }, []);
  dir = await mkdtemp(path.join(tmpdir(), "tally-export-"));
});
afterAll(async () => {
  await api?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** Inserts `rows` entries of one SKU in the caller's transaction (no hash chain: export does not check it). */
async function insertEntries(
  tx: Sql,
  rows: ReadonlyArray<{
    commandId: string;
    sku: string;
    seq: number;
    delta: number;
    ref?: string;
    location?: string;
    /** Valuation (decimal text, numeric(38,0)); absent: null, as entries from before valuation. */
    value?: string;
    unitCost?: string;
    flag?: "no_cost" | "negative_stock";
  }>,
): Promise<void> {
  for (const r of rows)
    await tx`
      insert into ledger_entries (command_id, leg, sku, location, bucket, delta, balance_after, movement, source_system, source_ref,
                                  occurred_at, recorded_at, sku_seq, value, unit_cost, valuation_flag, prev_hash, hash)
      values (${r.commandId}, 1, ${r.sku}, ${r.location ?? "DC1"}, 'on_hand', ${r.delta}, 0, 'receive', 'erp', ${r.ref ?? "ref"},
              now(), clock_timestamp(), ${r.seq}, ${r.value ?? null}::numeric, ${r.unitCost ?? null}::numeric, ${r.flag ?? null}, 'p', 'h')`;
}

/** GET /v1/ledger/export, with the next cursor (header) and the summary (trailer). */
async function pull(format: "csv" | "ndjson", cursor?: string) {
  const r = await api.call({ method: "GET", url: `/v1/ledger/export?format=${format}${cursor ? `&cursor=${cursor}` : ""}`, as: "ledger" });
  expect(r.statusCode).toBe(200);
  const summary = JSON.parse(r.trailers[EXPORT_SUMMARY_TRAILER]!) as ExportSummary;
  expect(r.headers[EXPORT_CURSOR_HEADER]).toBe(summary.nextCursor);
  return { body: r.body, summary };
}

describe("incremental export with concurrent writers", () => {
  it("pulled with the cursor as fast as possible, the exports hold every committed entry exactly once", async () => {
    const WRITERS = 8;
    const TXS = 40;
    // Each writer commits transactions of 1–5 entries, sleeping inside them: an entry's recorded_at and
    // entry_id are taken long before its commit, the way the original time-window export lost rows.
    const writers = Array.from({ length: WRITERS }, async (_, w) => {
      let seq = 0;
      for (let t = 0; t < TXS; t++) {
        const n = 1 + ((w + t) % 5);
        await api.sql.begin(async (tx) => {
          await insertEntries(
            tx as unknown as Sql,
            Array.from({ length: n }, () => ({ commandId: `w${w}:${++seq}`, sku: `X-${w}`, seq, delta: 1 })),
          );
          await tx`select pg_sleep(${(Math.random() * 30) / 1000})`;
        });
      }
    });
    let done = false;
    const all = Promise.all(writers).finally(() => (done = true));
    const seen: Array<number> = [];
    let cursor: string | undefined;
    let pulls = 0;
    const pullOnce = async () => {
      const { body, summary } = await pull("ndjson", cursor);
      const ids =
        body === ""
          ? []
          : body
              .slice(0, -1)
              .split("\n")
              .map((l) => (JSON.parse(l) as { entryId: number }).entryId);
      expect(ids).toHaveLength(summary.count);
      seen.push(...ids);
      cursor = summary.nextCursor;
      pulls++;
    };
    while (!done) await pullOnce();
    await all;
    const [{ total }] = await api.sql<[{ total: number }]>`select count(*)::int as total from ledger_entries`;
    // Another test file's open transaction on the same server may hold the horizon back a moment.
    await eventually("the exports to reach every entry", async () => {
      await pullOnce();
      return seen.length >= total;
    });
    const ledger = (await api.sql<Array<{ entry_id: number }>>`select entry_id from ledger_entries order by entry_id`).map((r) => r.entry_id);
    expect(new Set(seen).size).toBe(seen.length); // no entry twice
    expect([...seen].sort((a, b) => a - b)).toEqual(ledger); // none missing
    expect(ledger.length).toBe(WRITERS * TXS * 3); // Σ over t of 1 + ((w + t) mod 5): 40 tx = 8 rounds of 1..5
    console.log(`export: ${pulls} pulls for ${ledger.length} entries from ${WRITERS} writers`);
    expect(pulls).toBeGreaterThan(10);
  });
});

describe("the export files load in real readers with default settings", () => {
  it("the README documents the CSV header exactly", async () => {
    const readme = await readFile(new URL("../README.md", import.meta.url), "utf8");
    expect(readme).toContain(`\`${EXPORT_COLUMNS.join(",")}\``);
  });

  it("Python's csv module and pandas read CSV and NDJSON: right row count, integer columns, units and values per row", async () => {
    // Only the entries below (the test above left entries without values: those are empty cells).
    const before = (await pull("ndjson")).summary.nextCursor;
    await api.sql`insert into items (sku, kind, base_unit, defined_by) values ('BANANA', 'stock', 'g', 'erp'), ('TIN', 'stock', 'EA', 'erp')`;
    // A bundle's command id with '#', refs with a comma, quotes, a line break and a leading '#'.
    await api.sql.begin(async (tx) => {
      await insertEntries(tx as unknown as Sql, [
        { commandId: "pos:S01:1:7#BANANA", sku: "BANANA", seq: 1, delta: 1250, ref: '#1, the "big" one', value: "3750", unitCost: "3" },
        { commandId: "pos:S01:1:7#TIN", sku: "TIN", seq: 1, delta: 3, ref: "two\nlines", value: String(3n * 2n ** 59n), unitCost: String(2n ** 59n) },
        {
          commandId: "erp:gr:9",
          sku: "BANANA",
          seq: 2,
          delta: -250,
          ref: "# not a comment",
          location: "S01",
          value: "-750",
          unitCost: "3",
          flag: "negative_stock",
        },
      ]);
    });
    // The export reaches an entry once every transaction older than it has ended: another test file's open
    // transaction on the same server may hold that horizon back a moment (as in the test above).
    await eventually("the export to reach the three entries", async () => (await pull("csv", before)).summary.count === 3);
    const csv = await pull("csv", before);
    const nd = await pull("ndjson", before);
    expect(csv.summary.count).toBe(3);
    // NDJSON: a number within 2^53, a decimal string past it (3 × 2^59), null where absent.
    const ndRows = nd.body
      .slice(0, -1)
      .split("\n")
      .map((l) => JSON.parse(l) as { value: unknown; unitCost: unknown; valuationFlag: unknown });
    expect(ndRows.map((r) => [r.value, r.unitCost, r.valuationFlag])).toEqual([
      [3750, 3, null],
      [String(3n * 2n ** 59n), String(2n ** 59n), null],
      [-750, 3, "negative_stock"],
    ]);
    // An entry from before valuation: empty cells, and the file stays rectangular.
    const all = await pull("csv");
    const firstRow = all.body.split("\r\n")[1]!.split(",");
    expect(firstRow).toHaveLength(EXPORT_COLUMNS.length);
    for (const c of ["value", "unit_cost", "valuation_flag"] as const) expect(firstRow[EXPORT_COLUMNS.indexOf(c)]).toBe("");
    const rows = csv.summary.count;
    expect(rows).toBe(nd.summary.count);
    expect(csv.summary.sums.g!.on_hand).toBe(1000);
    expect(csv.summary.sums.EA!.on_hand).toBe(3);
    const csvFile = path.join(dir, "ledger.csv");
    const ndFile = path.join(dir, "ledger.ndjson");
    await writeFile(csvFile, csv.body);
    await writeFile(ndFile, nd.body);
    const script = `
import csv, json, sys
import pandas as pd
csv_file, nd_file = sys.argv[1], sys.argv[2]
with open(csv_file, newline="") as f:
    records = list(csv.reader(f))
header, body = records[0], records[1:]
df = pd.read_csv(csv_file)
with open(nd_file) as f:
    lines = [json.loads(line) for line in f]
nd = pd.read_json(nd_file, lines=True)
print(json.dumps({
    "header": header,
    "csvRows": len(body),
    "widths": sorted(set(len(r) for r in records)),
    "pandasRows": len(df),
    "dtypes": {c: str(df[c].dtype) for c in ["entry_id", "leg", "delta", "balance_after", "sku_seq", "value", "unit_cost"]},
    "valueSum": str(int(df["value"].sum())),
    "valueCells": [r[header.index("value")] for r in body],
    "flags": df["valuation_flag"].fillna("").tolist(),
    "units": df["unit"].fillna("").tolist()[-3:],
    "commandIds": df["command_id"].tolist()[-3:],
    "refs": df["source_ref"].tolist()[-3:],
    "ndRows": len(lines),
    "ndPandasRows": len(nd),
    "ndDeltaType": str(nd["delta"].dtype),
}))
`;
    const { stdout } = await run(await pythonWithPandas(), ["-c", script, csvFile, ndFile]);
    const seen = JSON.parse(stdout) as Record<string, unknown>;
    expect(seen).toMatchObject({
      header: [...EXPORT_COLUMNS],
      csvRows: rows,
      widths: [EXPORT_COLUMNS.length],
      pandasRows: rows,
      dtypes: { entry_id: "int64", leg: "int64", delta: "int64", balance_after: "int64", sku_seq: "int64", value: "int64", unit_cost: "int64" },
      // Exact: 3750 + 3 × 2^59 − 750, summed in int64 (a float would have rounded it).
      valueSum: String(3750n + 3n * 2n ** 59n - 750n),
      valueCells: ["3750", String(3n * 2n ** 59n), "-750"],
      flags: ["", "", "negative_stock"],
      units: ["g", "EA", "g"],
      commandIds: ["pos:S01:1:7#BANANA", "pos:S01:1:7#TIN", "erp:gr:9"],
      refs: ['#1, the "big" one', "two\nlines", "# not a comment"],
      ndRows: rows,
      ndPandasRows: rows,
      ndDeltaType: "int64",
    });
  });
});
