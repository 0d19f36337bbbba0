import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { mkdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { Writable } from "node:stream";
import postgres from "postgres";
import { Either } from "effect";
import { afterEach, describe, expect, it } from "vitest";
import { decodeCommand } from "../src/contract/command.ts";
import { DEMO_STOCK } from "../cdc/demo/seed.ts";
import { describeFailure } from "../src/app/dev.ts";
import { DevTerminal, envFileText, openDevLogs } from "../src/app/devStack/index.ts";
import { BIN, eventually, ROOT, runTally } from "./support/tally.ts";
import { demoReceipt, scratchDir, serversMentioning, startDev, startDevWith, stopDev, stopStartedDevs, type DevProcess } from "./support/dev.ts";

const EXAMPLES = path.join(ROOT, "examples/commands.ndjson");

function tallyEnvFor(dev: DevProcess): Record<string, string> {
  return { TALLY_ENV: "dev", TALLY_DATABASE_URL: dev.databaseUrl, TALLY_NATS_URL: dev.natsUrl, TALLY_LOG_LEVEL: "warn" };
}

async function ledgerEntries(dev: DevProcess): Promise<number> {
  const verify = await runTally(["ledger", "verify"], tallyEnvFor(dev));
  expect(verify.code, verify.output).toBe(0);
  const entries = /ledger verify: ok — (\d+) entries/.exec(verify.stdout)?.[1];
  expect(entries, verify.output).toBeDefined();
  return Number(entries);
}

afterEach(stopStartedDevs);

describe("examples/commands.ndjson", () => {
  it("holds valid canonical commands for the demo locations", () => {
    const lines = readFileSync(EXAMPLES, "utf8")
      .split("\n")
      .filter((l) => l.trim() !== "");
    expect(lines.length).toBeGreaterThanOrEqual(12);
    const types = new Set<string>();
    for (const [i, line] of lines.entries()) {
      const decoded = decodeCommand(JSON.parse(line));
      if (Either.isLeft(decoded)) throw new Error(`line ${i + 1}: ${decoded.left.message}`);
      types.add(decoded.right.type);
      expect(["DC1", "S01", "S02"]).toContain(decoded.right.location);
    }
    for (const type of ["receive", "sell", "reserve", "fulfill", "transfer_out", "transfer_in", "set_policy", "count", "return"])
      expect(types).toContain(type);
  });
});

describe("tally dev", () => {
  it("runs the demo, stops on SIGINT leaving no server behind, and keeps the data for the next run", async () => {
    const root = await scratchDir();
    const dir = path.join(root, ".tally");
    try {
      const first = await startDev(dir, "--no-demo");
      expect(first.databaseUrl).toMatch(/^postgres:\/\/postgres@127\.0\.0\.1:\d+\/tally$/);
      expect(first.natsUrl).toMatch(/^nats:\/\/127\.0\.0\.1:\d+$/);
      expect(first.stdout()).toContain("npx tally submit examples/commands.ndjson --wait");

      const submitted = await runTally(["submit", EXAMPLES, "--wait", "--timeout", "30"], tallyEnvFor(first));
      expect(submitted.code, submitted.output).toBe(0);
      expect(submitted.stdout).toContain("accepted 15  rejected 1  published 16  duplicate 0  invalid 0");
      expect(submitted.stdout).toContain("rejected insufficient_stock: 1");
      const entries = await ledgerEntries(first);
      expect(entries).toBeGreaterThan(0);

      expect(await stopDev(first)).toBe(0);
      expect(first.stdout()).toMatch(/tally dev: stopped\n$/);
      expect(serversMentioning(root)).toEqual([]);
      expect(existsSync(path.join(dir, "postgres", "PG_VERSION"))).toBe(true);

      const second = await startDev(dir, "--no-demo");
      expect(await ledgerEntries(second)).toBe(entries);
      expect(await stopDev(second)).toBe(0);
      expect(serversMentioning(root)).toEqual([]);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });

  it("--fresh wipes the data folder first; the demo ERP's opening stock and a new receipt arrive through CDC", async () => {
    const root = await scratchDir();
    const dir = path.join(root, ".tally");
    try {
      // Not a cluster: without --fresh, initdb would refuse this non-empty folder.
      await mkdir(path.join(dir, "postgres"), { recursive: true });
      await writeFile(path.join(dir, "postgres", "left-over"), "x");
      await writeFile(path.join(dir, "marker"), "from an earlier run");

      const dev = await startDev(dir, "--fresh", "--no-demo");
      // The API runs too, on 127.0.0.1, with the admin token kept in the data folder.
      expect(dev.apiUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
      expect(readFileSync(path.join(dir, "dev-token"), "utf8").trim()).toBe(dev.token);
      const api = (url: string) => fetch(`${dev.apiUrl}${url}`, { headers: { authorization: `Bearer ${dev.token}` } });
      let ready: Response | undefined;
      for (let i = 0; i < 40; i++) {
        ready = await api("/readyz");
        if (ready.status === 200) break;
        await new Promise((r) => setTimeout(r, 500));
      }
      expect(ready!.status).toBe(200);
      expect(await ready!.json()).toMatchObject({ ready: true, checks: { postgres: { ok: true }, nats: { ok: true }, leases: { ok: true } } });
      expect((await fetch(`${dev.apiUrl}/v1/availability/SKU-0001?channel=web`)).status).toBe(401);
      expect(existsSync(path.join(dir, "marker"))).toBe(false);
      expect(existsSync(path.join(dir, "postgres", "left-over"))).toBe(false);
      // Only the demo ERP's opening balances (its CDC snapshot): nothing from an earlier run.
      const opening = DEMO_STOCK.filter((s) => s.baseQty !== 0).length;
      let entries = await ledgerEntries(dev);
      for (let i = 0; i < 40 && entries < opening; i++) {
        await new Promise((r) => setTimeout(r, 500));
        entries = await ledgerEntries(dev);
      }
      expect(entries).toBe(opening);

      // A change made in the demo ERP reaches the ledger through CDC.
      await demoReceipt(dev, "100001", 2, "CASE");
      for (let i = 0; i < 40 && entries === opening; i++) {
        await new Promise((r) => setTimeout(r, 500));
        entries = await ledgerEntries(dev);
      }
      expect(entries).toBe(opening + 1);
      // …and its availability is served by the API: 2 CASE of 12 more on hand at DC1.
      const openingDc1 = DEMO_STOCK.find((st) => st.sku === "SKU-0001" && st.location === "DC1")!.baseQty;
      const stock = (await (await api("/v1/stock/SKU-0001")).json()) as { locations: Array<{ location: string; onHand: number }> };
      expect(stock.locations.find((l) => l.location === "DC1")?.onHand).toBe(openingDc1 + 24);
      expect(await stopDev(dev)).toBe(0);
      expect(serversMentioning(root)).toEqual([]);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });

  it("keeps the terminal short: logs go to <dir>/logs, the banner and <dir>/env reach the stack (sources included) from another process, a line says when the demo is ready", async () => {
    const root = await scratchDir();
    const dir = path.join(root, ".tally");
    try {
      // At info, as a developer runs it: before, every log line (one per POS transaction) went to the terminal.
      const dev = await startDevWith(dir, { TALLY_LOG_LEVEL: "info" }, "--fresh", "--skus", "200", "--rate", "40");
      const banner = dev.stdout();
      for (const name of ["TALLY_ENV=dev", "TALLY_DATABASE_URL=postgres://", "TALLY_NATS_URL=nats://", "TALLY_SOURCE_ERP_URL=postgres://"])
        expect(banner).toContain(name);
      expect(banner).toContain("TALLY_SOURCE_SHOP_URL=postgres://");
      expect(banner).toContain(`TALLY_DEV_TOKEN=${dev.token}`);
      expect(banner).toContain(`source ${dir}/env`);
      expect(banner).toContain(`${dir}/logs/<role>.log`);
      await eventually("the demo-ready line", async () => dev.stdout().includes("tally dev: demo ready — 200 SKUs applied"), 120_000);
      expect(dev.stdout()).toMatch(/demo ready — 200 SKUs applied, CDC streaming from erp, shop, traffic running \(\d+\.\d s after start\)/);

      // The simulated catalog is in the ledger: its opening stock at the DC and all 10 stores.
      const ledger = postgres(dev.databaseUrl, { max: 1, onnotice: () => {} });
      try {
        const [{ n }] = await ledger<[{ n: number }]>`select count(*)::int as n from balances where bucket = 'on_hand' and sku like 'SKU-S%'`;
        expect(n).toBe(200 * 11);
        // Demo traffic runs for a while (POS over HTTP, orders through CDC)…
        await eventually(
          "200 POS transactions",
          async () => (await ledger<[{ n: number }]>`select count(*)::int as n from pos_transactions`)[0].n >= 200,
          90_000,
        );
        // …priced: their money journals (revenue, tax, tenders) are in the GL, card and cash both.
        const money = await ledger<Array<{ account: string }>>`
          select distinct l.account from gl_lines l join gl_journals j using (journal_id) where j.kind = 'pos_money' order by 1`;
        expect(money.map((r) => r.account)).toEqual(expect.arrayContaining(["1010", "2300", "4000"]));
      } finally {
        await ledger.end();
      }
      // …and the terminal stays short: the banner (20 lines), the ready line and a status line at most every 30 s.
      expect(dev.output().trimEnd().split("\n").length, dev.output()).toBeLessThan(30);
      expect(dev.output()).not.toContain('"level"');
      // The logs are in the files, one per role, JSON lines (the POS transactions are debug: not at info).
      const files = readdirSync(path.join(dir, "logs")).sort();
      for (const f of ["api.log", "cdc.log", "nats.log", "postgres.log", "relay.log", "worker.log"]) expect(files).toContain(f);
      for (const role of ["api", "cdc", "relay", "worker"]) {
        const lines = readFileSync(path.join(dir, "logs", `${role}.log`), "utf8")
          .trim()
          .split("\n");
        for (const line of lines) expect(JSON.parse(line)).toMatchObject({ role });
      }
      expect(readFileSync(path.join(dir, "logs", "cdc.log"), "utf8")).toContain("replication streaming");
      expect(readFileSync(path.join(dir, "logs", "api.log"), "utf8")).not.toContain("POS transaction accepted");

      // Another process with only <dir>/env sourced (no TALLY_* of its own) finds the stack and both demo sources.
      const env: NodeJS.ProcessEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("TALLY_")));
      const second = spawn("sh", ["-c", `. "$1" && exec "$2" "$3" source status`, "sh", path.join(dir, "env"), process.execPath, BIN], {
        cwd: ROOT,
        env,
      });
      let out = "";
      second.stdout.on("data", (d: Buffer) => (out += d.toString()));
      second.stderr.on("data", (d: Buffer) => (out += d.toString()));
      const code = await new Promise<number | null>((resolve) => second.once("exit", resolve));
      expect(code, out).toBe(0);
      expect(out).toMatch(/^erp\s+tally_dev_erp\s+active/m);
      expect(out).toMatch(/^shop\s+tally_dev_shop\s+active/m);

      expect(await stopDev(dev)).toBe(0);
      // A stopped stack leaves no environment pointing at servers that are gone.
      expect(existsSync(path.join(dir, "env"))).toBe(false);
      expect(serversMentioning(root)).toEqual([]);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });

  it("writes every log line to its role's file and only warnings and errors to the terminal, one line each", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "tally-dev-logs-"));
    let stdout = "";
    let stderr = "";
    const sink = (add: (s: string) => void) =>
      new Writable({
        write: (chunk, _enc, done) => {
          add(chunk.toString());
          done();
        },
      });
    try {
      const terminal = new DevTerminal(
        sink((s) => (stdout += s)),
        sink((s) => (stderr += s)),
      );
      const logs = openDevLogs(dir, "info", terminal);
      logs.log.child({ role: "worker" }).info({ partition: 3 }, "partition acquired");
      logs.log.child({ role: "api" }).debug("request");
      logs.log.child({ role: "cdc", source: "erp" }).warn({ err: new Error("connection refused\n    at stack") }, "replication session ended");
      logs.log.error("no role");
      await logs.close();
      expect(JSON.parse(readFileSync(path.join(dir, "worker.log"), "utf8"))).toMatchObject({
        role: "worker",
        partition: 3,
        msg: "partition acquired",
      });
      expect(existsSync(path.join(dir, "api.log"))).toBe(false);
      expect(JSON.parse(readFileSync(path.join(dir, "cdc.log"), "utf8"))).toMatchObject({ level: 40, source: "erp" });
      expect(JSON.parse(readFileSync(path.join(dir, "tally.log"), "utf8"))).toMatchObject({ level: 50, msg: "no role" });
      const lines = stderr.trimEnd().split("\n");
      expect(lines).toHaveLength(2);
      expect(lines[0]).toMatch(/^\d\d:\d\d:\d\d WARN cdc: replication session ended — connection refused {2}source=erp$/);
      expect(lines[1]).toMatch(/^\d\d:\d\d:\d\d ERROR no role$/);
      expect(stdout).toBe("");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("quotes the environment file for a POSIX shell", () => {
    expect(envFileText({ A: "postgres://u@h:1/db", B: "it's $HOME" })).toContain("export A=postgres://u@h:1/db\nexport B='it'\\''s $HOME'\n");
  });

  it("names the package to install when a server binary is missing", () => {
    const missing = (name: string) => Object.assign(new Error("not found"), { name });
    expect(describeFailure(missing("NatsServerNotFound"))).toBe("nats-server not found — install it (Debian: apt-get install nats-server)");
    expect(describeFailure(missing("PostgresBinaryNotFound"))).toContain("apt-get install postgresql");
    expect(describeFailure(new TypeError("a bug"))).toBeUndefined();
  });
});
