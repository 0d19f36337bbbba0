/**
 * The apply-path benchmark: Tally's end-to-end command rate (publish → applied in the ledger) next to
 * the raw limits of this machine measured in the same run — batched inserts of ledger-shaped rows
 * into Postgres, and JetStream publishes of command envelopes — so results read as ratios, not as
 * absolute times on a noisy machine.
 *
 *   npm run bench -- [--commands 100000] [--skus 10000] [--partitions 8]
 */
import { mkdir, readdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { parseArgs } from "node:util";
import postgres from "postgres";
import { decodeCommand, type Command } from "../src/contract/index.ts";
import { migrate } from "../ledger/index.ts";
import { startTally } from "../src/app/index.ts";
import { loadSettings } from "../src/platform/index.ts";
import { connectPostgres, type Sql } from "../src/platform/index.ts";
import { startNats, startPostgres } from "../src/app/devStack/index.ts";
import { createLogger, decodeTallyConfig } from "../src/platform/index.ts";
import { connectNats, ensureTopology, type NatsHandles } from "../src/wire/index.ts";
import { publishCommands } from "../src/wire/index.ts";
import { topology, type Topology } from "../src/wire/index.ts";
import { measureInsert, measureNats } from "./limits.ts";

const { values } = parseArgs({
  options: {
    commands: { type: "string", default: "100000" },
    skus: { type: "string", default: "10000" },
    partitions: { type: "string", default: "8" },
    /** The worker's TALLY_BATCH_MAX (messages per partition batch; default: the setting's default). */
    "batch-max": { type: "string" },
  },
});
const N = Number(values.commands);
const SKUS = Number(values.skus);
const PARTITIONS = Number(values.partitions);

function makeCommands(n: number, prefix: string): Array<Command> {
  const out: Array<Command> = [];
  for (let i = 0; i < n; i++) {
    const d = decodeCommand({
      id: `${prefix}:${i}`,
      type: i % 3 === 0 ? "receive" : i % 3 === 1 ? "sell" : "reserve",
      sku: `B-${i % SKUS}`,
      location: i % 2 ? "DC1" : "S01",
      qty: 1 + (i % 3),
      ...(i % 3 === 2 ? { reservationId: `${prefix}:h${i}` } : {}),
      source: { system: "bench", ref: `r${i}` },
      occurredAt: "2026-11-26T10:00:00Z",
    });
    if (d._tag === "Left") throw d.left;
    out.push(d.right);
  }
  return out;
}

const rate = (n: number, ms: number) => Math.round((n / ms) * 1000);

type Results = Record<string, number>;

/**
 * CPU seconds (user + system) used so far by the Postgres server `sql` talks to: its postmaster's
 * live children and those it reaped (Linux /proc; null elsewhere). Read before and after a run, it
 * says what the run cost Postgres whatever else the machine was doing.
 */
async function postgresCpuMs(sql: Sql): Promise<number | null> {
  const ticks = 100; // USER_HZ
  const stat = async (pid: string) => (await readFile(`/proc/${pid}/stat`, "utf8")).replace(/^.*\) /, "").split(" ");
  try {
    const [{ pid }] = await sql<[{ pid: number }]>`select pg_backend_pid() as pid`;
    const postmaster = (await stat(String(pid)))[1]!;
    const own = await stat(postmaster);
    let total = Number(own[11]) + Number(own[12]) + Number(own[13]) + Number(own[14]);
    for (const entry of await readdir("/proc")) {
      if (!/^\d+$/.test(entry)) continue;
      const f = await stat(entry).catch(() => null);
      if (f && f[1] === postmaster) total += Number(f[11]) + Number(f[12]);
    }
    return (total / ticks) * 1000;
  } catch {
    // Not Linux, or /proc unreadable: the figure is left out.
    return null;
  }
}

