import { existsSync, readFileSync } from "node:fs";
import { mkdir, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { Either } from "effect";
import { afterEach, describe, expect, it } from "vitest";
import { decodeCommand } from "../src/contract/command.ts";
import { DEMO_STOCK } from "../cdc/demo/seed.ts";
import { describeFailure } from "../src/app/dev.ts";
import { ROOT, runTally } from "./support/tally.ts";
import { demoReceipt, scratchDir, serversMentioning, startDev, stopDev, stopStartedDevs, type DevProcess } from "./support/dev.ts";

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

  it("names the package to install when a server binary is missing", () => {
    const missing = (name: string) => Object.assign(new Error("not found"), { name });
    expect(describeFailure(missing("NatsServerNotFound"))).toBe("nats-server not found — install it (Debian: apt-get install nats-server)");
    expect(describeFailure(missing("PostgresBinaryNotFound"))).toContain("apt-get install postgresql");
    expect(describeFailure(new TypeError("a bug"))).toBeUndefined();
  });
});
