import { spawn } from "node:child_process";
import { createReadStream } from "node:fs";
import { constants as osConstants } from "node:os";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { Cause, Effect, Exit, Fiber } from "effect";
import { assertEnvironment, migrate as applyMigrations, runtimeGrants } from "../../../ledger/index.ts";
import { submit as submitLines } from "../../ingest/index.ts";
import { createLogger, loadSettings, loadTallyConfig, requireDatabaseUrl, type Logger } from "../../platform/index.ts";
import { ensureTopology, topology } from "../../wire/index.ts";
import { fromPromise, natsResource, postgresResource, ROLES, type Role, runEffect, startRoles } from "../roles.ts";
import { stopWithParent, workerProcess } from "../workerProcess.ts";
import { CommandError, EXIT, UsageError, withPostgres } from "./common.ts";

/** The runtime role's GRANT statements; a role name that is not one is a usage error. */
function grantsFor(role: string): ReadonlyArray<string> {
  try {
    return runtimeGrants(role);
  } catch (error) {
    throw new UsageError(`--runtime-role: ${(error as Error).message}`);
  }
}

/** `tally migrate [--runtime-role r] [--print-grants]`: pending migrations, TALLY_ENV recorded, runtime privileges granted. */
export async function migrate(opts: { readonly printGrants?: boolean; readonly runtimeRole?: string }): Promise<number> {
  if (opts.printGrants) {
    // Printing needs no connection: a DBA runs it anywhere, and the statements as the owner.
    const role = opts.runtimeRole ?? "tally_runtime";
    process.stdout.write(
      `-- Run as the owner of Tally's tables (the role that runs tally migrate), after every migration.\n` +
        `-- ${role} may read and write Tally's working tables but only read and append to ledger_entries:\n` +
        `-- no UPDATE, DELETE or TRUNCATE there, and as it owns nothing, no ALTER or DROP of the trigger.\n` +
        `${grantsFor(role).join("\n")}\n`,
    );
    return EXIT.ok;
  }
  const settings = loadSettings();
  const role = opts.runtimeRole;
  const grants = role !== undefined ? grantsFor(role) : [];
  return withPostgres(requireDatabaseUrl(settings), "tally-migrate", 1, async (sql) => {
    const result = await applyMigrations(sql, settings.env);
    process.stdout.write(
      result.applied.length === 0
        ? `migrate: up to date (environment ${result.environment})\n`
        : `migrate: applied ${result.applied.join(", ")} (environment ${result.environment})\n`,
    );
    if (role !== undefined) {
      await sql.begin(async (tx) => {
        for (const statement of grants) await tx.unsafe(statement);
      });
      process.stdout.write(`migrate: granted the runtime privileges to ${role}\n`);
    }
    return EXIT.ok;
  });
}

/**
 * The stop is bounded whatever the dependencies do: closing the scope finishes the batches in
 * flight, drains HTTP and releases leases when it can; with nats-server or Postgres down those
 * steps may wait on retries. Nothing is left half-written by exiting: a ledger batch is one
 * transaction, CDC acknowledges a source position and the API answers 2xx only after JetStream's
 * PubAck, and the outbox keeps what the relay has not published.
 */
function stopOnSignals(log: Logger, boundMs: number, interrupt: () => void): void {
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) {
      log.warn({ signal }, "second signal: exiting now");
      process.exit(1);
    }
    stopping = true;
    log.info({ signal, boundMs }, "shutting down");
    setTimeout(() => {
      log.error({ boundMs }, "shutdown did not finish within TALLY_SHUTDOWN_TIMEOUT_MS (a dependency is down?); exiting now");
      process.exit(1);
    }, boundMs).unref();
    interrupt();
  };
  process.on("SIGINT", () => stop("SIGINT"));
  process.on("SIGTERM", () => stop("SIGTERM"));
}

/** `tally start [--roles …]`: runs the roles until SIGINT/SIGTERM. */
export async function start(opts: { readonly roles: string }): Promise<number> {
  const roles = opts.roles
    .split(",")
    .map((r) => r.trim())
    .filter(Boolean);
  for (const r of roles)
    if (!ROLES.includes(r as Role)) throw new UsageError(`--roles: unknown role ${JSON.stringify(r)} (expected ${ROLES.join(", ")})`);
  const settings = loadSettings();
  const config = await loadTallyConfig(settings.configFile);
  const log = createLogger("tally");
  stopWithParent();
  // The API and the worker never share an event loop (unless TALLY_WORKER_PROCESS=inline): the worker runs in a child process.
  const separate = roles.includes("api") && roles.includes("worker") && settings.workerProcess === "separate";
  const here = separate ? roles.filter((r) => r !== "worker") : roles;
  const program = Effect.scoped(
    Effect.gen(function* () {
      const child = separate ? yield* workerProcess(log) : null;
      yield* startRoles(settings, config, here as Array<Role>, log, child ? { workerMetrics: child.metrics } : {});
      log.info({ env: settings.env, roles, ...(child ? { workerPid: child.pid } : {}) }, "tally started");
      yield* child ? child.exited : Effect.never;
    }),
  );
  const fiber = Effect.runFork(program);
  stopOnSignals(log, settings.shutdownTimeoutMs, () => void Effect.runPromise(Fiber.interrupt(fiber)));
  const exit = await Effect.runPromise(Fiber.await(fiber));
  if (Exit.isFailure(exit) && !Exit.isInterrupted(exit)) throw Cause.squash(exit.cause);
  log.info("stopped");
  // Everything is released; a client library's stray timer (a reconnect to a dead server) must not
  // keep the process alive.
  setTimeout(() => process.exit(process.exitCode ?? 0), 0).unref();
  return EXIT.ok;
}