/** Tally: publish N commands through the normal path and wait until every one has an outcome. */
async function measureTally(sql: Sql, url: string, natsUrl: string, handles: NatsHandles, t2: Topology, results: Results): Promise<void> {
  const settings = loadSettings({
    TALLY_ENV: "bench",
    TALLY_DATABASE_URL: url,
    TALLY_NATS_URL: natsUrl,
    TALLY_PARTITIONS: String(PARTITIONS),
    TALLY_LEASE_TTL_MS: "10000",
    TALLY_METRICS_PORT: "0",
    TALLY_METRICS_HOST: "127.0.0.1",
    ...(values["batch-max"] !== undefined ? { TALLY_BATCH_MAX: values["batch-max"] } : {}),
  });
  const tally = await startTally(
    settings,
    decodeTallyConfig({ channels: { web: { locations: ["DC1", "S01"], buffer: 0 } } }),
    ["worker", "relay"],
    createLogger("bench", "warn"),
  );
  const commands = makeCommands(N, "cmd");
  // Measure the apply path, not start-up: wait until the worker holds every partition.
  while (tally.worker!.held().length < PARTITIONS) await new Promise((r) => setTimeout(r, 50));
  const pgCpuFrom = await postgresCpuMs(sql);
  const nodeCpuFrom = process.cpuUsage();
  const t = performance.now();
  await publishCommands(handles.js, t2, commands);
  const published = performance.now() - t;
  for (;;) {
    const [{ n }] = await sql<[{ n: number }]>`select count(*)::int as n from command_outcomes`;
    if (n >= N) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  const applied = performance.now() - t;
  // CPU per command while publishing and applying (this process: publisher, worker and relay alike).
  const nodeCpu = process.cpuUsage(nodeCpuFrom);
  results.nodeCpuUsPerCommand = Math.round((nodeCpu.user + nodeCpu.system) / N);
  const pgCpuTo = await postgresCpuMs(sql);
  if (pgCpuFrom !== null && pgCpuTo !== null) results.postgresCpuUsPerCommand = Math.round(((pgCpuTo - pgCpuFrom) * 1000) / N);
  results.tallyPublishCommandsPerSec = rate(N, published);
  results.tallyEndToEndCommandsPerSec = rate(N, applied);
  const [{ entries }] = await sql<[{ entries: number }]>`select count(*)::int as entries from ledger_entries`;
  results.tallyEntriesPerSec = rate(entries, applied);
  results.batches = tally.worker!.metrics.batches;
  results.meanBatch = Math.round(N / Math.max(1, tally.worker!.metrics.batches));
  // Rows of every table the apply path writes (the insert limit is in rows too).
  const [rows] = await sql<[{ outcomes: number; holds: number }]>`
    select (select count(*)::int from command_outcomes) as outcomes, (select count(*)::int from holds) as holds`;
  results.tallyRowsPerSec = rate(entries + rows!.outcomes + rows!.holds, applied);
  results.tallyCommandsPerInsertLimit = Number((results.tallyEndToEndCommandsPerSec / results.rawInsertRowsPerSec!).toFixed(3));
  const committer = tally.worker!.committer;
  results.groupCommits = committer.stats.commits;
  results.commitBusyMs = Math.round(committer.busyMs);
  results.applyWallMs = Math.round(applied);
  // Where the worker's time went (ms summed over batches), for the report.
  for (const [stage, ms] of Object.entries(tally.worker!.metrics.stageMs)) results[`stageMs_${stage}`] = Math.round(ms);
  await tally.close();
}

/** The results as a table on stdout, each Tally figure as a ratio to its limit. */
function printResults(results: Results): void {
  const lines = [
    ["measure", "per second", "ratio"],
    ["raw ledger-shaped inserts (limit)", String(results.rawInsertRowsPerSec), "1.00"],
    ["raw JetStream envelope publish (limit)", String(results.rawPublishCommandsPerSec), "1.00"],
    [
      "Tally publish (commands)",
      String(results.tallyPublishCommandsPerSec),
      `${(results.tallyPublishCommandsPerSec! / results.rawPublishCommandsPerSec!).toFixed(2)} of publish limit`,
    ],
    [
      "Tally end to end (commands applied)",
      String(results.tallyEndToEndCommandsPerSec),
      `${(results.tallyEndToEndCommandsPerSec! / results.rawPublishCommandsPerSec!).toFixed(2)} of publish limit`,
    ],
    [
      "Tally ledger entries written",
      String(results.tallyEntriesPerSec),
      `${(results.tallyEntriesPerSec! / results.rawInsertRowsPerSec!).toFixed(2)} of insert limit`,
    ],
    [
      "Tally commands applied / insert limit",
      String(results.tallyEndToEndCommandsPerSec),
      `${(results.tallyEndToEndCommandsPerSec! / results.rawInsertRowsPerSec!).toFixed(3)} of insert limit`,
    ],
  ];
  const width = lines[0]!.map((_, c) => Math.max(...lines.map((l) => l[c]!.length)));
  for (const l of lines) process.stdout.write(`${l.map((cell, c) => cell.padEnd(width[c]!)).join("  ")}\n`);
  process.stdout.write(`(${N} commands over ${SKUS} SKUs, ${PARTITIONS} partitions, mean batch ${results.meanBatch})\n`);
  const stages = Object.entries(results).filter(([k]) => k.startsWith("stageMs_"));
  process.stdout.write(`worker stages (ms summed over batches): ${stages.map(([k, v]) => `${k.slice(8)} ${v}`).join(", ")}\n`);
  process.stdout.write(
    `CPU per command: Node (publisher, worker, relay) ${results.nodeCpuUsPerCommand} µs, Postgres ${results.postgresCpuUsPerCommand ?? "?"} µs\n`,
  );
  process.stdout.write(
    `group commits: ${results.groupCommits}, in flight ${results.commitBusyMs} ms of ${results.applyWallMs} ms (${results.batches} partition batches)\n`,
  );
}

/** bench/results/<timestamp>.json: the run's options and results. */
async function writeResults(results: Results): Promise<void> {
  const dir = path.resolve("bench/results");
  await mkdir(dir, { recursive: true });
  const file = path.join(dir, `${new Date().toISOString().replace(/[:.]/g, "-")}.json`);
  await writeFile(file, JSON.stringify({ at: new Date().toISOString(), commands: N, skus: SKUS, partitions: PARTITIONS, results }, null, 2));
  process.stdout.write(`wrote ${file}\n`);
}

async function main(): Promise<void> {
  process.stderr.write(`bench: starting Postgres and nats-server…\n`);
  const [pg, nats] = await Promise.all([startPostgres(), startNats()]);
  const results: Results = {};
  try {
    const admin = postgres(pg.url(), { max: 1, onnotice: () => {} });
    await admin.unsafe("create database bench");
    await admin.end();
    const url = pg.url("bench");
    const sql = connectPostgres(url, { max: 4 });
    await migrate(sql, "bench");

    // The limits, measured as `npm run bench` measures them (bench/limits.ts).
    results.rawInsertRowsPerSec = await measureInsert(sql);
    const t2 = topology("bench", PARTITIONS);
    const nc = await connectNats(nats.url, "bench");
    const handles = await ensureTopology(nc, t2, { duplicateWindowMs: 120_000, leaseTtlMs: 10_000 });
    results.rawPublishCommandsPerSec = (await measureNats(handles, N)).publish;

    await measureTally(sql, url, nats.url, handles, t2, results);
    await nc.close();
    await sql.end();
  } finally {
    await Promise.allSettled([pg.destroy(), nats.destroy()]);
  }
  printResults(results);
  await writeResults(results);
}

await main();
