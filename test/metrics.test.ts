/**
 * Every role's /metrics, scraped from real `tally start` processes: a worker-only process and a
 * relay+cdc process on TALLY_METRICS_PORT, an api+worker process (the worker in its child) on the API.
 * Each scrape passes `promtool check metrics`; per-process values add up across processes without
 * counting anything twice; and every metric the shipped alerts and dashboard use is one of them.
 */
import { spawnSync } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodeCommand } from "../src/contract/command.ts";
import { publishCommands } from "../src/wire/publisher.ts";
import { demoSources, type DemoSources } from "./support/cdc.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { freePort } from "./support/ports.ts";
import { ROOT, eventually, harness, spawnTally, tallyEnv, type Harness } from "./support/tally.ts";

const PARTITIONS = 4;
let ctx: TestContext;
let h: Harness;
let demo: DemoSources;
let dir: string;
const children: Array<ReturnType<typeof spawnTally>> = [];
/** The last scrape of each process, by name. */
const scraped = new Map<string, string>();

beforeAll(async () => {
  ctx = await testContext();
  h = await harness(ctx, { partitions: PARTITIONS });
  demo = await demoSources(ctx);
  dir = await mkdtemp(path.join(tmpdir(), "tally-metrics-"));
  // The demo config, with a webhook on the web channel (to nothing: its attempts fail, which is fine here).
  await writeFile(
    path.join(dir, "tally.config.ts"),
    `import base from ${JSON.stringify(path.join(ROOT, "tally.config.ts"))};
export default { ...base, channels: { ...base.channels, web: { ...base.channels.web, webhook: { url: "http://127.0.0.1:9/hook", maxAttempts: 1 } } } };\n`,
  );
}, 120_000);