/** `tally submit <file|->`: publishes canonical commands (one JSON per line); exit 4 when lines were invalid, 1 when outcomes are missing. */
export async function submit(file: string, opts: { readonly wait?: boolean; readonly timeout: number }): Promise<number> {
  const settings = loadSettings();
  const t = topology(settings.env, settings.partitions);
  const wait = opts.wait === true;
  const report = await runEffect(
    Effect.scoped(
      Effect.gen(function* () {
        const sql = settings.databaseUrl ? yield* postgresResource(settings.databaseUrl, "tally-submit") : undefined;
        if (sql) yield* fromPromise(() => assertEnvironment(sql, settings.env));
        if (wait && !sql) throw new CommandError("submit --wait needs TALLY_DATABASE_URL to read outcomes");
        const nc = yield* natsResource(settings.natsUrl, "tally-submit", settings.natsAccess);
        const nats = yield* fromPromise(() =>
          ensureTopology(nc, t, { duplicateWindowMs: settings.duplicateWindowMs, leaseTtlMs: settings.leaseTtlMs, retention: settings.retention }),
        );
        const lines = createInterface({ input: file === "-" ? process.stdin : createReadStream(file), crlfDelay: Infinity });
        return yield* fromPromise(() =>
          submitLines(lines, {
            js: nats.js,
            nc,
            topology: t,
            ...(sql ? { sql } : {}),
            wait,
            timeoutMs: opts.timeout * 1000,
            onInvalid: (line, message) => process.stderr.write(`line ${line}: ${message} (dead-lettered)\n`),
          }),
        );
      }),
    ),
  );
  const parts = [`published ${report.published}`, `duplicate ${report.duplicate}`, `invalid ${report.invalid}`];
  if (wait) {
    parts.unshift(`accepted ${report.accepted}`, `rejected ${report.rejected}`);
    if (report.pending > 0) parts.push(`pending ${report.pending}`);
  }
  process.stdout.write(`${parts.join("  ")}\n`);
  for (const [reason, n] of Object.entries(report.rejectedByReason)) process.stdout.write(`  rejected ${reason}: ${n}\n`);
  if (report.pending > 0) {
    process.stderr.write(`submit: ${report.pending} commands had no outcome after ${opts.timeout}s (is a worker running?)\n`);
    return EXIT.failure;
  }
  return report.invalid > 0 ? EXIT.invalidInput : EXIT.ok;
}

/** `tally demo init`: the reference ERP and shop schemas, seed data and CDC enabled, in TALLY_SOURCE_{ERP,SHOP}_URL. */
export async function demoInit(): Promise<number> {
  const settings = loadSettings();
  const { demoInit: init } = await import("../../../cdc/demo/index.ts");
  const erp = process.env.TALLY_SOURCE_ERP_URL;
  const shop = process.env.TALLY_SOURCE_SHOP_URL;
  if (!erp || !shop)
    throw new CommandError(
      "demo init: set TALLY_SOURCE_ERP_URL and TALLY_SOURCE_SHOP_URL to the (existing, empty) databases to create the demo ERP and shop in",
    );
  const config = await loadTallyConfig(settings.configFile);
  const seeded = await init(config, settings.env, erp, shop);
  process.stdout.write(`demo init: ERP and shop schemas ready, CDC enabled; seeded ${JSON.stringify(seeded)}\n`);
  return EXIT.ok;
}

/** `tally token new`: prints a fresh token once (give it to the client) and the entry to configure (only its hash). */
export async function tokenNew(id: string, opts: { readonly scopes: string; readonly channel?: string }): Promise<number> {
  const { SCOPES, decodeTokens, newToken } = await import("../../http/index.ts");
  const scopes = opts.scopes
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
  if (scopes.length === 0) throw new UsageError(`--scopes: give one or more of ${SCOPES.join(", ")}`);
  const { token, entry } = newToken(id, scopes as Array<(typeof SCOPES)[number]>, opts.channel);
  try {
    decodeTokens(JSON.stringify([entry]), "--scopes");
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  process.stdout.write(
    `token (give it to the client; it is not stored anywhere):\n  ${token}\nentry for TALLY_API_TOKENS / TALLY_API_TOKENS_FILE:\n  ${JSON.stringify(entry)}\n`,
  );
  return EXIT.ok;
}

/**
 * `tally bench`: the load benchmark runs as a child process (`node --import tsx bench/bench.ts <args>`), so the
 * shipped CLI never imports it; its output goes straight to this terminal and its exit code is the CLI's.
 */
export function bench(args: ReadonlyArray<string>): Promise<number> {
  const script = fileURLToPath(new URL("../../../bench/bench.ts", import.meta.url));
  const child = spawn(process.execPath, ["--import", import.meta.resolve("tsx"), script, ...args], { stdio: "inherit" });
  // Ctrl-C reaches the bench too (same process group): let it stop its servers and report, then exit with it.
  const ignore = () => {};
  const forward = (signal: NodeJS.Signals) => child.kill(signal);
  process.on("SIGINT", ignore).on("SIGTERM", forward);
  return new Promise((resolve, reject) => {
    child.once("error", reject);
    child.once("exit", (code, signal) => {
      process.off("SIGINT", ignore).off("SIGTERM", forward);
      resolve(code ?? 128 + (signal ? (osConstants.signals[signal] ?? 0) : 0));
    });
  });
}
