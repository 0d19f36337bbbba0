/**
 * What idle partitions cost: one worker process (`tally start --roles worker`) holding N partitions
 * with no traffic, for each N given, one after the other against the same Postgres and nats-server.
 * Per second of idling: the worker's CPU, nats-server's CPU, Postgres' CPU (every backend) and
 * transactions (pg_stat_database xact_commit), lease writes (the leases bucket's stream), and the
 * JetStream consumers and Postgres connections held. The machine is shared: compare the rows of one
 * run, not runs.
 *
 *   npm run bench:idle -- [--partitions 16,64,256] [--seconds 20] [--lease-ttl 10000]
 */
import { spawn, type ChildProcess } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import postgres from "postgres";
import { startNats, startPostgres } from "../src/app/devStack/index.ts";
import { migrate } from "../ledger/index.ts";
import { connectPostgres } from "../src/platform/index.ts";
import { connectNats, ensureTopology, topology } from "../src/wire/index.ts";

const { values } = parseArgs({
  options: {
    partitions: { type: "string", default: "16,64,256" },
    seconds: { type: "string", default: "20" },
    "lease-ttl": { type: "string", default: "10000" },
  },
});
const COUNTS = values.partitions.split(",").map(Number);
const SECONDS = Number(values.seconds);
const LEASE_TTL = Number(values["lease-ttl"]);
const BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../bin/tally.js");
const TICK_MS = 1000 / 100; // USER_HZ

/** CPU milliseconds (user + system) a process has used so far (0 once it is gone). */
function cpuMs(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) * TICK_MS;
  } catch {
    return 0;
  }
}

/** Pids of live processes matching `test` on (pid, parent pid, command line). */
function processes(test: (pid: number, ppid: number, cmdline: string) => boolean): Array<number> {
  const out: Array<number> = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, "utf8").replaceAll("\0", " ");
      if (test(Number(entry), ppid, cmdline)) out.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Row {
  partitions: number;
  secondsToHoldAll: number;
  workerCpuMsPerSec: number;
  natsCpuMsPerSec: number;
  postgresCpuMsPerSec: number;
  pgCommitsPerSec: number;
  leaseWritesPerSec: number;
  consumers: number;
  pgConnections: number;
}

interface Stack {
  readonly pgUrl: (database?: string) => string;
  readonly natsUrl: string;
  readonly natsPid: number;
  readonly postgresCpu: () => number;
  readonly admin: postgres.Sql;
  readonly nc: Awaited<ReturnType<typeof connectNats>>;
}

