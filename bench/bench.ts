/**
 * `npm run bench -- --scenario steady --duration 30`: drives the real pipeline — the demo ERP and
 * shop databases captured by CDC, POS transactions and reservations over HTTP, NATS, the workers,
 * the ledger and the relay, all in this process on this machine — and measures, in the same run,
 * the machine's physical limits so Tally's figures read as ratios. The load itself is offered by a
 * generator in a process of its own (bench/loadGenerator.ts), so its CPU is counted apart from
 * Tally's, and a run where the generator could not offer the asked rate is flagged as such.
 *
 * Reports sustained commands/s end to end, source time → availability published p50/p95/p99 per
 * source, reservation round trip p50/p99, CDC lag, CPU and RSS per process (and CPU per command per
 * process), whether the generator kept its rate, and correctness at the
 * end (every source event's commands applied exactly once, `ledger verify`); writes
 * `bench/results/<timestamp>.json` and `.html` (charts, no network needed to view).
 *
 * Scenarios: `steady` (a retailer's mix at --rate events/s), `flash-sale` (web orders on a few hot
 * SKUs with little stock, plus a polling-sync baseline: oversold units per 10,000 orders for a
 * channel that refreshes every 60 s / 900 s), `catalog-1m` (receipts spread over a million SKUs,
 * RSS sampled: memory must stay flat).
 */
import { readFileSync } from "node:fs";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdir, writeFile } from "node:fs/promises";
import { cpus, tmpdir } from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import postgres from "postgres";
import { erpSource, shopSource } from "../cdc/demo/index.ts";
import { applyDemoSchemas, seedDemo } from "../cdc/demo/index.ts";
import { startCatalogProbe, type CatalogLatency } from "./catalogLatency.ts";
import { onboardCatalog, simItem, storeIds } from "../cdc/demo/index.ts";
import { enableSource } from "../cdc/index.ts";
import { findSource } from "../cdc/index.ts";
import { migrate, verifyLedger } from "../ledger/index.ts";
import { startTally } from "../src/app/index.ts";
import { loadSettings } from "../src/platform/index.ts";
import { decodeTallyConfig, type Settings, type TallyConfig } from "../src/platform/index.ts";
import { connectPostgres, type Sql } from "../src/platform/index.ts";
import { freePort, startNats, startPostgres } from "../src/app/devStack/index.ts";
import { newToken } from "../src/http/index.ts";
import { outcomesSubject, type OutcomeBatch } from "../src/wire/index.ts";
import { createLogger } from "../src/platform/index.ts";
import { connectNats, ensureTopology, type NatsHandles } from "../src/wire/index.ts";
import { relaySubject, type RelayRound } from "../src/channels/index.ts";
import { topology, type Topology } from "../src/wire/index.ts";
import { measureDecoding, measureInsert, measureNats, type Limits } from "./limits.ts";
import { renderReport } from "./report.ts";
import { startProfile, type ProfileSummary } from "./profile.ts";
import { pollingBaseline, type OrderEvent, type StockEvent } from "./polling.ts";
import { forkGenerator, type GeneratorProcess, type GeneratorResult } from "./loadGenerator.ts";

type Scenario = "steady" | "flash-sale" | "catalog-1m";
/** A bad option: one line, no stack, exit 1 (run directly or by `tally bench`). */
const usage = (message: string) => Object.assign(new Error(message), { name: "UsageError" });
process.on("uncaughtException", (e: Error & { code?: unknown }) => {
  const badOption = e.name === "UsageError" || (typeof e.code === "string" && e.code.startsWith("ERR_PARSE_ARGS_"));
  process.stderr.write(`bench: ${badOption ? e.message : (e.stack ?? String(e))}\n`);
  process.exit(1);
});
const { values } = parseArgs({
  options: {
    scenario: { type: "string", default: "steady" },
    rate: { type: "string" },
    duration: { type: "string", default: "30" },
    skus: { type: "string" },
    stores: { type: "string", default: "10" },
    "reservation-rate": { type: "string", default: "50" },
    partitions: { type: "string", default: "8" },
    "max-actors": { type: "string" },
    "worker-processes": { type: "string", default: "0" },
    connections: { type: "string", default: "64" },
    "no-profile": { type: "boolean", default: false },
    "pg-statements": { type: "boolean", default: false },
    out: { type: "string", default: "bench/results" },
  },
});
const scenario = values.scenario as Scenario;
if (!["steady", "flash-sale", "catalog-1m"].includes(scenario)) throw usage(`--scenario: expected steady, flash-sale or catalog-1m, got ${scenario}`);
const num = (name: string, v: string | undefined, fallback: number) => {
  const n = v === undefined ? fallback : Number(v);
  if (!Number.isFinite(n) || n <= 0) throw usage(`--${name}: expected a positive number, got ${v}`);
  return n;
};
const DURATION_S = num("duration", values.duration, 30);
const RATE = num("rate", values.rate, scenario === "steady" ? 500 : scenario === "flash-sale" ? 300 : 5000);
const SKUS = Math.floor(num("skus", values.skus, scenario === "catalog-1m" ? 1_000_000 : 2000));
const STORES = Math.floor(num("stores", values.stores, 10));
const RES_RATE = num("reservation-rate", values["reservation-rate"], 50);
const PARTITIONS = Math.floor(num("partitions", values.partitions, 8));
const HOT = 20;
/** Live actors kept per worker (the LRU cap): catalog-1m uses 20,000 so the plateau shows within a short run. */
/** 0: the worker runs in this process with the other roles; n: in n `tally start --roles worker` processes. */
const WORKER_PROCESSES = Math.floor(Number(values["worker-processes"]));
if (!Number.isInteger(WORKER_PROCESSES) || WORKER_PROCESSES < 0)
  throw usage(`--worker-processes: expected 0 or more, got ${values["worker-processes"]}`);
/** Keep-alive connections the load's HTTP clients (checkouts, POS) share, as a shop's backend would. */
const CONNECTIONS = Math.floor(num("connections", values.connections, 64));
const MAX_ACTORS = Math.floor(num("max-actors", values["max-actors"], scenario === "catalog-1m" ? 20_000 : 100_000));

const oneLine = (text: string, max: number) => {
  const line = text.replace(/\s+/g, " ").trim();
  return line.length > max ? `${line.slice(0, max)}…` : line;
};
type PgStatement = {
  query: string;
  topLevel: boolean;
  calls: number;
  totalMs: number;
  planMs: number;
  plans: number;
  share: number;
  meanMs: number;
  rowsPerCall: number;
};

const percentile = (sorted: ReadonlyArray<number>, q: number): number | null =>
  sorted.length === 0 ? null : sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
const sortNum = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b);
const round = (n: number | null, d = 1) => (n === null ? null : Math.round(n * 10 ** d) / 10 ** d);

/** A process's proportional set size in bytes (its share of pages it shares with others), from /proc. */
function procPss(pid: number): number | null {
  try {
    const m = /^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, "utf8"));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

/** CPU seconds and RSS of a process, from /proc. */
function procStat(pid: number): { cpu: number; rss: number } | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const ticks = Number(f[11]) + Number(f[12]);
    const rssPages = Number(f[21]);
    return { cpu: ticks / 100, rss: rssPages * 4096 };
  } catch {
    return null;
  }
}

/**
 * The scheduler's account of a process's main thread (/proc/<pid>/task/<pid>/schedstat): nanoseconds on a CPU,
 * nanoseconds runnable but waiting for one (the run queue), and timeslices.
 */
function schedStat(pid: number): { runNs: number; waitNs: number; slices: number } | null {
  try {
    const [run, wait, slices] = readFileSync(`/proc/${pid}/task/${pid}/schedstat`, "utf8").trim().split(" ").map(Number);
    return { runNs: run!, waitNs: wait!, slices: slices! };
  } catch {
    return null;
  }
}