afterAll(async () => {
  await Promise.all(
    children.map(
      (c) =>
        new Promise<void>((resolve) => {
          if (c.exitCode !== null || c.signalCode !== null) return resolve();
          c.once("exit", () => resolve());
          c.kill("SIGTERM");
        }),
    ),
  );
  await demo?.close();
  await h?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** `tally start --roles <roles>` as a child process of this test. */
function start(roles: string, env: Record<string, string>) {
  const child = spawnTally(["start", "--roles", roles], {
    ...tallyEnv(ctx, { partitions: PARTITIONS }),
    ...demo.env,
    TALLY_CONFIG: path.join(dir, "tally.config.ts"),
    TALLY_WEBHOOK_WEB_SECRET: "metrics-test-secret-0123456789abcdef",
    ...env,
  });
  children.push(child);
  return child;
}

/** GET url until it answers 200; its body. */
async function scrape(name: string, url: string, child: ReturnType<typeof spawnTally>): Promise<string> {
  let body = "";
  await eventually(`${name}: ${url}`, async () => {
    if (child.exitCode !== null) throw new Error(`${name} exited ${child.exitCode}:\n${child.output()}`);
    const r = await fetch(url).catch(() => null);
    if (r?.status !== 200) return false;
    body = await r.text();
    return true;
  });
  scraped.set(name, body);
  return body;
}

function promtoolCheck(text: string): { status: number | null; output: string } {
  const r = spawnSync("promtool", ["check", "metrics"], { input: text, encoding: "utf8" });
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

/** The sum of a metric's samples whose labels include `match` (e.g. `source="x"`), or null when it has none. */
function sampleSum(text: string, name: string, match = ""): number | null {
  let sum: number | null = null;
  for (const line of text.split("\n")) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name || !(m[2] ?? "").includes(match)) continue;
    sum = (sum ?? 0) + Number(m[3]);
  }
  return sum;
}

/** Metric names a scrape exposes (histograms with their _bucket, _sum and _count series). */
function metricNames(text: string): Set<string> {
  const names = new Set<string>();
  for (const m of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    names.add(m[1]!);
    if (m[2] === "histogram" || m[2] === "summary") for (const s of ["_bucket", "_sum", "_count"]) names.add(`${m[1]}${s}`);
  }
  return names;
}

describe("/metrics of every role, from real processes", () => {
  let workerPort = 0;
  let apiPort = 0;
  let cdcPort = 0;
  const urls = () => [
    ["worker", `http://127.0.0.1:${workerPort}/metrics`],
    ["relay+cdc", `http://127.0.0.1:${cdcPort}/metrics`],
    ["api+worker", `http://127.0.0.1:${apiPort}/metrics`],
  ];

  it("a worker-only process serves /metrics on TALLY_METRICS_PORT: its worker's metrics and the standard process metrics, promtool-clean", async () => {
    workerPort = await freePort();
    const child = start("worker", { TALLY_METRICS_PORT: String(workerPort) });
    await eventually("the worker to hold every partition", async () => {
      const text = await scrape("worker", `http://127.0.0.1:${workerPort}/metrics`, child);
      return sampleSum(text, "tally_worker_partitions_held") === PARTITIONS;
    });
    const text = scraped.get("worker")!;
    for (const name of [
      "process_cpu_seconds_total",
      "process_resident_memory_bytes",
      "nodejs_eventloop_lag_seconds",
      "tally_worker_batches_total",
      "tally_gl_lag_seconds",
      "tally_gl_journals_posted_total",
      "tally_retention_last_run_timestamp_seconds",
      "tally_retention_failed_rounds_total",
    ])
      expect(text).toMatch(new RegExp(`^${name} \\d`, "m"));
    expect(text).toMatch(/^tally_retention_rows_pruned_total\{table="command_outcomes"\} \d/m);
    expect(text).not.toContain("tally_process_");
    expect(text).toMatch(/^# TYPE tally_worker_retries_total counter$/m);
    expect(sampleSum(text, "tally_worker_partitions")).toBe(PARTITIONS);
    const check = promtoolCheck(text);
    expect(check.output).toBe("");
    expect(check.status).toBe(0);
  });

  it("a second process on the same TALLY_METRICS_PORT exits with an error naming the setting", async () => {
    const child = start("worker", { TALLY_METRICS_PORT: String(workerPort) });
    const code = await new Promise<number | null>((resolve) => child.once("exit", (c) => resolve(c)));
    expect(code).not.toBe(0);
    expect(child.output()).toMatch(/TALLY_METRICS_HOST\/TALLY_METRICS_PORT: cannot serve \/metrics on 127\.0\.0\.1:\d+ \(EADDRINUSE\)/);
  });

  it("a relay+cdc process serves its relay, webhook and CDC metrics on TALLY_METRICS_PORT, promtool-clean", async () => {
    cdcPort = await freePort();
    const child = start("relay,cdc", { TALLY_METRICS_PORT: String(cdcPort) });
    await eventually(
      "both sources streaming, the relay leading",
      async () => {
        const text = await scrape("relay+cdc", `http://127.0.0.1:${cdcPort}/metrics`, child);
        return (
          sampleSum(text, "tally_cdc_streaming") === 2 &&
          sampleSum(text, "tally_relay_leader") === 1 &&
          sampleSum(text, "tally_cdc_slot_lag_bytes", 'source="erp"') !== null
        );
      },
      90_000,
    );
    const text = scraped.get("relay+cdc")!;
    expect(text).toMatch(/^tally_cdc_slot_lag_bytes\{source="erp"\} \d+$/m);
    expect(text).toMatch(/^# TYPE tally_cdc_changes_total counter$/m);
    expect(text).toMatch(/^tally_webhook_dead_lettered_total\{channel="web"\} \d+$/m);
    expect(text).toMatch(/^tally_dlq_messages \d+$/m);
    expect(text).toMatch(/^tally_negative_stock_locations \d+$/m);
    const check = promtoolCheck(text);
    expect(check.output).toBe("");
    expect(check.status).toBe(0);
  }, 120_000);

  it("an api+worker process serves its own and its worker child's metrics on the API's /metrics (the child's labelled process=\"worker\"), promtool-clean", async () => {
    apiPort = await freePort();
    const child = start("api,worker", { TALLY_HTTP_PORT: String(apiPort), TALLY_HTTP_HOST: "127.0.0.1" });
    await eventually("the child's metrics on the API", async () => {
      const text = await scrape("api+worker", `http://127.0.0.1:${apiPort}/metrics`, child);
      return sampleSum(text, "tally_worker_partitions_held", 'process="worker"') !== null;
    });
    const text = scraped.get("api+worker")!;
    expect(text).toMatch(/^process_cpu_seconds_total \d/m);
    expect(text).toMatch(/^process_cpu_seconds_total\{process="worker"\} \d/m);
    expect(text).toMatch(/^# TYPE tally_http_request_duration_seconds histogram$/m);
    const check = promtoolCheck(text);
    expect(check.output).toBe("");
    expect(check.status).toBe(0);
  });

  it("per-process values add up across processes: partitions held and commands applied are counted once", async () => {
    const all = async () =>
      Promise.all(
        urls().map(([name, url]) =>
          fetch(url!)
            .then((r) => r.text())
            .then((t) => [name!, t] as const),
        ),
      );
    const total = async (name: string, match = "") => (await all()).reduce((n, [, t]) => n + (sampleSum(t, name, match) ?? 0), 0);
    await eventually("the partitions shared by the two workers", async () => {
      const held = (await all()).map(([, t]) => sampleSum(t, "tally_worker_partitions_held") ?? 0);
      return held[0]! > 0 && held[2]! > 0 && held[0]! + held[2]! === PARTITIONS;
    });
    const commands = Array.from({ length: 40 }, (_, i) => {
      const d = decodeCommand({
        id: `metrics:${i}`,
        type: "receive",
        sku: `METRICS-${i}`,
        location: "DC1",
        qty: 1,
        source: { system: "metrics-test", ref: `r${i}` },
        occurredAt: new Date().toISOString(),
      });
      if (d._tag === "Left") throw d.left;
      return d.right;
    });
    await publishCommands(h.nats.js, h.topology, commands);
    await eventually(
      "40 commands applied, summed over the processes",
      async () => (await total("tally_commands_applied_total", 'source="metrics-test"')) >= 40,
    );
    expect(await total("tally_commands_applied_total", 'source="metrics-test"')).toBe(40);
    expect(await total("tally_relay_leader")).toBe(1);
  });

  it("negative stock is exported once, by the relay leader: a sale of a SKU never received makes one location negative", async () => {
    const sell = decodeCommand({
      id: "metrics:negative",
      type: "sell",
      sku: "METRICS-NEGATIVE",
      location: "S01",
      qty: 1,
      source: { system: "metrics-test", ref: "negative" },
      occurredAt: new Date().toISOString(),
    });
    if (sell._tag === "Left") throw sell.left;
    const negative = async (url: string) => sampleSum(await (await fetch(url)).text(), "tally_negative_stock_locations") ?? 0;
    const relayUrl = `http://127.0.0.1:${cdcPort}/metrics`;
    const apiUrl = `http://127.0.0.1:${apiPort}/metrics`;
    const before = await negative(relayUrl);
    await publishCommands(h.nats.js, h.topology, [sell.right]);
    await eventually("the relay leader to count the negative location", async () => (await negative(relayUrl)) === before + 1);
    // The api+worker process runs no relay: it exports no cluster-wide gauge at all.
    expect(await (await fetch(apiUrl)).text()).not.toContain("tally_negative_stock_locations");
  });

  it("every metric the shipped alerts and dashboard use is one Tally exports", async () => {
    const exported = new Set([...scraped.values()].flatMap((t) => [...metricNames(t)]));
    const used = (text: string) => new Set([...text.matchAll(/\b((?:tally|process|nodejs)_[a-z0-9_]+)\b/g)].map((m) => m[1]!));
    const alerts = await readFile(path.join(ROOT, "deploy/prometheus/alerts.yml"), "utf8");
    const exprs = (
      JSON.parse(await readFile(path.join(ROOT, "deploy/grafana/tally.json"), "utf8")) as { panels: Array<{ targets?: Array<{ expr: string }> }> }
    ).panels
      .flatMap((p) => p.targets ?? [])
      .map((t) => t.expr);
    expect(exprs.length).toBeGreaterThan(10);
    const alertExprs = [...alerts.matchAll(/^\s+expr: (.+)$/gm)].map((m) => m[1]!).join("\n");
    expect(alertExprs.length).toBeGreaterThan(0);
    for (const name of [...used(alertExprs), ...used(exprs.join("\n"))]) expect(exported, `${name} is exported`).toContain(name);
  });
});