/** A worker process holding `n` partitions of a fresh environment, idle for SECONDS: what it costs. */
async function measureIdle(stack: Stack, n: number, children: Array<ChildProcess>): Promise<Row> {
  const env = `idle${n}_${children.length}`;
  await stack.admin.unsafe(`create database ${env}`);
  const sql = connectPostgres(stack.pgUrl(env), { max: 2 });
  await migrate(sql, env);
  const t = topology(env, n);
  const handles = await ensureTopology(stack.nc, t, { duplicateWindowMs: 120_000, leaseTtlMs: LEASE_TTL });
  const child = spawn(process.execPath, [BIN, "start", "--roles", "worker"], {
    env: {
      ...process.env,
      TALLY_ENV: env,
      TALLY_DATABASE_URL: stack.pgUrl(env),
      TALLY_NATS_URL: stack.natsUrl,
      TALLY_PARTITIONS: String(n),
      TALLY_LEASE_TTL_MS: String(LEASE_TTL),
      TALLY_METRICS_PORT: "0",
      TALLY_METRICS_HOST: "127.0.0.1",
      TALLY_LOG_LEVEL: "warn",
    },
    stdio: ["ignore", "inherit", "inherit"],
  });
  children.push(child);
  const started = performance.now();
  const consumers = async () => {
    let c = 0;
    for await (const _ of handles.jsm.consumers.list(t.commandsStream)) c++;
    return c;
  };
  while ((await consumers()) < n) {
    if (child.exitCode !== null) throw new Error(`the worker for ${n} partitions exited (${child.exitCode})`);
    await sleep(200);
  }
  const secondsToHoldAll = (performance.now() - started) / 1000;
  await sleep(3000); // settle: the last partitions' first reads
  const commits = async () => Number((await sql<[{ n: string }]>`select xact_commit::text as n from pg_stat_database where datname = ${env}`)[0].n);
  const sample = async () => ({
    worker: cpuMs(child.pid!),
    nats: cpuMs(stack.natsPid),
    pg: stack.postgresCpu(),
    commits: await commits(),
    leases: (await handles.jsm.streams.info(t.leasesBucketStream)).state.last_seq,
    at: performance.now(),
  });
  const before = await sample();
  await sleep(SECONDS * 1000);
  const after = await sample();
  const s = (after.at - before.at) / 1000;
  const perSec = (a: number, b: number) => Number(((b - a) / s).toFixed(1));
  const [{ connections }] = await sql<[{ connections: number }]>`
    select count(*)::int as connections from pg_stat_activity where datname = ${env} and application_name like 'tally-%'`;
  const row: Row = {
    partitions: n,
    secondsToHoldAll: Number(secondsToHoldAll.toFixed(1)),
    workerCpuMsPerSec: perSec(before.worker, after.worker),
    natsCpuMsPerSec: perSec(before.nats, after.nats),
    postgresCpuMsPerSec: perSec(before.pg, after.pg),
    // Less this script's own read of the counter in the window.
    pgCommitsPerSec: perSec(before.commits + 1, after.commits),
    leaseWritesPerSec: perSec(before.leases, after.leases),
    consumers: await consumers(),
    pgConnections: connections,
  };
  child.kill("SIGTERM");
  await new Promise((r) => child.once("exit", r));
  await sql.end();
  return row;
}

function printRows(rows: ReadonlyArray<Row>): void {
  const header = Object.keys(rows[0]!) as Array<keyof Row>;
  const width = header.map((h) => Math.max(h.length, ...rows.map((r) => String(r[h]).length)));
  process.stdout.write(`${header.map((h, i) => h.padEnd(width[i]!)).join("  ")}\n`);
  for (const r of rows) process.stdout.write(`${header.map((h, i) => String(r[h]).padEnd(width[i]!)).join("  ")}\n`);
  process.stdout.write(`(one worker, no traffic, ${SECONDS} s per row, TALLY_LEASE_TTL_MS ${LEASE_TTL}, ${new Date().toISOString()})\n`);
}

async function main(): Promise<void> {
  process.stderr.write("bench: starting Postgres and nats-server…\n");
  const [pg, nats] = await Promise.all([startPostgres(), startNats()]);
  const children: Array<ChildProcess> = [];
  const rows: Array<Row> = [];
  try {
    const postmaster = Number(readFileSync(path.join(pg.dataDir, "postmaster.pid"), "utf8").split("\n")[0]);
    const stack: Stack = {
      pgUrl: (db) => pg.url(db),
      natsUrl: nats.url,
      natsPid: processes((_, __, cmd) => cmd.includes("nats-server") && cmd.includes(` -p ${nats.port} `))[0]!,
      postgresCpu: () => processes((pid, ppid) => pid === postmaster || ppid === postmaster).reduce((sum, p) => sum + cpuMs(p), 0),
      admin: postgres(pg.url(), { max: 1, onnotice: () => {} }),
      nc: await connectNats(nats.url, "bench-idle"),
    };
    for (const n of COUNTS) {
      rows.push(await measureIdle(stack, n, children));
      process.stderr.write(`${JSON.stringify(rows.at(-1))}\n`);
    }
    await stack.nc.close();
    await stack.admin.end();
  } finally {
    for (const c of children) if (c.exitCode === null) c.kill("SIGKILL");
    await Promise.allSettled([pg.destroy(), nats.destroy()]);
  }
  printRows(rows);
}

await main();
