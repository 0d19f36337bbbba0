import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { existsSync } from "node:fs";
import type { AddressInfo } from "node:net";
import { chromium } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GL_EXPORT_COLUMNS, openGlExport, type GlExportSummary } from "../ledger/glExport.ts";
import { banner } from "../src/app/dev.ts";
import { loadSettings } from "../src/platform/settings.ts";
import type { Sql } from "../src/platform/db.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { horizonPast, insertJournal, type FixtureJournal } from "./support/glJournal.ts";
import { runTally, tallyEnv } from "./support/tally.ts";
import { startApi, type ApiFixture } from "./apiSupport.ts";
import { pythonWithPandas, run } from "./support/python.ts";

let ctx: TestContext;
let api: ApiFixture;
let dir: string;

beforeAll(async () => {
  ctx = await testContext();
  // No worker: the journals below are inserted directly, as the posters would.
  api = await startApi(ctx, { background: false }, []);
  dir = await mkdtemp(path.join(tmpdir(), "tally-gl-"));
});
afterAll(async () => {
  await api?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const BIG = 3n * 2n ** 59n; // past 2^53, within int64

/** A receipt: inventory against goods received not invoiced. */
const receipt = (journalId: string, businessDate: string, value: bigint | number, extra: Partial<FixtureJournal> = {}): FixtureJournal => ({
  journalId,
  businessDate,
  lines: [
    { account: "1400", debit: value, sku: "TIN", qty: 3, unit: "EA" },
    { account: "2100", credit: value, sku: "TIN", qty: 3, unit: "EA" },
  ],
  ...extra,
});

async function exportAll(format: "csv" | "ndjson", range: { from?: string; to?: string; cursor?: string }) {
  await horizonPast(api.sql);
  const exp = await openGlExport(api.sql, format, range);
  let body = "";
  let summary: GlExportSummary | undefined;
  for (;;) {
    const next = await exp.chunks.next();
    if (next.done) {
      summary = next.value;
      break;
    }
    body += next.value;
  }
  return { body, summary: summary!, nextCursor: exp.nextCursor };
}

const ndLines = (body: string) =>
  body === ""
    ? []
    : body
        .slice(0, -1)
        .split("\n")
        .map((l) => JSON.parse(l) as Record<string, unknown>);

describe("tally gl export: the journal file", () => {
  it("the README lists the CSV columns exactly", async () => {
    const readme = await readFile(new URL("../README.md", import.meta.url), "utf8");
    expect(readme).toContain(`\`${GL_EXPORT_COLUMNS.join(",")}\``);
  });

  it("CSV is rectangular and loads in pandas with default settings: debit, credit and qty as int64, memo and refs intact", async () => {
    await insertJournal(api.sql, receipt("erp:gr:1", "2026-03-02", 1250, { sourceRef: '#7, the "big" one' }));
    await insertJournal(api.sql, {
      journalId: "money:S01:1:9",
      kind: "pos_money",
      businessDate: "2026-03-02",
      commandId: null,
      movement: "sell",
      sourceSystem: "pos",
      lines: [
        { account: "1010", debit: 1190, costCenter: "S01", memo: 'card, "visa"\nsecond line' },
        { account: "4000", credit: 1000, costCenter: "S01" },
        { account: "2300", credit: 190, costCenter: "S01" },
      ],
    });
    await insertJournal(api.sql, receipt("erp:gr:2", "2026-03-03", BIG));
    const csv = await exportAll("csv", { from: "2026-03-01", to: "2026-03-31" });
    const nd = await exportAll("ndjson", { from: "2026-03-01", to: "2026-03-31" });
    expect(csv.summary).toMatchObject({ count: 7, debit: String(BIG + 1250n + 1190n), credit: String(BIG + 1250n + 1190n) });
    // NDJSON: amounts as numbers, a decimal string past 2^53; qty 0 and nulls on a money line.
    expect(ndLines(nd.body).map((r) => [r.journalId, r.line, r.debit, r.credit, r.qty, r.sku, r.commandId])).toEqual([
      ["erp:gr:1", 1, 1250, 0, 3, "TIN", "erp:gr:1"],
      ["erp:gr:1", 2, 0, 1250, 3, "TIN", "erp:gr:1"],
      ["money:S01:1:9", 1, 1190, 0, 0, null, null],
      ["money:S01:1:9", 2, 0, 1000, 0, null, null],
      ["money:S01:1:9", 3, 0, 190, 0, null, null],
      ["erp:gr:2", 1, String(BIG), 0, 3, "TIN", "erp:gr:2"],
      ["erp:gr:2", 2, 0, String(BIG), 3, "TIN", "erp:gr:2"],
    ]);
    expect(ndLines(nd.body)[2]).toMatchObject({
      postedOn: "2026-03-02",
      businessDate: "2026-03-02",
      period: "2026-03",
      memo: 'card, "visa"\nsecond line',
    });
    const csvFile = path.join(dir, "gl.csv");
    await writeFile(csvFile, csv.body);
    const script = `
import csv, json, sys
import pandas as pd
with open(sys.argv[1], newline="") as f:
    records = list(csv.reader(f))
df = pd.read_csv(sys.argv[1])
print(json.dumps({
    "header": records[0],
    "widths": sorted(set(len(r) for r in records)),
    "rows": len(df),
    "dtypes": {c: str(df[c].dtype) for c in ["line", "debit", "credit", "qty"]},
    "debit": str(int(df["debit"].sum())),
    "credit": str(int(df["credit"].sum())),
    "memo": df["memo"].fillna("").tolist(),
    "refs": df["source_ref"].tolist(),
    "sku": df["sku"].fillna("").tolist(),
}))
`;
    const { stdout } = await run(await pythonWithPandas(), ["-c", script, csvFile]);
    expect(JSON.parse(stdout)).toEqual({
      header: [...GL_EXPORT_COLUMNS],
      widths: [GL_EXPORT_COLUMNS.length],
      rows: 7,
      dtypes: { line: "int64", debit: "int64", credit: "int64", qty: "int64" },
      // Exact: summed in int64 (a float would have rounded 3 × 2^59 + 2440).
      debit: String(BIG + 2440n),
      credit: String(BIG + 2440n),
      memo: ["", "", 'card, "visa"\nsecond line', "", "", "", ""],
      refs: ['#7, the "big" one', '#7, the "big" one', "money:S01:1:9", "money:S01:1:9", "money:S01:1:9", "erp:gr:2", "erp:gr:2"],
      sku: ["TIN", "TIN", "", "", "", "TIN", "TIN"],
    });
  });

  it("dates are inclusive and on posted_on: a journal of a closed month posts (and exports) on the next open month's first day", async () => {
    await insertJournal(api.sql, receipt("erp:gr:apr30", "2026-04-30", 10));
    await insertJournal(api.sql, receipt("erp:gr:may1", "2026-05-01", 20));
    await api.sql`select tally_gl_close_period('2026-04', 'test')`;
    const late = await insertJournal(api.sql, receipt("erp:gr:late-apr", "2026-04-15", 30));
    expect(late).toBe("2026-05-01");
    const ids = async (from: string, to: string) => [...new Set(ndLines((await exportAll("ndjson", { from, to })).body).map((r) => r.journalId))];
    expect(await ids("2026-04-30", "2026-04-30")).toEqual(["erp:gr:apr30"]);
    expect(await ids("2026-04-01", "2026-05-01")).toEqual(["erp:gr:apr30", "erp:gr:late-apr", "erp:gr:may1"]);
    const lateLine = ndLines((await exportAll("ndjson", { from: "2026-05-01", to: "2026-05-01" })).body)[0]!;
    expect(lateLine).toMatchObject({ journalId: "erp:gr:late-apr", postedOn: "2026-05-01", businessDate: "2026-04-15", period: "2026-05" });
  });

  it("resumed from its nextCursor, an export holds only the journals committed since", async () => {
    const first = await exportAll("ndjson", { from: "2026-06-01", to: "2026-06-30" });
    await insertJournal(api.sql, receipt("erp:gr:jun-a", "2026-06-10", 5));
    // A journal committed after the first export but dated before the journals it saw is not lost.
    await insertJournal(api.sql, receipt("erp:gr:jun-0", "2026-06-01", 6));
    const second = await exportAll("ndjson", { from: "2026-06-01", to: "2026-06-30", cursor: first.nextCursor });
    expect([...new Set(ndLines(second.body).map((r) => r.journalId))]).toEqual(["erp:gr:jun-0", "erp:gr:jun-a"]);
    const third = await exportAll("ndjson", { from: "2026-06-01", to: "2026-06-30", cursor: second.nextCursor });
    expect(third.summary.count).toBe(0);
    expect(BigInt(third.nextCursor)).toBeGreaterThanOrEqual(BigInt(second.nextCursor));
  });
});

describe("GET /v1/gl/export", () => {
  it("streams the same file as tally gl export, with the resume cursor in a header and the summary in a trailer", async () => {
    await insertJournal(api.sql, receipt("erp:gr:aug-1", "2026-08-03", 40));
    await insertJournal(api.sql, receipt("erp:gr:aug-2", "2026-08-04", BIG));
    const range = { from: "2026-08-01", to: "2026-08-31" };
    await horizonPast(api.sql);
    const res = await api.call({ method: "GET", url: "/v1/gl/export?from=2026-08-01&to=2026-08-31&format=csv", as: "ledger" });
    expect(res.statusCode, res.body).toBe(200);
    expect(res.headers["content-type"]).toMatch(/^text\/csv/);
    const cli = await exportAll("csv", range);
    expect(res.body).toBe(cli.body);
    expect(res.body.split("\r\n")[0]).toBe(GL_EXPORT_COLUMNS.join(","));
    const cursor = String(res.headers["tally-export-cursor"]);
    expect(cursor).toMatch(/^[0-9]+$/);
    expect(JSON.parse(String(res.trailers["tally-export-summary"]))).toMatchObject({ count: 4, debit: String(BIG + 40n), credit: String(BIG + 40n) });
    // Resumed from its cursor: only what was committed since.
    await insertJournal(api.sql, receipt("erp:gr:aug-3", "2026-08-01", 7));
    await horizonPast(api.sql);
    const next = await api.call({ method: "GET", url: `/v1/gl/export?from=2026-08-01&to=2026-08-31&format=ndjson&cursor=${cursor}`, as: "ledger" });
    expect(ndLines(next.body).map((r) => [r.journalId, r.debit])).toEqual([
      ["erp:gr:aug-3", 7],
      ["erp:gr:aug-3", 0],
    ]);
    const bad = await api.call({ method: "GET", url: "/v1/gl/export?from=2026-08-31&to=2026-08-01", as: "ledger" });
    expect(bad.statusCode).toBe(400);
    expect(bad.json()).toMatchObject({ errors: [{ path: "querystring.to" }] });
    expect((await api.call({ method: "GET", url: "/v1/gl/export", as: "storeLedger" })).statusCode).toBe(403);
  });
});

describe("GET /v1/gl/journal", () => {
  const page = async (query: string, as: "ledger" | "storeLedger" | "nobody" = "ledger") =>
    api.call({ method: "GET", url: `/v1/gl/journal?${query}`, ...(as !== "nobody" ? { as } : {}) });

  it("pages resumed one after the other hold every line exactly once while posters commit journals on earlier and later dates", async () => {
    const WRITERS = 6;
    const JOURNALS = 25;
    const writers = Array.from({ length: WRITERS }, async (_, w) => {
      for (let t = 0; t < JOURNALS; t++) {
        // Dates all over July, in random order: a keyset cursor alone would skip the ones behind it.
        const day = String(1 + Math.floor(Math.random() * 31)).padStart(2, "0");
        await api.sql.begin(async (tx) => {
          await insertJournal(tx as unknown as Sql, receipt(`w${w}:${t}`, `2026-07-${day}`, 1 + t));
          await tx`select pg_sleep(${(Math.random() * 20) / 1000})`;
        });
      }
    });
    let done = false;
    const all = Promise.all(writers).finally(() => (done = true));
    const seen: Array<string> = [];
    let cursor: string | undefined;
    let pages = 0;
    const pull = async () => {
      const r = await page(`from=2026-07-01&to=2026-07-31&limit=7${cursor ? `&cursor=${cursor}` : ""}`);
      expect(r.statusCode, r.body).toBe(200);
      const body = r.json() as { lines: Array<{ journalId: string; line: number }>; nextCursor: string | null; resumeCursor: string };
      expect(body.lines.length).toBeLessThanOrEqual(7);
      if (body.nextCursor !== null) expect(body.lines).toHaveLength(7);
      seen.push(...body.lines.map((l) => `${l.journalId}/${l.line}`));
      cursor = body.nextCursor ?? body.resumeCursor;
      pages++;
    };
    while (!done) await pull();
    await all;
    const total = WRITERS * JOURNALS * 2;
    // The last journals are read once the horizon passes them: the oldest transaction still open on
    // the whole server (other test files' included) holds it back, for as long as it stays open.
    for (const deadline = Date.now() + 90_000; seen.length < total && Date.now() < deadline; ) {
      await pull();
      if (seen.length < total) await new Promise((r) => setTimeout(r, 50));
    }
    expect(new Set(seen).size).toBe(seen.length); // none twice
    expect(seen.length).toBe(total); // none missing
    expect(pages).toBeGreaterThan(10);
  }, 180_000);

  it("answers problem+json naming the field for a bad date, range or cursor; 401 without a token, 403 for a channel's token", async () => {
    for (const [query, field] of [
      ["from=2026-02-30", "querystring.from"],
      ["to=yesterday", "querystring.to"],
      ["from=2026-03-02&to=2026-03-01", "querystring.to"],
      ["cursor=not-a-cursor", "querystring.cursor"],
      [`cursor=${Buffer.from('["1","x",null]').toString("base64url")}`, "querystring.cursor"],
      ["limit=0", "querystring.limit"],
    ] as const) {
      const r = await page(query);
      expect(r.statusCode, query).toBe(400);
      expect(r.headers["content-type"]).toContain("application/problem+json");
      expect(r.body, query).toContain(field);
    }
    expect((await page("from=2026-03-01", "nobody")).statusCode).toBe(401);
    expect((await page("from=2026-03-01", "storeLedger")).statusCode).toBe(403);
  });
});

describe("trial balance", () => {
  it("CLI and API: each account's debit, credit and balance over the lines posted on or before the date, equal to a hand computation", async () => {
    // Everything posted up to 2026-03-31 by the tests above: two receipts (1250 and 3 × 2^59) and one POS sale.
    const expected = {
      accounts: [
        { account: "1010", debit: 1190, credit: 0, balance: 1190 },
        { account: "1400", debit: String(BIG + 1250n), credit: 0, balance: String(BIG + 1250n) },
        { account: "2100", debit: 0, credit: String(BIG + 1250n), balance: String(-(BIG + 1250n)) },
        { account: "2300", debit: 0, credit: 190, balance: -190 },
        { account: "4000", debit: 0, credit: 1000, balance: -1000 },
      ],
      debit: String(BIG + 2440n),
      credit: String(BIG + 2440n),
    };
    const r = await api.call({ method: "GET", url: "/v1/gl/trial-balance?at=2026-03-31", as: "ledger" });
    expect(r.statusCode, r.body).toBe(200);
    expect(r.json()).toEqual(expected);
    const cli = await runTally(["gl", "trial-balance", "--at", "2026-03-31", "--format", "json"], tallyEnv(ctx));
    expect(cli.code, cli.output).toBe(0);
    expect(JSON.parse(cli.stdout)).toEqual(expected);
    // The day before: only the first receipt and the sale (2026-03-02).
    const before = (await api.call({ method: "GET", url: "/v1/gl/trial-balance?at=2026-03-02", as: "ledger" })).json() as {
      debit: unknown;
      accounts: Array<{ account: string; balance: unknown }>;
    };
    expect(before.debit).toBe(2440);
    expect(before.accounts.find((a) => a.account === "1400")?.balance).toBe(1250);
    const table = await runTally(["gl", "trial-balance", "--at", "2026-03-02"], tallyEnv(ctx));
    expect(table.code, table.output).toBe(0);
    expect(table.stdout).toContain("trial balance at 2026-03-02 (EUR");
    expect(table.stdout).toMatch(/1400\s+12\.50\s+0\.00\s+12\.50/);
    expect(table.stdout).toMatch(/total\s+24\.40\s+24\.40\s+0\.00/);
    expect((await api.call({ method: "GET", url: "/v1/gl/trial-balance?at=2026-13-01", as: "ledger" })).body).toContain("querystring.at");
  });
});

describe("tally gl export on the command line", () => {
  it("writes the file to --output and the summary to stderr; bad options exit 2 with one line naming the option", async () => {
    const out = path.join(dir, "cli.csv");
    await horizonPast(api.sql);
    const ok = await runTally(["gl", "export", "--from", "2026-03-01", "--to", "2026-03-31", "--output", out], tallyEnv(ctx));
    expect(ok.code, ok.output).toBe(0);
    const file = await readFile(out, "utf8");
    expect(file.split("\r\n")[0]).toBe(GL_EXPORT_COLUMNS.join(","));
    expect(file.split("\r\n").filter((l) => l.startsWith("erp:gr:"))).toHaveLength(4);
    expect(JSON.parse(ok.output.trim().split("\n").at(-1)!)).toMatchObject({ count: 7, from: "2026-03-01", to: "2026-03-31" });
    const nd = await runTally(["gl", "export", "--from", "2026-05-01", "--to", "2026-05-01", "--format", "ndjson"], tallyEnv(ctx));
    expect(nd.code, nd.output).toBe(0);
    expect(ndLines(nd.stdout).map((r) => r.journalId)).toEqual(["erp:gr:late-apr", "erp:gr:late-apr", "erp:gr:may1", "erp:gr:may1"]);
    for (const [args, named] of [
      [["--from", "2026-02-30", "--to", "2026-03-01"], "--from"],
      [["--from", "2026-03-01", "--to", "march"], "--to"],
      [["--from", "2026-03-02", "--to", "2026-03-01"], "--to"],
      [["--from", "2026-03-01"], "--to"],
      [["--from", "2026-03-01", "--to", "2026-03-02", "--format", "xlsx"], "--format"],
      [["--from", "2026-03-01", "--to", "2026-03-02", "--cursor", "abc"], "--cursor"],
    ] as const) {
      const r = await runTally(["gl", "export", ...args], tallyEnv(ctx));
      expect(r.code, r.output).toBe(2);
      expect(r.output).toContain(named);
      expect(r.output.trim().split("\n")).toHaveLength(1);
    }
    const badAt = await runTally(["gl", "trial-balance", "--at", "2026-02-29"], tallyEnv(ctx));
    expect(badAt.code).toBe(2);
    expect(badAt.output).toContain("--at");
  });
});

describe("where finance finds it", () => {
  it("tally dev's banner names the journal export command and route", () => {
    const text = banner(
      {
        settings: loadSettings({}),
        simulator: null,
        postgres: undefined,
        nats: undefined,
        databaseUrl: "postgres://127.0.0.1/tally",
        natsUrl: "nats://127.0.0.1:4222",
        apiUrl: "http://127.0.0.1:8080",
        devToken: "tly_x",
        sourceUrls: {},
      },
      ".tally",
    );
    expect(text).toContain("npx tally gl export --from YYYY-MM-DD --to YYYY-MM-DD");
    expect(text).toContain("http://127.0.0.1:8080/v1/gl/journal?from=");
  });
});

/** Debian's `chromium` (installed by .ci/run), or TALLY_CHROMIUM (as test/dashboard.test.ts). */
function chromiumPath(): string {
  const candidates = [process.env.TALLY_CHROMIUM, "/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"];
  const found = candidates.find((c): c is string => c !== undefined && c !== "" && existsSync(c));
  if (!found) throw new Error("no Chromium: install Debian's chromium package (apt-get install chromium) or set TALLY_CHROMIUM");
  return found;
}

describe("the dashboard's stock value per location", () => {
  it("sums the on-hand value of each location in the company currency, exactly, and the page shows it", async () => {
    // Two SKUs at DC1 (one valued past 2^53 minor units), one at S01, a reserved row (not stock value) and one from before valuation.
    await api.sql`
      insert into balances (sku, location, bucket, qty, updated_at, value, last_unit_cost) values
        ('V-1', 'DC1', 'on_hand', 10, now(), 123456, 12345),
        ('V-2', 'DC1', 'on_hand', 3, now(), ${String(BIG)}::numeric, ${String(2n ** 59n)}::numeric),
        ('V-1', 'S01', 'on_hand', 2, now(), 2469, 1234),
        ('V-1', 'S01', 'reserved', 1, now(), null, null),
        ('V-3', 'S02', 'on_hand', 5, now(), null, null)`;
    const dc1 = `${String(BIG + 123456n).slice(0, -2)}.${String(BIG + 123456n).slice(-2)}`;
    await api.app.listen({ port: 0, host: "127.0.0.1" });
    const url = `http://127.0.0.1:${(api.app.server.address() as AddressInfo).port}`;
    // The feed: the first summary event carries it.
    const controller = new AbortController();
    const res = await fetch(`${url}/v1/dashboard/stream`, { headers: { authorization: "Bearer secret-admin" }, signal: controller.signal });
    const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    while (!/event: summary\ndata: .*\n\n/.test(text)) text += (await reader.read()).value ?? "";
    controller.abort();
    const summary = JSON.parse(/event: summary\ndata: (.*)\n\n/.exec(text)![1]!) as { stockValue: unknown };
    expect(summary.stockValue).toEqual({
      currency: "EUR",
      locations: [
        { location: "DC1", value: dc1 },
        { location: "S01", value: "24.69" },
        { location: "S02", value: "0.00" },
      ],
      total: `${String(BIG + 123456n + 2469n).slice(0, -2)}.${String(BIG + 123456n + 2469n).slice(-2)}`,
    });
    // The page, in headless Chromium: the block, grouped by thousands, never through a float.
    const browser = await chromium.launch({ executablePath: chromiumPath(), args: ["--no-sandbox", "--disable-dev-shm-usage"] });
    try {
      const page = await browser.newPage();
      const errors: Array<string> = [];
      page.on("pageerror", (e) => errors.push(e.message));
      await page.goto(`${url}/#token=secret-admin`);
      const cell = page.locator('#stock-value tr[data-location="S01"] td').nth(1);
      await expect.poll(async () => cell.textContent(), { timeout: 30_000 }).toBe("24.69");
      const grouped = dc1.replace(/^(\d+)/, (w) => w.replace(/\B(?=(\d{3})+$)/g, ","));
      expect(await page.locator('#stock-value tr[data-location="DC1"] td').nth(1).textContent()).toBe(grouped);
      expect(await page.locator("#stock-value-currency").textContent()).toBe("EUR");
      expect(errors).toEqual([]);
    } finally {
      await browser.close();
    }
  }, 60_000);
});