function childrenOf(pid: number): Array<number> {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/** One line on a terminal (rewritten), else a line every 5 s. */
function progress(text: string, done: number, total: number): void {
  const width = 24;
  const filled = Math.round((Math.min(done, total) / total) * width);
  const bar = `[${"#".repeat(filled)}${"-".repeat(width - filled)}]`;
  if (process.stderr.isTTY) process.stderr.write(`\r${bar} ${text}`.padEnd(100));
  else if (Math.floor(done) % 5 === 0) process.stderr.write(`${bar} ${text}\n`);
}

type PgServer = Awaited<ReturnType<typeof startPostgres>>;
type NatsConnection = Awaited<ReturnType<typeof connectNats>>;
type Subscription = ReturnType<NatsConnection["subscribe"]>;
type Tally = Awaited<ReturnType<typeof startTally>>;

/** One run's shared state: the servers, the connections to them, the demo retailer's configuration and the report being filled in. */
interface BenchRun {
  readonly env: string;
  readonly log: ReturnType<typeof createLogger>;
  readonly pg: PgServer;
  /** The demo sources' own server. */
  readonly srcPg: PgServer;
  readonly natsServer: Awaited<ReturnType<typeof startNats>>;
  readonly urls: { TALLY_SOURCE_ERP_URL: string; TALLY_SOURCE_SHOP_URL: string };
  readonly sql: Sql;
  readonly erp: Sql;
  readonly shop: Sql;
  readonly nc: NatsConnection;
  readonly t: Topology;
  readonly stores: ReturnType<typeof storeIds>;
  readonly config: TallyConfig;
  readonly report: Record<string, unknown>;
  /** What the end of the run closes, whatever happened: worker processes, Tally, the load generator. */
  readonly workers: Array<ChildProcess>;
  tally: Tally | null;
  generator: GeneratorProcess | null;
}

/** Tally as the load sees it: its API (and a token for it), its settings, and the JetStream handles. */
interface Pipeline {
  readonly nats: NatsHandles;
  readonly settings: Settings;
  readonly tally: Tally;
  readonly api: string;
  readonly token: string;
}

/** Live measurements, from what Tally publishes: outcomes per second, the worker's batches, end-to-end latency per source. */
interface Live {
  readonly appliedPerSecond: Map<number, number>;
  readonly batches: { count: number; commands: number; applyMs: number };
  readonly latencies: Map<string, Array<number>>;
  /** Of the same changes, in the same order: source → the start of the ledger transaction that wrote them. */
  readonly toApply: Map<string, Array<number>>;
  /** The relay's rounds: where each one's time went. */
  readonly rounds: Array<NonNullable<RelayRound["roundMs"]>>;
  applied: number;
  /** Batches and latencies count from the start of the load to the end of the drain. */
  measuring: boolean;
  readonly subs: Array<Subscription>;
}

/** The load's state: the generator process, and (once it is done) what it offered and measured; the processes' CPU at the start. */
interface Load {
  readonly gen: GeneratorProcess;
  /** Filled in from the generator's result when the load ends. */
  failures: number;
  /** POS posts the generator sent again after a 5xx (the report's correctness counts them). */
  posResends: number;
  /** The first few failures' messages, in the report: a failed offer is no command, and says why. */
  readonly failureMessages: Array<string>;
  readonly expected: { erp: number; pos: number; shop: number; api: number; bench: number };
  readonly offeredPerSecond: Map<number, number>;
  readonly reservationRtt: Array<number>;
  readonly reservationOutcomes: Record<string, number>;
  readonly orders: Array<OrderEvent>;
  result: GeneratorResult | null;
  readonly rss: Array<{ t: number; node: number; pg: number; nats: number }>;
  pgPss: number;
  lastSample: number;
  readonly natsProcess: number | undefined;
  readonly pidStart: ProcessStats;
  readonly stopProfile: (() => Promise<ProfileSummary>) | null;
  readonly started: number;
  readonly schedStart: ReturnType<typeof schedStat>;
}

/** The end of the load: its window, what it offered in it, and the CPU profile. */
interface LoadEnd {
  readonly loopEnded: number;
  readonly loadWindowS: number;
  readonly offeredInWindow: number;
  readonly loadEnded: number;
  readonly profile: ProfileSummary | null;
}

/** Everything the report's figures are computed from, once the pipeline has drained and correctness is checked. */
interface Measured {
  readonly limits: Limits;
  readonly pipe: Pipeline;
  readonly live: Live;
  readonly load: Load;
  readonly end: LoadEnd;
  readonly finished: number;
  /** Outcomes decided during the load and the drain. */
  readonly appliedInRun: number;
}

async function main(): Promise<void> {
  const log = createLogger("bench", process.env.TALLY_LOG_LEVEL ?? "error");
  process.stderr.write(
    `bench: ${scenario}, ${RATE} events/s for ${DURATION_S} s over ${SKUS.toLocaleString("en")} SKUs — starting Postgres and nats-server…\n`,
  );
  const run = await setup(log);
  try {
    await migrate(run.sql, run.env);
    const nats = await ensureTopology(run.nc, run.t, { duplicateWindowMs: 600_000, leaseTtlMs: 10_000 });
    const limits = await measureLimits(run, nats);
    const pipe = await startPipeline(run, nats);
    const live = listen(run);
    const { catalog, before } = await onboard(run, nats);
    const load = await startLoad(run, pipe, live, catalog);
    const catalogProbe = startCatalogProbe(run.nc, run.t, run.erp);
    await runLoad(run, live, load);
    const end = await endLoad(load);
    await catalogProbe.halt();
    const { wanted, finished } = await drain(run, live, load, before);
    run.report.catalogLatencyMs = await catalogProbe.stop(30_000);
    measureResources(run, load, finished);
    if (values["pg-statements"]) run.report.pgStatements = await pgStatements(run.sql);
    const outcomes = await checkCorrectness(run, nats, load, before, wanted);
    await summarise(run, { limits, pipe, live, load, end, finished, appliedInRun: outcomes - before });
    for (const s of live.subs) s.unsubscribe();
  } finally {
    await close(run);
  }
  printTable(run.report);
  await writeReport(run.report);
}

/** Postgres for the ledger, Postgres for the demo sources, nats-server; their databases, the connections, the demo's configuration. */
async function setup(log: ReturnType<typeof createLogger>): Promise<BenchRun> {
  // The demo ERP and shop live on a server of their own, as a retailer's do: on the ledger's server,
  // their walsenders would read (and throw away) every ledger write too — ~12% more Postgres CPU here.
  const pgSettings = { max_connections: "200", max_wal_senders: "20", max_replication_slots: "20" };
  // --pg-statements: the ledger's server counts its statements (pg_stat_statements, nested ones too: the
  // triggers' inserts), so the report can say which of Tally's statements its Postgres time goes to.
  const ledgerSettings = values["pg-statements"]
    ? { ...pgSettings, shared_preload_libraries: "pg_stat_statements", "pg_stat_statements.track": "all", "pg_stat_statements.track_planning": "on" }
    : pgSettings;
  const [pg, srcPg, natsServer] = await Promise.all([
    startPostgres({ settings: ledgerSettings }),
    startPostgres({ settings: pgSettings }),
    startNats(),
  ]);
  for (const [server, dbs] of [
    [pg, ["bench"]],
    [srcPg, ["bench_erp", "bench_shop"]],
  ] as const) {
    const admin = postgres(server.url(), { max: 1, onnotice: () => {} });
    for (const db of dbs) await admin.unsafe(`create database ${db}`);
    await admin.end();
  }
  if (values["pg-statements"]) {
    const admin = postgres(pg.url("bench"), { max: 1, onnotice: () => {} });
    await admin`create extension pg_stat_statements`;
    await admin.end();
  }
  const env = "bench";
  const urls = { TALLY_SOURCE_ERP_URL: srcPg.url("bench_erp"), TALLY_SOURCE_SHOP_URL: srcPg.url("bench_shop") };
  const sql = connectPostgres(pg.url("bench"), { max: 4, application: "bench" });
  const erp = connectPostgres(urls.TALLY_SOURCE_ERP_URL, { max: 4, application: "bench-load" });
  const shop = connectPostgres(urls.TALLY_SOURCE_SHOP_URL, { max: 4, application: "bench-load" });
  const nc = await connectNats(natsServer.url, "bench");
  const t = topology(env, PARTITIONS);
  const stores = storeIds(STORES);
  const config = decodeTallyConfig({
    channels: { web: { locations: ["DC1"], buffer: 0 }, ...Object.fromEntries(stores.map((s) => [`store_${s.toLowerCase()}`, { locations: [s] }])) },
    sources: { erp: erpSource, shop: shopSource },
  });
  const report: Record<string, unknown> = {
    at: new Date().toISOString(),
    scenario,
    rate: RATE,
    durationS: DURATION_S,
    skus: SKUS,
    stores: STORES,
    reservationRate: RES_RATE,
    partitions: PARTITIONS,
    cores: cpus().length,
  };
  return { env, log, pg, srcPg, natsServer, urls, sql, erp, shop, nc, t, stores, config, report, workers: [], tally: null, generator: null };
}

/** The machine's limits, first (nothing else running). */
async function measureLimits(run: BenchRun, nats: NatsHandles): Promise<Limits> {
  process.stderr.write("bench: measuring this machine's limits (inserts, JetStream publish/consume, logical decoding)…\n");
  const insertRowsPerSec = await measureInsert(run.sql);
  const { publish, consume } = await measureNats(nats);
  const decodeChangesPerSec = await measureDecoding(run.erp, run.urls.TALLY_SOURCE_ERP_URL);
  const limits: Limits = { insertRowsPerSec, publishCommandsPerSec: publish, consumeCommandsPerSec: consume, decodeChangesPerSec };
  run.report.limits = limits;
  return limits;
}

/** The demo retailer: schemas, catalog, CDC enabled; Tally with every role (the worker here, or in --worker-processes processes). */
async function startPipeline(run: BenchRun, nats: NatsHandles): Promise<Pipeline> {
  const { env, erp, shop, urls, config } = run;
  await applyDemoSchemas(erp, shop);
  await seedDemo(erp, shop);
  Object.assign(process.env, urls);
  await enableSource(erp, findSource(config, "erp", env, urls));
  await enableSource(shop, findSource(config, "shop", env, urls));
  const { token, entry } = newToken("bench", ["admin"]);
  const port = await freePort();
  const settings = loadSettings({
    TALLY_ENV: env,
    TALLY_DATABASE_URL: run.pg.url("bench"),
    TALLY_NATS_URL: run.natsServer.url,
    TALLY_PARTITIONS: String(PARTITIONS),
    TALLY_LEASE_TTL_MS: "10000",
    TALLY_HTTP_HOST: "127.0.0.1",
    TALLY_HTTP_PORT: String(port),
    TALLY_API_TOKENS: JSON.stringify([entry]),
    TALLY_API_RATE_LIMIT: "1000000",
    TALLY_MAX_ACTORS: String(MAX_ACTORS),
    ...(process.env.TALLY_APPLY_CONCURRENCY ? { TALLY_APPLY_CONCURRENCY: process.env.TALLY_APPLY_CONCURRENCY } : {}),
  });
  if (WORKER_PROCESSES > 0) await spawnWorkers(run, settings);
  const tally = await startTally(settings, config, WORKER_PROCESSES > 0 ? ["relay", "cdc", "api"] : ["worker", "relay", "cdc", "api"], run.log);
  run.tally = tally;
  return { nats, settings, tally, api: `http://127.0.0.1:${port}`, token };
}

/** --worker-processes `tally start --roles worker` processes, on the same servers as this one. */
async function spawnWorkers(run: BenchRun, settings: Settings): Promise<void> {
  // The same channels as this process, for the worker processes' availability projections.
  const configFile = path.join(tmpdir(), `tally-bench-${process.pid}.config.json.ts`);
  await writeFile(
    configFile,
    `export default ${JSON.stringify({ channels: Object.fromEntries(Object.entries(run.config.channels).map(([n, c]) => [n, { locations: c.locations, buffer: c.buffer }])) })};\n`,
  );
  for (let i = 0; i < WORKER_PROCESSES; i++)
    run.workers.push(
      spawn(process.execPath, [path.resolve("bin/tally.js"), "start", "--roles", "worker"], {
        env: {
          ...process.env,
          TALLY_ENV: run.env,
          TALLY_DATABASE_URL: run.pg.url("bench"),
          TALLY_NATS_URL: run.natsServer.url,
          TALLY_PARTITIONS: String(PARTITIONS),
          TALLY_LEASE_TTL_MS: "10000",
          TALLY_MAX_ACTORS: String(MAX_ACTORS),
          TALLY_APPLY_CONCURRENCY: String(settings.applyConcurrency),
          TALLY_CONFIG: configFile,
          TALLY_LOG_LEVEL: "error",
          TALLY_METRICS_PORT: "0",
        },
        stdio: ["ignore", "ignore", "inherit"],
      }),
    );
}

/** Live measurements: outcomes per second, end-to-end latency per source. */
function listen(run: BenchRun): Live {
  const live: Live = {
    appliedPerSecond: new Map(),
    batches: { count: 0, commands: 0, applyMs: 0 },
    latencies: new Map(),
    toApply: new Map(),
    rounds: [],
    applied: 0,
    measuring: false,
    subs: [],
  };
  live.subs.push(
    run.nc.subscribe(outcomesSubject(run.env), {
      callback: (_e, m) => {
        const b = m.json<OutcomeBatch>();
        if (live.measuring && b.part === 0) {
          live.batches.count++;
          live.batches.commands += b.size;
          live.batches.applyMs += b.applyMs;
        }
        const sec = Math.floor(Date.now() / 1000);
        live.appliedPerSecond.set(sec, (live.appliedPerSecond.get(sec) ?? 0) + b.outcomes.length);
        live.applied += b.outcomes.length;
      },
    }),
    run.nc.subscribe(relaySubject(run.env), {
      callback: (_e, m) => {
        if (!live.measuring) return;
        const round = m.json<RelayRound>();
        for (const [source, list] of Object.entries(round.latencyMs)) {
          const kept = live.latencies.get(source) ?? [];
          kept.push(...list);
          live.latencies.set(source, kept);
          const toApply = live.toApply.get(source) ?? [];
          // A relay that does not report the split: NaN keeps the two lists aligned.
          toApply.push(...(round.toApplyMs?.[source] ?? list.map(() => Number.NaN)));
          live.toApply.set(source, toApply);
        }
        if (round.roundMs) live.rounds.push(round.roundMs);
      },
    }),
  );
  return live;
}

/** Catalog onboarding (through CDC) and, for flash-sale, little stock on a few hot SKUs; `before`: the outcomes decided so far. */
async function onboard(run: BenchRun, nats: NatsHandles): Promise<{ catalog: number; before: number }> {
  const catalog = scenario === "catalog-1m" ? 0 : SKUS;
  if (catalog > 0) {
    process.stderr.write(`bench: onboarding ${catalog.toLocaleString("en")} items into the ERP (through CDC)…\n`);
    await onboardCatalog(run.erp, catalog, STORES);
  }
  await quiet(run, nats, "onboarding");
  if (scenario === "flash-sale") {
    // The hot SKUs: stock at DC1 reset to 30 each by a count in the ERP.
    await run.erp`insert into stock_counts (item_no, location, counted_qty) select i, 'DC1', 30 from unnest(${run.erp.array(Array.from({ length: HOT }, (_, i) => simItem(i).itemNo))}::text[]) as t(i)`;
    await quiet(run, nats, "stock counts");
  }
  return { catalog, before: await outcomesSoFar(run.sql) };
}

async function outcomesSoFar(sql: Sql): Promise<number> {
  const [{ n }] = await sql<[{ n: number }]>`select count(*)::int as n from command_outcomes`;
  return n;
}

/** Until CDC has confirmed everything written so far in the ERP, the outbox is empty and no outcome arrives for 2 s. */
async function quiet(run: BenchRun, nats: NatsHandles, what: string): Promise<void> {
  const { erp, sql } = run;
  const [{ target }] = await erp<[{ target: string }]>`select pg_current_wal_lsn()::text as target`;
  let lastQueued = -1;
  let queuedSince = Date.now();
  for (let last = -1, still = 0; still < 2; ) {
    await sleep(1000);
    const n = await outcomesSoFar(sql);
    const [{ caught }] = await erp<[{ caught: boolean }]>`
      select coalesce(bool_and(confirmed_flush_lsn >= ${target}::pg_lsn), true) as caught from pg_replication_slots where slot_name = ${`tally_${run.env}_erp`}`;
    const [{ outbox }] = await sql<[{ outbox: number }]>`select count(*)::int as outbox from outbox`;
    // Commands CDC published that no worker has decided yet (a large batch can take seconds on a
    // loaded machine, with no new outcome meanwhile): not quiet, or they would count in the run.
    // (A consumer that does not move for 30 s is not waited for.)
    const queued = caught && outbox === 0 && n === last ? await commandsQueued(nats, run.t) : -1;
    if (queued !== lastQueued) [lastQueued, queuedSince] = [queued, Date.now()];
    still = queued === 0 || (queued > 0 && Date.now() - queuedSince > 30_000) ? still + 1 : 0;
    last = n;
    progress(`${what}: ${n.toLocaleString("en")} commands applied`, 0, 1);
  }
  if (process.stderr.isTTY) process.stderr.write("\n");
}

/** Messages of the commands stream its consumers have not yet acknowledged (pending and in flight). */
async function commandsQueued(nats: NatsHandles, t: Topology): Promise<number> {
  let n = 0;
  for (const c of await nats.jsm.consumers.list(t.commandsStream).next()) n += c.num_pending + c.num_ack_pending;
  return n;
}

/** CPU (and RSS) of every process in the run, read at the start and the end of the load. */
function processStats(run: BenchRun, natsProcess: number | undefined) {
  return {
    node: procStat(process.pid),
    pg: pgPids(run.pg.dataDir).map(procStat),
    srcPg: pgPids(run.srcPg.dataDir).map(procStat),
    nats: natsProcess ? procStat(natsProcess) : null,
    workers: run.workers.map((w) => procStat(w.pid!)),
    generator: run.generator ? procStat(run.generator.pid) : null,
  };
}
type ProcessStats = ReturnType<typeof processStats>;

/** The load generator forked and connected, the processes' CPU at its start, the profiler started; from here batches and latencies count. */
async function startLoad(run: BenchRun, pipe: Pipeline, live: Live, catalog: number): Promise<Load> {
  const gen = forkGenerator({
    scenario,
    rate: RATE,
    reservationRate: RES_RATE,
    durationS: DURATION_S,
    skus: SKUS,
    catalog,
    stores: STORES,
    hot: HOT,
    env: run.env,
    partitions: PARTITIONS,
    api: pipe.api,
    token: pipe.token,
    connections: CONNECTIONS,
    erpUrl: run.urls.TALLY_SOURCE_ERP_URL,
    shopUrl: run.urls.TALLY_SOURCE_SHOP_URL,
    natsUrl: run.natsServer.url,
  });
  run.generator = gen;
  await gen.ready;
  const natsProcess = run.natsServer.pid;
  const pidStart = processStats(run, natsProcess);
  // Where this process's CPU goes during the load (the roles running here; worker processes and the generator aside).
  const stopProfile = values["no-profile"] ? null : await startProfile();
  const started = Date.now();
  const schedStart = schedStat(process.pid);
  live.measuring = true;
  if (values["pg-statements"]) await run.sql`select pg_stat_statements_reset()`;
  for (const r of pipe.tally.readers) {
    r.timings.received.length = 0;
    r.timings.published.length = 0;
  }
  gen.go(started);
  return {
    gen,
    failures: 0,
    posResends: 0,
    failureMessages: [],
    expected: { erp: 0, pos: 0, shop: 0, api: 0, bench: 0 },
    offeredPerSecond: new Map(),
    reservationRtt: [],
    reservationOutcomes: {},
    orders: [],
    result: null,
    rss: [],
    pgPss: 0,
    lastSample: 0,
    natsProcess,
    pidStart,
    stopProfile,
    started,
    schedStart,
  };
}

/** The load runs in the generator (every 100 ms, the events owed to --rate and the reservations owed to --reservation-rate, for --duration seconds); here, samples once a second until it is done. */
async function runLoad(run: BenchRun, live: Live, load: Load): Promise<void> {
  let finished = false;
  const done = load.gen.done.finally(() => {
    finished = true;
  });
  while (!finished) {
    const tick = Date.now();
    if (tick - load.lastSample >= 1000) sample(run, live, load, tick);
    await Promise.race([done, sleep(250)]);
  }
  const r = await done;
  load.result = r;
  load.failures = r.failures;
  load.posResends = r.posResends;
  load.failureMessages.push(...r.failureMessages);
  Object.assign(load.expected, r.expected);
  for (const [sec, n] of r.offeredPerSecond) load.offeredPerSecond.set(sec, n);
  load.reservationRtt.push(...r.reservationRtt);
  Object.assign(load.reservationOutcomes, r.reservationOutcomes);
  load.orders.push(...r.orders);
}

/** The offered rate is over the load's own window: requests still queued after it count against Tally. */
async function endLoad(load: Load): Promise<LoadEnd> {
  const r = load.result!;
  const loopEnded = r.loopEnded;
  const loadWindowS = (loopEnded - load.started) / 1000;
  const offeredInWindow = [...load.offeredPerSecond.values()].reduce((a, b) => a + b, 0);
  const profile: ProfileSummary | null = load.stopProfile ? await load.stopProfile() : null;
  if (process.stderr.isTTY) process.stderr.write("\n");
  return { loopEnded, loadWindowS, offeredInWindow, loadEnded: r.loadEnded, profile };
}

/** Once a second: the processes' memory, and the progress line. */
function sample(run: BenchRun, live: Live, load: Load, tick: number): void {
  const { rss, started } = load;
  load.lastSample = tick;
  // Postgres as a whole: proportional set size, so shared buffers count once, not once per
  // backend. Read every 5 s: smaps walks page tables, ~4% of this process's CPU when read every second.
  if (rss.length % 5 === 0) load.pgPss = pgPids(run.pg.dataDir).reduce((n, p) => n + (procPss(p) ?? procStat(p)?.rss ?? 0), 0);
  rss.push({
    t: Math.round((tick - started) / 1000),
    node: procStat(process.pid)?.rss ?? 0,
    pg: load.pgPss,
    nats: load.natsProcess ? (procStat(load.natsProcess)?.rss ?? 0) : 0,
  });
  const { offered: total, inflight } = load.gen.progress;
  progress(
    `${Math.round((tick - started) / 1000)}/${DURATION_S} s  offered ${total.toLocaleString("en")}  applied ${live.applied.toLocaleString("en")}  in flight ${inflight}`,
    (tick - started) / 1000,
    DURATION_S,
  );
}

/** Until every command the load made has an outcome and the outbox is empty (or nothing moved for 60 s); from here nothing counts. */
async function drain(run: BenchRun, live: Live, load: Load, before: number): Promise<{ wanted: number; finished: number }> {
  process.stderr.write("bench: load done; waiting for the pipeline to drain…\n");
  const wanted = Object.values(load.expected).reduce((a, b) => a + b, 0);
  let drainedAt = Date.now();
  for (let last = -1; ; ) {
    const n = (await outcomesSoFar(run.sql)) - before;
    const [{ outbox }] = await run.sql<[{ outbox: number }]>`select count(*)::int as outbox from outbox`;
    if (n >= wanted && outbox === 0) break;
    if (n !== last) drainedAt = Date.now();
    else if (Date.now() - drainedAt > 60_000) break;
    last = n;
    progress(`draining: ${n.toLocaleString("en")} / ${wanted.toLocaleString("en")} applied`, n, wanted);
    await sleep(500);
  }
  live.measuring = false;
  return { wanted, finished: Date.now() };
}

/** CPU per process (and the main thread's share of a CPU) over the load and the drain; memory over the load. */
function measureResources(run: BenchRun, load: Load, finished: number): void {
  const { report } = run;
  const { rss, started, schedStart, pidStart } = load;
  const schedEnd = schedStat(process.pid);
  if (process.stderr.isTTY) process.stderr.write("\n");
  const pidEnd = processStats(run, load.natsProcess);
  const sumCpu = (xs: Array<{ cpu: number } | null>) => xs.reduce((n, x) => n + (x?.cpu ?? 0), 0);
  const wall = (finished - started) / 1000;
  // The main thread's time on a CPU vs waiting for one: with every process on two cores, a socket
  // write wakes its peer (Postgres, nats-server), which can take the core from the writer.
  if (schedStart && schedEnd) {
    const wallNs = wall * 1e9;
    report.mainThread = {
      onCpu: round((schedEnd.runNs - schedStart.runNs) / wallNs, 3),
      waitingForCpu: round((schedEnd.waitNs - schedStart.waitNs) / wallNs, 3),
      timeslicesPerSec: Math.round((schedEnd.slices - schedStart.slices) / wall),
    };
  }
  report.cpu = {
    wallSeconds: round(wall),
    node: round(((pidEnd.node?.cpu ?? 0) - (pidStart.node?.cpu ?? 0)) / wall, 2),
    postgres: round((sumCpu(pidEnd.pg) - sumCpu(pidStart.pg)) / wall, 2),
    sourcePostgres: round((sumCpu(pidEnd.srcPg) - sumCpu(pidStart.srcPg)) / wall, 2),
    natsServer: round(((pidEnd.nats?.cpu ?? 0) - (pidStart.nats?.cpu ?? 0)) / wall, 2),
    workerProcesses: round((sumCpu(pidEnd.workers) - sumCpu(pidStart.workers)) / wall, 2),
    generator: round(((pidEnd.generator?.cpu ?? 0) - (pidStart.generator?.cpu ?? 0)) / wall, 2),
    unit: "cores (CPU seconds per wall second)",
  };
  report.rss = rss;
  // Flat memory: the node process's RSS over the second half of the run, relative to its middle.
  const mid = rss[Math.floor(rss.length / 2)]?.node ?? 0;
  const last = rss[rss.length - 1]?.node ?? 0;
  report.memory = {
    maxActors: MAX_ACTORS,
    nodeRssMidMiB: Math.round(mid / 1048576),
    nodeRssEndMiB: Math.round(last / 1048576),
    secondHalfGrowth: mid > 0 ? round((last - mid) / mid, 3) : null,
  };
}

/**
 * The ledger Postgres's statements over the load and its drain (--pg-statements), by total execution
 * time: where its CPU goes. Nested statements (a trigger's insert) count both on their own and inside
 * the statement that fired them. The bench's own reads (progress, latency samples) are among them.
 */
async function pgStatements(sql: Sql): Promise<Record<string, unknown>> {
  const rows = await sql<Array<{ query: string; calls: number; total_ms: number; plan_ms: number; plans: number; rows: number; top: boolean }>>`
    select query, calls::int, total_exec_time::float8 as total_ms, total_plan_time::float8 as plan_ms, plans::int, rows::int, toplevel as top
    from pg_stat_statements where dbid = (select oid from pg_database where datname = current_database())
    order by total_exec_time desc`;
  const topLevel = rows.filter((r) => r.top);
  const topLevelMs = topLevel.reduce((n, r) => n + r.total_ms, 0);
  return {
    topLevelExecMs: Math.round(topLevelMs),
    // Planning is counted apart from execution (track_planning): a statement planned on every call costs this on top.
    topLevelPlanMs: Math.round(topLevel.reduce((n, r) => n + r.plan_ms, 0)),
    statements: rows.slice(0, 20).map((r) => ({
      query: oneLine(r.query, 240),
      topLevel: r.top,
      calls: r.calls,
      totalMs: Math.round(r.total_ms),
      planMs: Math.round(r.plan_ms),
      plans: r.plans,
      share: round(r.total_ms / Math.max(topLevelMs, 1), 3),
      meanMs: round(r.total_ms / Math.max(r.calls, 1), 3),
      rowsPerCall: round(r.rows / Math.max(r.calls, 1), 1),
    })),
  };
}

/** Every source event's commands decided exactly once, `ledger verify`, dead letters; returns the outcomes in the ledger. */
async function checkCorrectness(run: BenchRun, nats: NatsHandles, load: Load, before: number, wanted: number): Promise<number> {
  const { sql } = run;
  const bySource = await sql<Array<{ source: string; status: string; n: number }>>`
      select split_part(command_id, ':', 1) as source, status, count(*)::int as n from command_outcomes group by 1, 2 order by 1, 2`;
  const [{ outcomes }] = await sql<[{ outcomes: number }]>`select count(*)::int as outcomes from command_outcomes`;
  const [{ dup }] = await sql<
    [{ dup: number }]
  >`select count(*)::int as dup from (select command_id, leg from ledger_entries group by 1, 2 having count(*) > 1) d`;
  const verify = await verifyLedger(sql);
  const [{ dlq }] = [{ dlq: (await nats.jsm.streams.info(run.t.dlqStream)).state.messages }];
  run.report.correctness = {
    expectedCommands: load.expected,
    expectedTotal: wanted,
    appliedOrRejected: outcomes - before,
    allAccountedFor: outcomes - before === wanted,
    duplicateLegs: dup,
    verify: verify.problem === null ? "ok" : verify.problem,
    deadLetters: dlq,
    bySource,
    loadFailures: load.failures,
    posResends: load.posResends,
    loadFailureMessages: load.failureMessages,
  };
  return outcomes;
}

/** The report's figures: throughput, latency, reservations, CDC lag, ratios, targets, the polling baseline, the worker, the bottleneck. */
async function summarise(run: BenchRun, m: Measured): Promise<void> {
  const { report } = run;
  const { sustained, offeredRate, latency, rtt } = reportThroughput(run, m);
  report.cpuPerCommandMs = cpuPerCommand(report, m.appliedInRun);
  report.generator = generatorFigures(report, m.load);
  const worstP99 = Math.max(...Object.values(latency).map((l) => l.p99 ?? 0));
  report.targets = {
    "sustained end to end ≥ 25,000 commands/s": { target: 25_000, measured: sustained, at: `offered ${offeredRate}/s`, met: sustained >= 25_000 },
    "p99 source → availability ≤ 100 ms (at 5,000 commands/s)": {
      target: 100,
      measured: worstP99,
      at: `${offeredRate} commands/s`,
      met: worstP99 <= 100 && offeredRate >= 5000,
    },
    "reservation round trip p99 ≤ 15 ms (at 1,000/s)": {
      target: 15,
      measured: round(percentile(rtt, 0.99)),
      at: `${RES_RATE} reservations/s`,
      met: (percentile(rtt, 0.99) ?? Infinity) <= 15 && RES_RATE >= 1000,
    },
  };
  if (scenario === "flash-sale" || scenario === "steady") {
    const { orders, started } = m.load;
    const stock = await stockTimeline(run.sql, orders.length > 0 ? Math.min(...orders.map((o) => o.at)) : started);
    const tallyP99 = latency.shop?.p99 ?? latency.erp?.p99 ?? 0;
    report.pollingBaseline = pollingBaseline(orders, stock, [
      { name: "Tally", lagMs: tallyP99 },
      { name: "poll 60 s", periodMs: 60_000 },
      { name: "poll 900 s", periodMs: 900_000 },
    ]);
  }
  report.worker = workerFigures(m);
  report.bottleneck = await bottleneck(report);
}

/** Throughput (offered, sustained, drain, per second), latency per source, reservations, CDC lag, the ratios to the limits. */
function reportThroughput(run: BenchRun, m: Measured) {
  const { report } = run;
  const { load, end, live, finished, limits } = m;
  const { started } = load;
  const firstSec = Math.floor(started / 1000);
  const timeline = Array.from({ length: Math.ceil((finished - started) / 1000) + 1 }, (_, i) => ({
    t: i,
    offered: load.offeredPerSecond.get(firstSec + i) ?? 0,
    applied: live.appliedPerSecond.get(firstSec + i) ?? 0,
  }));
  const sustained = Math.round(m.appliedInRun / ((finished - started) / 1000));
  const offeredRate = Math.round(end.offeredInWindow / end.loadWindowS);
  const latency = Object.fromEntries(
    [...live.latencies].map(([source, xs]) => {
      const s = sortNum(xs);
      return [source, { samples: s.length, p50: percentile(s, 0.5), p95: percentile(s, 0.95), p99: percentile(s, 0.99) }];
    }),
  );
  const rtt = sortNum(load.reservationRtt);
  report.throughput = {
    offeredCommandsPerSec: offeredRate,
    sustainedCommandsPerSec: sustained,
    drainSeconds: round((finished - end.loopEnded) / 1000),
    timeline,
  };
  report.latencyMs = latency;
  report.latencyStagesMs = latencyStages(live);
  report.relayRoundMs = relayRounds(live);
  if (end.profile) report.profile = end.profile;
  report.reservations = {
    count: rtt.length,
    p50: round(percentile(rtt, 0.5)),
    p99: round(percentile(rtt, 0.99)),
    outcomes: load.reservationOutcomes,
  };
  report.cdcLag = m.pipe.tally.readers.map((r) => ({ source: r.name, lagBytes: r.metrics.lagBytes, changes: r.metrics.changes }));
  // CDC's stages, from each source transaction's commit: taken in by the reader, acknowledged by JetStream.
  report.cdcStagesMs = Object.fromEntries(
    m.pipe.tally.readers.map((r) => {
      const pct = (xs: Array<number>) => {
        const s = sortNum(xs);
        return { samples: s.length, p50: percentile(s, 0.5), p99: percentile(s, 0.99) };
      };
      return [r.name, { commitToReceived: pct(r.timings.received), commitToPublished: pct(r.timings.published) }];
    }),
  );
  report.ratios = {
    endToEndVsPublish: round(sustained / limits.publishCommandsPerSec, 3),
    endToEndVsConsume: round(sustained / limits.consumeCommandsPerSec, 3),
    endToEndVsInsert: round(sustained / limits.insertRowsPerSec, 3),
    cdcVsDecoding: round((load.expected.erp + load.expected.shop) / ((end.loadEnded - started) / 1000) / limits.decodeChangesPerSec, 3),
  };
  return { sustained, offeredRate, latency, rtt };
}

/**
 * Source → availability split at the ledger transaction that wrote the change (its start, the outbox
 * row's created_at): before it, the source's own commit, CDC or the API, JetStream and the worker's
 * queue; after it, the apply, its commit and the relay. Percentiles of each part, and the mean of
 * each part over the changes at or above the end-to-end p99 (what the tail is made of).
 */
function latencyStages(live: Live): Record<string, unknown> {
  return Object.fromEntries(
    [...live.latencies].flatMap(([source, xs]) => {
      const before = live.toApply.get(source) ?? [];
      const pairs = xs.map((total, i) => ({ total, before: before[i]! })).filter((p) => Number.isFinite(p.before));
      if (pairs.length === 0) return [];
      const pcts = (v: Array<number>) => {
        const s = sortNum(v);
        return { p50: percentile(s, 0.5), p99: percentile(s, 0.99) };
      };
      const cut = percentile(sortNum(pairs.map((p) => p.total)), 0.99)!;
      const tail = pairs.filter((p) => p.total >= cut);
      const mean = (v: Array<number>) => round(v.reduce((a, b) => a + b, 0) / Math.max(1, v.length));
      return [
        [
          source,
          {
            toApplyStart: pcts(pairs.map((p) => p.before)),
            applyToPublished: pcts(pairs.map((p) => p.total - p.before)),
            tail: {
              samples: tail.length,
              toApplyStart: mean(tail.map((p) => p.before)),
              applyToPublished: mean(tail.map((p) => p.total - p.before)),
            },
          },
        ],
      ];
    }),
  );
}

/** The relay's rounds: how long committed rows waited for a round, and its read, publish and delete, p50 / p99. */
function relayRounds(live: Live): Record<string, unknown> {
  const part = (k: keyof NonNullable<RelayRound["roundMs"]>) => {
    const s = sortNum(live.rounds.map((r) => r[k]));
    return { p50: percentile(s, 0.5), p99: percentile(s, 0.99) };
  };
  return { rounds: live.rounds.length, pickup: part("pickup"), read: part("read"), publish: part("publish"), delete: part("delete") };
}

/** The report's `cpu`: cores each process used over the load, and the load's wall time. */
interface CpuCores {
  wallSeconds: number;
  node: number;
  postgres: number;
  sourcePostgres: number;
  natsServer: number;
  workerProcesses: number;
  generator: number;
}

/**
 * CPU milliseconds per command decided, per process (over the load and the drain): what each part
 * of the system costs a command, the generator apart (`tally`: everything but the generator).
 */
function cpuPerCommand(report: Record<string, unknown>, commands: number): Record<string, number | null> {
  const cpu = report.cpu as CpuCores;
  const per = (cores: number) => (commands > 0 ? round((cores * cpu.wallSeconds * 1000) / commands, 3) : null);
  const parts = {
    node: cpu.node,
    postgres: cpu.postgres,
    sourcePostgres: cpu.sourcePostgres,
    natsServer: cpu.natsServer,
    workerProcesses: cpu.workerProcesses,
  };
  return {
    ...Object.fromEntries(Object.entries(parts).map(([k, v]) => [k, per(v)])),
    generator: per(cpu.generator),
    tally: per(Object.values(parts).reduce((a, b) => a + b, 0)),
    commands,
  };
}

/**
 * Whether the load generator kept the asked rate: the events it offered against --rate over its
 * window, its ticks that started late, and its CPU. A generator short of its rate (or of CPU) was
 * the limit of the run, not Tally; `limited` says so, and the bottleneck sentence leads with it.
 */
function generatorFigures(report: Record<string, unknown>, load: Load): Record<string, unknown> {
  const r = load.result!;
  const windowS = (r.loopEnded - load.started) / 1000;
  const cores = (report.cpu as { generator: number }).generator;
  const shortOfRate = r.offeredEvents < r.askedEvents * 0.95;
  const lateTicks = r.ticks > 0 && r.lateTicks / r.ticks > 0.05;
  const busy = cores >= 0.9;
  const reasons = [
    ...(shortOfRate ? [`offered ${r.offeredEvents} of the ${r.askedEvents} events asked`] : []),
    ...(lateTicks ? [`${r.lateTicks} of ${r.ticks} ticks started over ${100} ms late (worst ${r.maxTickLagMs} ms)`] : []),
    ...(busy ? [`its process used ${cores} cores`] : []),
  ];
  return {
    pid: load.gen.pid,
    askedEventsPerSec: round(r.askedEvents / windowS),
    offeredEventsPerSec: round(r.offeredEvents / windowS),
    ticks: r.ticks,
    lateTicks: r.lateTicks,
    maxTickLagMs: r.maxTickLagMs,
    sourceWriteMs: r.sourceWriteMs,
    cpuCores: cores,
    limited: reasons.length > 0,
    why: reasons.length > 0 ? reasons.join("; ") : null,
  };
}

/** The worker's batches over the run, and how busy its apply permits were. */
function workerFigures(m: Measured): Record<string, unknown> {
  const { tally, settings } = m.pipe;
  const { batches } = m.live;
  const elapsed = m.finished - m.load.started;
  // Permits that can be in use: per process, its apply concurrency or the partitions it holds (a fair share), if fewer.
  const permits = tally.worker
    ? Math.min(PARTITIONS, tally.worker.gate.permits)
    : Array.from({ length: WORKER_PROCESSES }, (_, i) =>
        Math.min(settings.applyConcurrency, Math.floor(PARTITIONS / WORKER_PROCESSES) + (i < PARTITIONS % WORKER_PROCESSES ? 1 : 0)),
      ).reduce((a, b) => a + b, 0);
  return {
    batches: batches.count,
    meanBatch: round(batches.commands / Math.max(1, batches.count)),
    meanApplyMs: round(batches.applyMs / Math.max(1, batches.count)),
    busyFractionPerPartition: round(batches.applyMs / (elapsed * PARTITIONS), 3),
    // Partitions apply behind a per-process gate (TALLY_APPLY_CONCURRENCY, default the CPU count):
    // how busy those permits were says more than how busy each partition was.
    applyPermits: permits,
    busyFractionOfPermits: round(batches.applyMs / (elapsed * permits), 3),
    ...(tally.worker
      ? {
          stageMsPerBatch: Object.fromEntries(
            Object.entries(tally.worker.metrics.stageMs).map(([k, v]) => [k, round(v / Math.max(1, tally.worker!.metrics.batches), 2)]),
          ),
        }
      : {}),
    processes: WORKER_PROCESSES,
  };
}

/** The load's HTTP client, Tally, the worker processes, the connections, the servers: closed whatever happened. */
async function close(run: BenchRun): Promise<void> {
  await run.generator?.exit().catch(() => {});
  await run.tally?.close().catch(() => {});
  await Promise.all(
    run.workers.map(
      (w) =>
        new Promise<void>((resolve) => {
          if (w.exitCode !== null) return resolve();
          w.once("exit", () => resolve());
          w.kill("SIGTERM");
        }),
    ),
  );
  await run.nc.close().catch(() => {});
  await Promise.allSettled([run.sql.end(), run.erp.end(), run.shop.end()]);
  await Promise.allSettled([run.pg.destroy(), run.srcPg.destroy(), run.natsServer.destroy()]);
}

/** `<out>/<timestamp>.json` and `.html`. */
async function writeReport(report: Record<string, unknown>): Promise<void> {
  const dir = path.resolve(values.out!);
  await mkdir(dir, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:.]/g, "-");
  const json = path.join(dir, `${stamp}.json`);
  const html = path.join(dir, `${stamp}.html`);
  await writeFile(json, JSON.stringify(report, null, 2));
  await writeFile(html, renderReport(report));
  process.stdout.write(`wrote ${json}\n      ${html}\n`);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** The postmaster (first line of postmaster.pid) and its children (backends, walsenders, workers). */
function pgPids(dataDir: string): Array<number> {
  try {
    const postmaster = Number(readFileSync(path.join(dataDir, "postmaster.pid"), "utf8").split("\n")[0]);
    return [postmaster, ...childrenOf(postmaster)];
  } catch {
    return [];
  }
}

/** Available-to-promise at DC1 over time for the ordered SKUs, from the ledger (on hand − reserved). */
async function stockTimeline(sql: Sql, from: number): Promise<Array<StockEvent>> {
  const rows = await sql<Array<{ sku: string; at: Date; delta: number; bucket: string }>>`
    select sku, recorded_at as at, delta, bucket from ledger_entries
     where location = 'DC1' and bucket in ('on_hand', 'reserved') and source_system <> 'shop'
     order by recorded_at, sku, sku_seq`;
  void from;
  return rows.map((r) => ({ at: r.at.getTime(), sku: r.sku, delta: r.bucket === "on_hand" ? r.delta : -r.delta }));
}

/** Where the time goes, in a sentence for the report. */
async function bottleneck(report: Record<string, unknown>): Promise<string> {
  const cpu = report.cpu as CpuCores;
  const busiest = Object.entries({
    "Node (Tally's roles)": cpu.node,
    "Postgres (ledger)": cpu.postgres,
    "Postgres (sources)": cpu.sourcePostgres,
    "nats-server": cpu.natsServer,
  }).sort((a, b) => b[1] - a[1])[0]!;
  const used = Math.round((cpu.node + cpu.postgres + cpu.sourcePostgres + cpu.natsServer + cpu.workerProcesses + cpu.generator) * 100) / 100;
  const cores = (report.cores as number) ?? 2;
  const tp = report.throughput as { offeredCommandsPerSec: number; sustainedCommandsPerSec: number };
  const w = report.worker as {
    meanBatch: number;
    meanApplyMs: number;
    applyPermits: number;
    busyFractionOfPermits: number;
    stageMsPerBatch?: { gate: number };
  };
  const gateWait =
    w.stageMsPerBatch && w.stageMsPerBatch.gate >= 1
      ? `; a partition waited ${Math.round(w.stageMsPerBatch.gate)} ms per batch for a permit, set by TALLY_APPLY_CONCURRENCY`
      : "";
  const keptUp = tp.sustainedCommandsPerSec >= tp.offeredCommandsPerSec * 0.95;
  const cpuBound = used >= cores * 0.85;
  const stage =
    cpu.node >= 0.9
      ? `the Node process is at ${cpu.node} cores — one thread, its event loop saturated (Tally's roles share it; the load generator runs apart at ${cpu.generator} cores; ${used} of ${cores} cores in all), so every stage waits for the loop (worker: mean batch ${w.meanBatch} commands in ${w.meanApplyMs} ms). Run the roles in separate processes (tally start --roles worker, …) and trim the per-command work (schema decode, hashing, allocation: GC)`
      : cpuBound
        ? `the machine is CPU-bound (${used} of ${cores} cores; ${busiest[0]} ${busiest[1]})`
        : w.busyFractionOfPermits > 0.5
          ? `the workers' ${w.applyPermits} apply permits are busy ${Math.round(w.busyFractionOfPermits * 100)}% of the time (mean batch ${w.meanBatch} commands in ${w.meanApplyMs} ms${gateWait}): the apply path is the stage`
          : `the workers' ${w.applyPermits} apply permits are idle ${Math.round((1 - w.busyFractionOfPermits) * 100)}% of the time (mean batch ${w.meanBatch} in ${w.meanApplyMs} ms${gateWait}) and the CPU is at ${used} of ${cores} cores: latency is spent waiting (batch cadence, round trips), not computing`;
  const mt = report.mainThread as { onCpu: number; waitingForCpu: number; timeslicesPerSec: number } | undefined;
  const contended =
    mt && mt.waitingForCpu >= 0.1
      ? ` The Node main thread waited for a CPU ${Math.round(mt.waitingForCpu * 100)}% of the load and ran ${Math.round(mt.onCpu * 100)}% (run queue, ${mt.timeslicesPerSec} timeslices/s): the cores are contended, so latency is mostly queueing for them.`
      : "";
  const profile = report.profile as ProfileSummary | undefined;
  const profiled = profile
    ? ` Profile of the Node process over the load (busy ${Math.round((1 - profile.idle) * 100)}% of samples): ${profile.stages
        .slice(0, 4)
        .map((s) => `${s.stage} ${Math.round(s.share * 100)}%`)
        .join(
          ", ",
        )}; hottest function ${profile.hottest[0]?.fn ?? "–"} (${Math.round((profile.hottest[0]?.share ?? 0) * 100)}%). V8's sampler counts wall time: a thread waiting for a CPU is counted in the function it was in.`
    : "";
  const gen = report.generator as { limited: boolean; why: string | null } | undefined;
  const generatorLimit = gen?.limited
    ? `The load generator, not Tally, was the limit of this run (${gen.why}): the offered rate is what it could offer, not what was asked. `
    : "";
  return keptUp
    ? `${generatorLimit}Tally kept up with the offered load (${tp.offeredCommandsPerSec} commands/s); ${stage}. Raise --rate to find the ceiling.${contended}${profiled}`
    : `${generatorLimit}Tally fell behind the offered load (${tp.sustainedCommandsPerSec} of ${tp.offeredCommandsPerSec} commands/s): ${stage}.${contended}${profiled}`;
}

/** The table's rows on CPU per process and per command, and on whether the load generator kept its rate. */
function resourceRows(report: Record<string, unknown>): Array<[string, string, string]> {
  const cpu = report.cpu as CpuCores;
  const perCmd = report.cpuPerCommandMs as Record<string, number | null>;
  const gen = report.generator as { askedEventsPerSec: number; offeredEventsPerSec: number; limited: boolean; why: string | null };
  return [
    [
      "CPU (cores): node / postgres ledger, sources / nats",
      `${cpu.node} / ${cpu.postgres}, ${cpu.sourcePostgres} / ${cpu.natsServer}`,
      `${cpu.workerProcesses > 0 ? `+ worker processes ${cpu.workerProcesses}, ` : ""}+ load generator ${cpu.generator}`,
    ],
    [
      "CPU per command (ms): node / postgres ledger, sources / nats",
      `${perCmd.node} / ${perCmd.postgres}, ${perCmd.sourcePostgres} / ${perCmd.natsServer}`,
      `Tally ${perCmd.tally} in all${perCmd.workerProcesses ? ` (worker processes ${perCmd.workerProcesses})` : ""}; generator ${perCmd.generator}`,
    ],
    [
      "load generator: events/s asked / offered",
      `${gen.askedEventsPerSec} / ${gen.offeredEventsPerSec}`,
      gen.limited ? `LIMITED: ${gen.why}` : "kept the rate",
    ],
  ];
}

interface Pct {
  p50: number | null;
  p99: number | null;
}
interface StageFigures {
  toApplyStart: Pct;
  applyToPublished: Pct;
  tail: { samples: number; toApplyStart: number; applyToPublished: number };
}

/** The table's rows on where source → availability goes: before and after the apply, the relay's rounds, CDC. */
function stageRows(report: Record<string, unknown>): Array<[string, string, string]> {
  return [
    ...Object.entries((report.latencyStagesMs ?? {}) as Record<string, StageFigures>).map(([s, l]): [string, string, string] => [
      `  ${s}: source → apply start / apply → published (ms)`,
      `p50 ${l.toApplyStart.p50} / ${l.applyToPublished.p50}, p99 ${l.toApplyStart.p99} / ${l.applyToPublished.p99}`,
      `p99 tail (${l.tail.samples}): ${l.tail.toApplyStart} / ${l.tail.applyToPublished} mean`,
    ]),
    ...relayRoundRow(report),
    ...Object.entries((report.cdcStagesMs ?? {}) as Record<string, { commitToReceived: Pct; commitToPublished: Pct }>).map(
      ([s, c]): [string, string, string] => [
        `  ${s} CDC: commit → taken in / → JetStream acked (ms)`,
        `p50 ${c.commitToReceived.p50} / ${c.commitToPublished.p50}, p99 ${c.commitToReceived.p99} / ${c.commitToPublished.p99}`,
        "",
      ],
    ),
  ];
}

function relayRoundRow(report: Record<string, unknown>): Array<[string, string, string]> {
  const r = report.relayRoundMs as { rounds: number; pickup: Pct; read: Pct; publish: Pct; delete: Pct } | undefined;
  if (!r || r.rounds === 0) return [];
  const f = (p: Pct) => `${p.p50}/${p.p99}`;
  return [
    [
      "relay round p50/p99 (ms): pickup, read, publish, delete",
      `${f(r.pickup)}, ${f(r.read)}, ${f(r.publish)}, ${f(r.delete)}`,
      `${r.rounds} rounds`,
    ],
  ];
}

function printTable(report: Record<string, unknown>): void {
  const limits = report.limits as Limits;
  const tp = report.throughput as { offeredCommandsPerSec: number; sustainedCommandsPerSec: number; drainSeconds: number };
  const lat = report.latencyMs as Record<string, { p50: number | null; p95: number | null; p99: number | null; samples: number }>;
  const res = report.reservations as { count: number; p50: number | null; p99: number | null };
  const c = report.correctness as {
    allAccountedFor: boolean;
    duplicateLegs: number;
    verify: string;
    expectedTotal: number;
    appliedOrRejected: number;
  };
  const mt = report.mainThread as { onCpu: number; waitingForCpu: number; timeslicesPerSec: number } | undefined;
  const ratio = (x: number, y: number) => (y > 0 ? (x / y).toFixed(3) : "–");
  const rows: Array<[string, string, string]> = [
    ["measure", "value", "ratio to the limit"],
    ["limit: ledger-shaped inserts (rows/s)", String(limits.insertRowsPerSec), "1"],
    ["limit: JetStream publish (commands/s, envelopes)", String(limits.publishCommandsPerSec), "1"],
    ["limit: JetStream consume (commands/s)", String(limits.consumeCommandsPerSec), "1"],
    ["limit: logical decoding into Node (changes/s)", String(limits.decodeChangesPerSec), "1"],
    ["offered load (commands/s)", String(tp.offeredCommandsPerSec), ""],
    [
      "Tally sustained end to end (commands/s)",
      String(tp.sustainedCommandsPerSec),
      `${ratio(tp.sustainedCommandsPerSec, limits.publishCommandsPerSec)} of publish, ${ratio(tp.sustainedCommandsPerSec, limits.insertRowsPerSec)} of insert`,
    ],
    ...Object.entries(lat).map(([s, l]): [string, string, string] => [
      `source → availability published, ${s} (ms)`,
      `p50 ${l.p50} p95 ${l.p95} p99 ${l.p99}`,
      `${l.samples} samples`,
    ]),
    ...stageRows(report),
    ...Object.entries((report.catalogLatencyMs ?? {}) as CatalogLatency).map(([c, l]): [string, string, string] => [
      `ERP price change → catalog published, ${c} (ms)`,
      `p50 ${l.p50} p99 ${l.p99}`,
      `${l.samples} samples, ${l.unseen} unseen`,
    ]),
    ["reservation round trip (ms)", `p50 ${res.p50} p99 ${res.p99}`, `${res.count} requests`],
    ...(mt
      ? [
          [
            "node main thread: on a CPU / waiting for one",
            `${Math.round(mt.onCpu * 100)}% / ${Math.round(mt.waitingForCpu * 100)}% of the load`,
            `${mt.timeslicesPerSec} timeslices/s`,
          ] as [string, string, string],
        ]
      : []),
    ...resourceRows(report),
    [
      "node RSS, middle → end of the run (MiB)",
      `${(report.memory as { nodeRssMidMiB: number }).nodeRssMidMiB} → ${(report.memory as { nodeRssEndMiB: number }).nodeRssEndMiB}`,
      `live actors capped at ${(report.memory as { maxActors: number }).maxActors}`,
    ],
    [
      "correctness",
      `${c.appliedOrRejected}/${c.expectedTotal} decided, ${c.duplicateLegs} duplicate legs, verify ${c.verify}`,
      c.allAccountedFor && c.duplicateLegs === 0 && c.verify === "ok" ? "PASS" : "FAIL",
    ],
  ];
  const pb = report.pollingBaseline as Array<{ name: string; oversoldPer10k: number }> | undefined;
  if (pb) rows.push(["oversold units per 10,000 orders", pb.map((p) => `${p.name} ${p.oversoldPer10k}`).join(", "), ""]);
  const w = [0, 1, 2].map((i) => Math.max(...rows.map((r) => r[i]!.length)));
  for (const r of rows) process.stdout.write(`${r.map((x, i) => x.padEnd(w[i]!)).join("  ")}\n`);
  process.stdout.write(`${report.bottleneck as string}\n`);
  printPgStatements(report);
}

/** The ledger Postgres's top statements (--pg-statements). */
function printPgStatements(report: Record<string, unknown>): void {
  const ps = report.pgStatements as { topLevelExecMs: number; topLevelPlanMs: number; statements: Array<PgStatement> } | undefined;
  if (ps) {
    process.stdout.write(
      `ledger Postgres statements by execution time (${ps.topLevelExecMs} ms executing, ${ps.topLevelPlanMs} ms planning, top level; share, calls, mean ms, plans, planning ms, rows per call):\n`,
    );
    for (const st of ps.statements.slice(0, 12))
      process.stdout.write(
        `  ${(st.share * 100).toFixed(1).padStart(5)}%  ${String(st.calls).padStart(7)}  ${st.meanMs.toFixed(3).padStart(8)}  ${String(st.plans).padStart(7)}  ${String(st.planMs).padStart(6)}  ${String(st.rowsPerCall).padStart(6)}  ${st.topLevel ? "" : "(nested) "}${st.query.slice(0, 100)}\n`,
      );
  }
}

await main();
