import { spawn } from "node:child_process";
import { createReadStream } from "node:fs";
import { constants as osConstants } from "node:os";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import { Cause, Effect, Exit, Fiber } from "effect";
import { chainHeads, checkAnchors, migrate, runtimeGrants, verifyLedger, type Anchor } from "../../ledger/index.ts";
import { appendAnchorFile, publishAnchors, readAnchorFile, readNatsAnchors } from "../channels/index.ts";
import { ROLES, type Role, fromPromise, runEffect, startRoles, natsResource, postgresResource } from "./roles.ts";
import { loadSettings, requireDatabaseUrl, type Settings, sleep } from "../platform/index.ts";
import type { TallyConfig } from "../platform/index.ts";
import { assertDriverPatches, knownStores, loadTallyConfig } from "../platform/index.ts";
import { stopWithParent, workerProcess } from "./workerProcess.ts";
import type { Sql } from "../platform/index.ts";
import { devMain } from "./dev.ts";
import { createLogger } from "../platform/index.ts";
import { ensureTopology } from "../wire/index.ts";
import { maskSecrets } from "../platform/index.ts";
import { COMPUTED_DEFAULTS, DEFAULTS as D } from "../platform/index.ts";
import { submit } from "../ingest/index.ts";
import { topology } from "../wire/index.ts";
import { usableWebhookTargets } from "../channels/index.ts";
import { assertEnvironment } from "../../ledger/index.ts";

const USAGE = `tally — real-time inventory ledger

usage:
  tally migrate [--runtime-role <role>]  apply pending migrations; record TALLY_ENV in the database; grant
                                         the runtime privileges (append-only ledger) to <role>
  tally migrate --print-grants [--runtime-role <role>]
                                         print those GRANT statements for a DBA (default role tally_runtime)
  tally start [--roles worker,relay,cdc,api]
                                         run roles until SIGINT/SIGTERM (default: worker,relay,cdc)
  tally submit <file.ndjson|-> [--wait] [--timeout <seconds>]
                                         publish canonical commands (one JSON per line)
  tally ledger verify [--anchors] [--anchors-file <f>]
                                         recompute every hash chain and balance in one snapshot; with
                                         --anchors, compare them with the heads published to NATS (or
                                         kept in files). Exit 0 ok, 1 mismatch found, 2 usage or
                                         connection error
  tally ledger anchor [--file <f>]       publish every SKU's chain head now (or append them to a file)
  tally ledger export [--cursor <c>] [--from <t>] [--to <t>] [--format csv|ndjson] [--out <file>]
                                         stream the entries committed after the cursor (RFC 4180 CSV or
                                         NDJSON); the summary, with the next cursor, as one JSON line on
                                         stderr and in <file>.summary.json
  tally token new <id> --scopes <s,…> [--channel <c>]
                                         a fresh API token, and the hashed entry to configure for it
  tally dlq list [--origin <o>] [--json] dead letters (CDC sources, submit, commands)
  tally dlq list --stuck [--json]        partitions not advancing: the message each is stuck at, and why
  tally source check|enable|status|drop|resnapshot <name>
                                         CDC sources (see tally source)
  tally demo init                        reference ERP + shop schemas and data in TALLY_SOURCE_{ERP,SHOP}_URL
  tally dev [--fresh] [--dir .tally] [--no-demo] [--rate n] [--skus n]
                                         local Postgres + nats-server, demo ERP and shop, every role,
                                         demo traffic and the dashboard
  tally bench [--scenario steady|flash-sale|catalog-1m] [--duration s] [--rate n]
                                         the load benchmark (own servers; JSON + HTML report in bench/results)
  tally dlq replay <id…|--all>           map / decode again and publish; removes the letter on success
  tally dlq discard <id…|--all>          remove dead letters for good
  tally dlq skip <partition> [--seq <n>] dead-letter the message a stuck partition is stuck at (or
                                         message n) and let the partition move on; replay it after a fix

settings (environment): TALLY_ENV (default ${D.TALLY_ENV}), TALLY_DATABASE_URL, TALLY_NATS_URL,
  TALLY_PARTITIONS (default ${D.TALLY_PARTITIONS}), TALLY_DUPLICATE_WINDOW_SECONDS (default ${D.TALLY_DUPLICATE_WINDOW_SECONDS}),
  TALLY_LEASE_TTL_MS (default ${D.TALLY_LEASE_TTL_MS}), TALLY_MAX_ACTORS (default ${D.TALLY_MAX_ACTORS}), TALLY_BATCH_MAX (default ${D.TALLY_BATCH_MAX}),
  TALLY_APPLY_CONCURRENCY (partitions applying at once per worker, default the ${COMPUTED_DEFAULTS.TALLY_APPLY_CONCURRENCY}),
  TALLY_CONFIG (default ${D.TALLY_CONFIG}), TALLY_LOG_LEVEL, TALLY_HTTP_HOST (default ${D.TALLY_HTTP_HOST}),
  TALLY_HTTP_PORT (default ${D.TALLY_HTTP_PORT}), TALLY_API_TOKENS / TALLY_API_TOKENS_FILE (hashed tokens, JSON),
  TALLY_API_RATE_LIMIT (write requests per minute per token, default ${D.TALLY_API_RATE_LIMIT}),
  TALLY_REQUEST_TIMEOUT_MS (default ${D.TALLY_REQUEST_TIMEOUT_MS}), TALLY_WORKER_PROCESS (default ${D.TALLY_WORKER_PROCESS}),
  TALLY_SHUTDOWN_TIMEOUT_MS (longest stop after SIGTERM/SIGINT, default ${D.TALLY_SHUTDOWN_TIMEOUT_MS}),
  NATS credentials: TALLY_NATS_USER + TALLY_NATS_PASSWORD (or nats://user:pass@host), TALLY_NATS_TOKEN,
  TALLY_NATS_NKEY_SEED_FILE or TALLY_NATS_CREDS_FILE; NATS TLS: TALLY_NATS_CA_FILE, TALLY_NATS_CERT_FILE +
  TALLY_NATS_KEY_FILE; database TLS in the URL (?sslmode=verify-full&sslrootcert=<ca file>);
  TALLY_ANCHOR_INTERVAL_MS (chain heads published by the relay, default ${D.TALLY_ANCHOR_INTERVAL_MS})
`;

/** An error for the user: printed as one line, exit code 1 (or `code`). */
class UsageError extends Error {
  override readonly name = "UsageError";
  constructor(
    message: string,
    readonly code = 1,
  ) {
    super(message);
  }
}

/** The usage lines of one command (its entries in USAGE), or null for an unknown command. */
function commandUsage(command: string): string | null {
  const blocks: Array<Array<string>> = [];
  for (const line of USAGE.split("\n")) {
    if (line.startsWith("  tally ")) blocks.push([line]);
    else if (line.startsWith("      ") && blocks.length > 0 && line.trim() !== "") blocks.at(-1)!.push(line);
    else if (!line.startsWith("      ")) blocks.push([]);
  }
  const mine = blocks.filter((b) => b[0]?.startsWith(`  tally ${command} `) || b[0] === `  tally ${command}`);
  if (mine.length === 0) return null;
  return `usage:\n${mine.map((b) => b.join("\n")).join("\n")}\n\nsettings (environment) and every command: tally help\n`;
}

/** `tally --version`: the package's version, read from its package.json. */
async function version(): Promise<string> {
  const { readFile } = await import("node:fs/promises");
  const pkg = JSON.parse(await readFile(new URL("../../package.json", import.meta.url), "utf8")) as { version: string };
  return pkg.version;
}

async function main(argv: ReadonlyArray<string>): Promise<number> {
  const [command, ...rest] = argv;
  if (command === "--version" || command === "-V" || command === "version") {
    process.stdout.write(`tally ${await version()}\n`);
    return 0;
  }
  // `--help` on a command prints its usage and does nothing else (never a migration, never a verify run).
  if (command !== undefined && (rest.includes("--help") || rest.includes("-h"))) {
    const sub = rest[0] !== undefined && !rest[0].startsWith("-") ? commandUsage(`${command} ${rest[0]}`) : null;
    const usage = sub ?? commandUsage(command);
    if (usage === null) throw new UsageError(`unknown command ${JSON.stringify(command)}\n\n${USAGE}`);
    process.stdout.write(usage);
    return 0;
  }
  // Refuses to run with a driver whose fix (patches/) was not applied, e.g. after `npm i --ignore-scripts`.
  assertDriverPatches();
  switch (command) {
    case "dev":
      return devMain(rest);
    case "migrate":
      return cmdMigrate(rest);
    case "start":
      return cmdStart(loadSettings(), rest);
    case "submit":
      return cmdSubmit(loadSettings(), rest);
    case "ledger": {
      const [sub] = rest;
      if (sub === "verify") return cmdVerify(rest.slice(1));
      if (sub === "export") return cmdExport(loadSettings(), rest.slice(1));
      if (sub === "anchor") return cmdAnchor(loadSettings(), rest.slice(1));
      throw new UsageError(`ledger: unknown subcommand ${JSON.stringify(sub ?? "")} (expected verify, export or anchor)`);
    }
    case "token":
      return cmdToken(rest);
    case "dlq":
      return cmdDlq(loadSettings(), rest);
    case "demo": {
      const [sub] = rest;
      if (sub !== "init") throw new UsageError(`demo: unknown subcommand ${JSON.stringify(sub ?? "")} (expected init)`);
      return cmdDemoInit(loadSettings());
    }
    case "source":
      return cmdSource(loadSettings(), rest);
    case "bench":
      return cmdBench(rest);
    case undefined:
    case "help":
    case "--help":
    case "-h":
      process.stdout.write(USAGE);
      return 0;
    default:
      throw new UsageError(`unknown command ${JSON.stringify(command)}\n\n${USAGE}`);
  }
}

async function cmdMigrate(args: ReadonlyArray<string>): Promise<number> {
  const { values } = parseArgs({
    args: [...args],
    options: { "print-grants": { type: "boolean", default: false }, "runtime-role": { type: "string" } },
  });
  if (values["print-grants"]) {
    // Printing needs no connection: a DBA runs it anywhere, and the statements as the owner.
    const role = values["runtime-role"] ?? "tally_runtime";
    process.stdout.write(
      `-- Run as the owner of Tally's tables (the role that runs tally migrate), after every migration.\n` +
        `-- ${role} may read and write Tally's working tables but only read and append to ledger_entries:\n` +
        `-- no UPDATE, DELETE or TRUNCATE there, and as it owns nothing, no ALTER or DROP of the trigger.\n` +
        `${runtimeGrants(role).join("\n")}\n`,
    );
    return 0;
  }
  const settings = loadSettings();
  return withPostgres(requireDatabaseUrl(settings), "tally-migrate", 1, async (sql) => {
    const result = await migrate(sql, settings.env);
    process.stdout.write(
      result.applied.length === 0
        ? `migrate: up to date (environment ${result.environment})\n`
        : `migrate: applied ${result.applied.join(", ")} (environment ${result.environment})\n`,
    );
    const role = values["runtime-role"];
    if (role !== undefined) {
      await sql.begin(async (tx) => {
        for (const statement of runtimeGrants(role)) await tx.unsafe(statement);
      });
      process.stdout.write(`migrate: granted the runtime privileges to ${role}\n`);
    }
    return 0;
  });
}

async function cmdStart(settings: Settings, args: ReadonlyArray<string>): Promise<number> {
  const { values } = parseArgs({ args: [...args], options: { roles: { type: "string", default: "worker,relay,cdc" } } });
  const roles = values
    .roles!.split(",")
    .map((r) => r.trim())
    .filter(Boolean);
  for (const r of roles)
    if (!ROLES.includes(r as Role)) throw new UsageError(`--roles: unknown role ${JSON.stringify(r)} (expected ${ROLES.join(", ")})`);
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
  const boundMs = settings.shutdownTimeoutMs;
  let stopping = false;
  // The stop is bounded whatever the dependencies do: closing the scope finishes the batches in
  // flight, drains HTTP and releases leases when it can; with nats-server or Postgres down those
  // steps may wait on retries. Nothing is left half-written by exiting: a ledger batch is one
  // transaction, CDC acknowledges a source position and the API answers 2xx only after JetStream's
  // PubAck, and the outbox keeps what the relay has not published.
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
    void Effect.runPromise(Fiber.interrupt(fiber));
  };
  process.on("SIGINT", () => stop("SIGINT"));
  process.on("SIGTERM", () => stop("SIGTERM"));
  const exit = await Effect.runPromise(Fiber.await(fiber));
  if (Exit.isFailure(exit) && !Exit.isInterrupted(exit)) throw Cause.squash(exit.cause);
  log.info("stopped");
  // Everything is released; a client library's stray timer (a reconnect to a dead server) must not
  // keep the process alive.
  setTimeout(() => process.exit(process.exitCode ?? 0), 0).unref();
  return 0;
}

async function cmdSubmit(settings: Settings, args: ReadonlyArray<string>): Promise<number> {
  const { values, positionals } = parseArgs({
    args: [...args],
    allowPositionals: true,
    options: { wait: { type: "boolean", default: false }, timeout: { type: "string", default: "120" } },
  });
  const file = positionals[0];
  if (file === undefined) throw new UsageError("submit: give a file of commands (one JSON per line), or - for standard input");
  const timeout = Number(values.timeout);
  if (!Number.isFinite(timeout) || timeout <= 0) throw new UsageError(`--timeout: expected seconds > 0, got ${values.timeout}`);
  const t = topology(settings.env, settings.partitions);
  const report = await runEffect(
    Effect.scoped(
      Effect.gen(function* () {
        const sql = settings.databaseUrl ? yield* postgresResource(settings.databaseUrl, "tally-submit") : undefined;
        if (sql) yield* fromPromise(() => assertEnvironment(sql, settings.env));
        if (values.wait && !sql) throw new UsageError("submit --wait needs TALLY_DATABASE_URL to read outcomes");
        const nc = yield* natsResource(settings.natsUrl, "tally-submit", settings.natsAccess);
        const nats = yield* fromPromise(() =>
          ensureTopology(nc, t, { duplicateWindowMs: settings.duplicateWindowMs, leaseTtlMs: settings.leaseTtlMs }),
        );
        const input = file === "-" ? process.stdin : createReadStream(file);
        const lines = createInterface({ input, crlfDelay: Infinity });
        return yield* fromPromise(() =>
          submit(lines, {
            js: nats.js,
            nc,
            topology: t,
            ...(sql ? { sql } : {}),
            wait: values.wait!,
            timeoutMs: timeout * 1000,
            onInvalid: (line, message) => process.stderr.write(`line ${line}: ${message} (dead-lettered)\n`),
          }),
        );
      }),
    ),
  );
  const parts = [`published ${report.published}`, `duplicate ${report.duplicate}`, `invalid ${report.invalid}`];
  if (values.wait) {
    parts.unshift(`accepted ${report.accepted}`, `rejected ${report.rejected}`);
    if (report.pending > 0) parts.push(`pending ${report.pending}`);
  }
  process.stdout.write(`${parts.join("  ")}\n`);
  for (const [reason, n] of Object.entries(report.rejectedByReason)) process.stdout.write(`  rejected ${reason}: ${n}\n`);
  if (report.pending > 0) {
    process.stderr.write(`submit: ${report.pending} commands had no outcome after ${timeout}s (is a worker running?)\n`);
    return 1;
  }
  return report.invalid > 0 ? 2 : 0;
}

/** `tally demo init`: the reference ERP and shop schemas, seed data and CDC enabled, in TALLY_SOURCE_{ERP,SHOP}_URL. */
async function cmdDemoInit(settings: Settings): Promise<number> {
  const { demoInit } = await import("../../cdc/demo/index.ts");
  const erp = process.env.TALLY_SOURCE_ERP_URL;
  const shop = process.env.TALLY_SOURCE_SHOP_URL;
  if (!erp || !shop)
    throw new UsageError(
      "demo init: set TALLY_SOURCE_ERP_URL and TALLY_SOURCE_SHOP_URL to the (existing, empty) databases to create the demo ERP and shop in",
    );
  const config = await loadTallyConfig(settings.configFile);
  const seeded = await demoInit(config, settings.env, erp, shop);
  process.stdout.write(`demo init: ERP and shop schemas ready, CDC enabled; seeded ${JSON.stringify(seeded)}\n`);
  return 0;
}

/** `tally dlq list|replay|discard`: dead letters of every origin (CDC sources, submit, commands, POS). */
async function cmdDlq(settings: Settings, args: ReadonlyArray<string>): Promise<number> {
  const { values, positionals } = parseArgs({
    args: [...args],
    allowPositionals: true,
    options: {
      origin: { type: "string" },
      all: { type: "boolean", default: false },
      json: { type: "boolean", default: false },
      stuck: { type: "boolean", default: false },
      seq: { type: "string" },
    },
  });
  const [sub, ...ids] = positionals;
  if (sub !== "list" && sub !== "replay" && sub !== "discard" && sub !== "skip")
    throw new UsageError(`dlq: expected list, replay <id…|--all>, discard <id…|--all> or skip <partition>, got ${JSON.stringify(sub ?? "")}`);
  if (sub === "skip" || (sub === "list" && values.stuck)) return cmdStuck(settings, sub, ids, values);
  const dlq = await import("../operations/index.ts");
  const { configuredSources } = await import("../../cdc/index.ts");
  const config = await loadTallyConfig(settings.configFile);
  const t = topology(settings.env, settings.partitions);
  return runEffect(
    Effect.scoped(
      Effect.gen(function* () {
        const sql = yield* ledgerResource(settings, "tally-dlq");
        const nc = yield* natsResource(settings.natsUrl, "tally-dlq", settings.natsAccess);
        const nats = yield* fromPromise(() =>
          ensureTopology(nc, t, { duplicateWindowMs: settings.duplicateWindowMs, leaseTtlMs: settings.leaseTtlMs }),
        );
        return yield* fromPromise(async () => {
          const letters = await dlq.listDeadLetters(nats, t, values.origin);
          if (sub === "list") {
            if (values.json) process.stdout.write(`${JSON.stringify(letters, null, 2)}\n`);
            else {
              for (const l of letters) process.stdout.write(`${l.id}\t${l.at}\t${l.origin}\t${l.reason}\n`);
              process.stdout.write(`${letters.length} dead letters\n`);
            }
            return 0;
          }
          const wanted = values.all ? letters : letters.filter((l) => ids.includes(String(l.id)));
          const missing = values.all ? [] : ids.filter((id) => !letters.some((l) => String(l.id) === id));
          for (const id of missing) process.stderr.write(`dlq: no dead letter ${id}\n`);
          if (wanted.length === 0 && missing.length === 0) throw new UsageError(`dlq ${sub}: give dead letter ids or --all`);
          let failed = missing.length;
          if (sub === "discard") {
            for (const l of wanted) {
              await dlq.discardDeadLetter(nats, t, l.id);
              process.stdout.write(`${l.id}\tdiscarded\t${l.reason}\n`);
            }
            return failed > 0 ? 1 : 0;
          }
          const sources = new Map(configuredSources(config, settings.env).map((s) => [s.name, s] as const));
          const { PosIngest } = await import("../ingest/index.ts");
          const pos = new PosIngest({ sql, nats, topology: t, stores: knownStores(config), log: createLogger("tally-dlq", "warn") });
          for (const l of wanted) {
            const r = await dlq.replayDeadLetter({ sql, nats, topology: t, sources, pos, webhooks: usableWebhookTargets(config) }, l);
            if (r.ok) process.stdout.write(`${l.id}\treplayed\t${r.commands} commands\n`);
            else {
              failed++;
              process.stdout.write(`${l.id}\tstill failing\t${r.reason}\n`);
            }
          }
          return failed > 0 ? 1 : 0;
        });
      }),
    ),
  );
}

/**
 * `tally dlq list --stuck` and `tally dlq skip <partition> [--seq n]`: the partitions that are not
 * advancing (as their workers record them), with the message each is stuck at; and the operator's
 * way out — the worker holding the partition dead-letters that message (nothing is lost: it can be
 * replayed after a fix) and moves on.
 */
async function cmdStuck(
  settings: Settings,
  sub: "list" | "skip",
  args: ReadonlyArray<string>,
  values: { json?: boolean; seq?: string | undefined },
): Promise<number> {
  const { listStuck, requestSkip } = await import("../../ledger/index.ts");
  const { decodeEnvelope } = await import("../wire/index.ts");
  const t = topology(settings.env, settings.partitions);
  return runEffect(
    Effect.scoped(
      Effect.gen(function* () {
        const sql = yield* ledgerResource(settings, "tally-dlq");
        const stuck = yield* fromPromise(() => listStuck(sql));
        if (sub === "skip") {
          const [p] = args;
          const partition = Number(p);
          if (p === undefined || !Number.isInteger(partition) || partition < 0 || partition >= t.partitions)
            throw new UsageError(`dlq skip: expected a partition from 0 to ${t.partitions - 1}, got ${JSON.stringify(p ?? "")}`);
          const row = stuck.find((s) => s.partition === partition);
          const seq = values.seq !== undefined ? Number(values.seq) : row?.streamSeq;
          if (seq === undefined) throw new UsageError(`dlq skip: partition ${partition} is not stuck; give --seq <n> to skip a message anyway`);
          if (!Number.isSafeInteger(seq) || seq < 1)
            throw new UsageError(`--seq: expected a stream sequence (1 or more), got ${JSON.stringify(values.seq)}`);
          const by = `${process.env.USER ?? "operator"}@cli`;
          const fresh = yield* fromPromise(() => requestSkip(sql, partition, seq, by));
          process.stdout.write(
            `partition ${partition}: message ${seq} ${fresh ? "will be" : "was already asked to be"} dead-lettered and skipped by the worker holding it (within its next retry)\n`,
          );
          return 0;
        }
        const nc = yield* natsResource(settings.natsUrl, "tally-dlq");
        const nats = yield* fromPromise(() =>
          ensureTopology(nc, t, { duplicateWindowMs: settings.duplicateWindowMs, leaseTtlMs: settings.leaseTtlMs }),
        );
        const withMessages = yield* fromPromise(() =>
          Promise.all(
            stuck.map(async (s) => {
              // Not found (or not readable): reported below as "not in the stream".
              const m = await nats.jsm.streams.getMessage(t.commandsStream, { seq: s.streamSeq }).catch(() => null);
              const envelope = m ? decodeEnvelope(m.data) : null;
              return { ...s, commands: envelope?.ok ? envelope.commands : null, message: m ? null : "not in the stream" };
            }),
          ),
        );
        if (values.json) process.stdout.write(`${JSON.stringify(withMessages, null, 2)}\n`);
        else {
          for (const s of withMessages) {
            const ids = (s.commands ?? []).map((c) => (c as { id?: unknown }).id).join(",");
            process.stdout.write(
              `partition ${s.partition}\tseq ${s.streamSeq}\t${s.attempts} attempts since ${s.since.toISOString()}\t${s.error}\t${ids || s.message || ""}\n`,
            );
          }
          process.stdout.write(`${withMessages.length} stuck partitions\n`);
        }
        return 0;
      }),
    ),
  );
}

/**
 * `tally ledger export`: the same stream as GET /v1/ledger/export, to a file or standard output.
 * The summary never goes into the file: beside it as `<file>.summary.json` with --out, and always as
 * one JSON line on stderr (which is also where the cursor for the next increment is).
 */
async function cmdExport(settings: Settings, args: ReadonlyArray<string>): Promise<number> {
  const { values } = parseArgs({
    args: [...args],
    options: {
      cursor: { type: "string" },
      from: { type: "string" },
      to: { type: "string" },
      format: { type: "string", default: "csv" },
      out: { type: "string" },
    },
  });
  const format = values.format;
  if (format !== "csv" && format !== "ndjson") throw new UsageError(`--format: expected csv or ndjson, got ${JSON.stringify(format)}`);
  const when = (name: string, v: string | undefined) => {
    if (v === undefined) return undefined;
    const d = new Date(v);
    if (Number.isNaN(d.getTime()) || !/^\d{4}-\d{2}-\d{2}/.test(v))
      throw new UsageError(`--${name}: expected an ISO-8601 date or date-time, got ${JSON.stringify(v)}`);
    return d;
  };
  const { EXPORT_CURSOR_PATTERN, openExport } = await import("../../ledger/index.ts");
  if (values.cursor !== undefined && !EXPORT_CURSOR_PATTERN.test(values.cursor))
    throw new UsageError(`--cursor: expected the nextCursor of a previous export (digits), got ${JSON.stringify(values.cursor)}`);
  const range = { cursor: values.cursor, from: when("from", values.from), to: when("to", values.to) };
  const { createWriteStream } = await import("node:fs");
  const { writeFile } = await import("node:fs/promises");
  const { pipeline } = await import("node:stream/promises");
  const { Readable } = await import("node:stream");
  return withPostgres(requireDatabaseUrl(settings), "tally-export", 2, async (sql) => {
    await assertEnvironment(sql, settings.env);
    // A progress bar on a terminal (stderr), never mixed into the export itself.
    const tty = process.stderr.isTTY === true;
    const total = tty
      ? (
          await sql<[{ total: number }]>`
            select count(*)::float8 as total from ledger_entries
             where true ${range.from ? sql`and recorded_at >= ${range.from}` : sql``} ${range.to ? sql`and recorded_at < ${range.to}` : sql``}`
        )[0].total
      : 0;
    let last = 0;
    const progress = (done: number) => {
      if (!tty || Date.now() - last < 100) return;
      last = Date.now();
      const pct = total > 0 ? Math.min(1, done / total) : 1;
      const width = 30;
      process.stderr.write(`\r[${"#".repeat(Math.round(pct * width)).padEnd(width, ".")}] ${(pct * 100).toFixed(1)}%  ${done}/${total} entries`);
    };
    const out = values.out ? createWriteStream(values.out) : process.stdout;
    const exp = await openExport(sql, format, range, (s) => progress(s.count));
    let summary: unknown = null;
    const source = Readable.from(
      (async function* () {
        summary = yield* exp.chunks;
      })(),
    );
    try {
      await pipeline(source, out, { end: values.out !== undefined });
    } finally {
      await exp.close();
    }
    if (tty) process.stderr.write("\n");
    const json = JSON.stringify(summary);
    if (values.out) await writeFile(`${values.out}.summary.json`, `${json}\n`);
    process.stderr.write(`${json}\n`);
    return 0;
  });
}

/** `tally token new`: prints a fresh token once (give it to the client) and the entry to configure (only its hash). */
async function cmdToken(args: ReadonlyArray<string>): Promise<number> {
  const { values, positionals } = parseArgs({
    args: [...args],
    allowPositionals: true,
    options: { scopes: { type: "string" }, channel: { type: "string" } },
  });
  const [sub, id] = positionals;
  if (sub !== "new" || !id) throw new UsageError("token: expected `tally token new <id> --scopes <s,…> [--channel <c>]`");
  const { SCOPES, decodeTokens, newToken } = await import("../http/index.ts");
  const scopes = (values.scopes ?? "")
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
  if (scopes.length === 0) throw new UsageError(`--scopes: give one or more of ${SCOPES.join(", ")}`);
  const { token, entry } = newToken(id, scopes as Array<(typeof SCOPES)[number]>, values.channel);
  try {
    decodeTokens(JSON.stringify([entry]), "--scopes");
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  process.stdout.write(
    `token (give it to the client; it is not stored anywhere):\n  ${token}\nentry for TALLY_API_TOKENS / TALLY_API_TOKENS_FILE:\n  ${JSON.stringify(entry)}\n`,
  );
  return 0;
}

/**
 * `tally ledger verify`: exit 0 when the ledger (and, with --anchors, its anchors) is sound, 1 when a
 * mismatch is found, 2 when it could not be checked (bad usage or settings, no connection): a script
 * must be able to tell "tampered" from "could not look".
 */
async function cmdVerify(args: ReadonlyArray<string>): Promise<number> {
  try {
    const { values } = (() => {
      try {
        return parseArgs({
          args: [...args],
          options: { anchors: { type: "boolean", default: false }, "anchors-file": { type: "string", multiple: true } },
        });
      } catch (error) {
        throw new UsageError(`ledger verify: ${(error as Error).message}`);
      }
    })();
    const settings = loadSettings();
    return await withPostgres(requireDatabaseUrl(settings), "tally-verify", 2, async (sql) => {
      await assertEnvironment(sql, settings.env);
      const report = await verifyLedger(sql);
      if (!report.ok) {
        const p = report.problem!;
        process.stdout.write(
          `ledger verify: FAILED at SKU ${p.sku}${p.entryId !== null ? ` entry ${p.entryId} (command ${p.commandId})` : ""}: ${p.message}\n`,
        );
        return 1;
      }
      process.stdout.write(`ledger verify: ok — ${report.entries} entries, ${report.skus} SKUs, ${report.balances} balances\n`);
      if (!values.anchors && values["anchors-file"] === undefined) return 0;
      return await verifyAnchors(settings, sql, values.anchors!, values["anchors-file"] ?? []);
    });
  } catch (error) {
    const e = error as Error;
    const known = ["SettingsError", "EnvironmentMismatch", "UsageError"].includes(e?.name);
    process.stderr.write(`tally: ${known ? "" : "ledger verify could not check the ledger: "}${e?.message ?? String(error)}\n`);
    return 2;
  }
}

/** `--anchors`, `--anchors-file`: the chain against the heads published outside the database. */
async function verifyAnchors(settings: Settings, sql: Sql, fromNats: boolean, files: ReadonlyArray<string>): Promise<number> {
  const anchors: Array<Anchor> = [];
  for (const f of files) anchors.push(...(await readAnchorFile(f)));
  if (fromNats)
    anchors.push(
      ...(await runEffect(
        Effect.scoped(
          Effect.gen(function* () {
            const nats = yield* natsTopology(settings, "tally-verify");
            return yield* fromPromise(() => readNatsAnchors(nats, nats.topology));
          }),
        ),
      )),
    );
  const report = await checkAnchors(sql, anchors);
  if (report.ok) {
    process.stdout.write(`ledger verify --anchors: ok — ${report.anchors} anchors of ${report.skus} SKUs match the ledger\n`);
    return 0;
  }
  for (const p of report.problems) process.stdout.write(`ledger verify --anchors: FAILED at SKU ${p.sku}: ${p.message}\n`);
  return 1;
}

/** `tally ledger anchor [--file <f>]`: every SKU's chain head now, to the anchors stream or appended to a file. */
async function cmdAnchor(settings: Settings, args: ReadonlyArray<string>): Promise<number> {
  const { values } = parseArgs({ args: [...args], options: { file: { type: "string" } } });
  return withPostgres(requireDatabaseUrl(settings), "tally-anchor", 1, async (sql) => {
    await assertEnvironment(sql, settings.env);
    const { heads } = await chainHeads(sql);
    if (values.file !== undefined) {
      await appendAnchorFile(values.file, heads);
      process.stdout.write(`ledger anchor: ${heads.length} SKU heads appended to ${values.file}\n`);
      return 0;
    }
    const messages = await runEffect(
      Effect.scoped(
        Effect.gen(function* () {
          const nats = yield* natsTopology(settings, "tally-anchor");
          return yield* fromPromise(() => publishAnchors(nats, nats.topology, heads));
        }),
      ),
    );
    process.stdout.write(`ledger anchor: ${heads.length} SKU heads published in ${messages} messages\n`);
    return 0;
  });
}

/** The ledger database's pool, in the enclosing scope, once it is known to belong to the settings' environment. */
const ledgerResource = (settings: Settings, application: string) =>
  Effect.tap(postgresResource(requireDatabaseUrl(settings), application), (sql) => fromPromise(() => assertEnvironment(sql, settings.env)));

/**
 * Runs `use` with a Postgres pool that lives in an Effect scope of its own and is ended however `use`
 * ends: the CLI's one idiom for a resource (with `url` null, `use` gets null and nothing is opened).
 */
function withPostgres<A>(url: string, application: string, max: number, use: (sql: Sql) => Promise<A>): Promise<A>;
function withPostgres<A>(url: string | null, application: string, max: number, use: (sql: Sql | null) => Promise<A>): Promise<A>;
function withPostgres<A>(url: string | null, application: string, max: number, use: (sql: Sql) => Promise<A>): Promise<A> {
  if (url === null) return (use as (sql: Sql | null) => Promise<A>)(null);
  return runEffect(Effect.scoped(Effect.flatMap(postgresResource(url, application, max), (sql) => fromPromise(() => use(sql)))));
}

/** A NATS connection with the environment's topology, for the span of an Effect scope. */
const natsTopology = (settings: Settings, name: string) =>
  Effect.gen(function* () {
    const t = topology(settings.env, settings.partitions);
    const nc = yield* natsResource(settings.natsUrl, name, settings.natsAccess);
    const nats = yield* fromPromise(() => ensureTopology(nc, t, { duplicateWindowMs: settings.duplicateWindowMs, leaseTtlMs: settings.leaseTtlMs }));
    return { ...nats, topology: t };
  });

/** `tally source check|enable|status|drop <name>`: the database admin's view of a CDC source. */
type SourceAdmin = typeof import("../../cdc/index.ts");
type SourceOf = ReturnType<SourceAdmin["findSource"]>;
type SourceStatus = Awaited<ReturnType<SourceAdmin["sourceStatus"]>>;

/** `tally source enable <name> --print-sql`: printing needs no connection (a DBA may run it where the source URL is not set). */
function printEnableSql(admin: SourceAdmin, config: TallyConfig, settings: Settings, name: string, role: string | undefined): number {
  const { findSource, sourceUrlSetting } = admin;
  const env = { ...process.env, [sourceUrlSetting(name)]: process.env[sourceUrlSetting(name)] || "postgres://unset" };
  const source = findSource(config, name, settings.env, env);
  process.stdout.write(
    `-- Enable CDC for source ${source.name}, as a superuser or the tables' owner, in this order (publication before slot).\n` +
      `-- If the publication exists already: ALTER PUBLICATION ${admin.quoteIdent(source.publication)} SET TABLE … instead.\n` +
      `${admin.enableSql(source).join("\n")}\n` +
      (role !== undefined
        ? `-- The role the cdc role connects as (${sourceUrlSetting(source.name)}): REPLICATION and SELECT on the captured tables only.\n` +
          `${admin.replicationRoleSql(source, role).join("\n")}\n`
        : ""),
  );
  return 0;
}

/** One source's part of `tally source check|enable|status|drop`; true when its check failed. */
async function sourceStep(
  admin: SourceAdmin,
  sub: "check" | "enable" | "status" | "drop",
  sql: Sql,
  ledger: Sql | null,
  source: SourceOf,
  statuses: Array<SourceStatus>,
): Promise<boolean> {
  if (sub === "check") {
    const results = await admin.checkSource(sql, source);
    process.stdout.write(`source ${source.name} (${source.urlSetting}):\n${admin.formatChecks(results)}`);
    return results.some((r) => !r.ok);
  }
  if (sub === "enable") {
    const r = await admin.enableSource(sql, source);
    process.stdout.write(
      `source ${source.name}: publication ${source.publication} ${r.publication}, slot ${source.slot} ${r.slot}\n` +
        r.statements.map((s) => `  ${s}\n`).join("") +
        "the cdc role takes the initial snapshot on first start (it recreates the slot with an exported snapshot)\n" +
        (r.slot === "created"
          ? "if the cdc role had captured this source before, this new slot missed what changed while there was none: the cdc role halts the source and alerts until you run tally source resnapshot\n"
          : ""),
    );
  } else if (sub === "status") statuses.push(await admin.sourceStatus(sql, ledger, source));
  else {
    const r = await admin.dropSource(sql, source, ledger);
    process.stdout.write(
      `source ${source.name}: slot ${source.slot} ${r.slotDropped ? "dropped" : "already gone"}` +
        (r.terminatedPid !== null ? ` (terminated walsender ${r.terminatedPid})` : "") +
        `, publication ${source.publication} ${r.publicationDropped ? "dropped" : "already gone"}` +
        (ledger ? `, ledger state ${r.ledgerRowDeleted ? "deleted" : "already gone"}` : "") +
        "\n",
    );
  }
  return false;
}

async function cmdSource(settings: Settings, args: ReadonlyArray<string>): Promise<number> {
  const admin = await import("../../cdc/index.ts");
  const { findSource, configuredSources } = await import("../../cdc/index.ts");
  const help = `usage:
  tally source check <name>               pass/fail table of what CDC needs, with the SQL that fixes each failure
  tally source enable <name> [--print-sql [--role <r>]]
                                          create the publication and slot (or print the SQL for a DBA,
                                          with a least-privilege replication role <r> for the cdc role)
  tally source status [<name>] [--json]   slot, confirmed LSN, lag bytes/seconds, heartbeat, snapshot, counters
  tally source drop <name>                drop the slot and publication (stop the cdc role first)
  tally source resnapshot <name> [--no-wait] [--timeout <s>]
                                          snapshot again while streaming on (the running cdc role does it);
                                          for a source halted because its slot was lost: a new slot and a full snapshot
the source's database is TALLY_SOURCE_<NAME>_URL; status and drop also use TALLY_DATABASE_URL when set`;
  const { values, positionals } = parseArgs({
    args: [...args],
    allowPositionals: true,
    options: {
      "print-sql": { type: "boolean", default: false },
      role: { type: "string" },
      json: { type: "boolean", default: false },
      "no-wait": { type: "boolean", default: false },
      timeout: { type: "string", default: "600" },
    },
  });
  const [sub, name] = positionals;
  if (sub === "resnapshot") {
    if (name === undefined) throw new UsageError(`source resnapshot: give a source name\n${help}`);
    return sourceResnapshot(settings, name, !values["no-wait"], Number(values.timeout) * 1000);
  }
  if (sub !== "check" && sub !== "enable" && sub !== "status" && sub !== "drop")
    throw new UsageError(`source: ${sub === undefined ? "give a subcommand" : `unknown subcommand ${JSON.stringify(sub)}`}\n${help}`);
  if (name === undefined && sub !== "status") throw new UsageError(`source ${sub}: give a source name\n${help}`);
  const config = await loadTallyConfig(settings.configFile);
  if (sub === "enable" && values["print-sql"]) return printEnableSql(admin, config, settings, name!, values.role);
  const sources = name !== undefined ? [findSource(config, name, settings.env)] : configuredSources(config, settings.env);
  const ledgerUrl = settings.databaseUrl && sub !== "check" && sub !== "enable" ? settings.databaseUrl : null;
  return withPostgres(ledgerUrl, "tally-source", 1, async (ledger) => {
    if (ledger) await assertEnvironment(ledger, settings.env);
    const statuses: Array<SourceStatus> = [];
    let failed = false;
    for (const source of sources) {
      try {
        failed = (await withPostgres(source.url, `tally-source-${sub}`, 1, (sql) => sourceStep(admin, sub, sql, ledger, source, statuses))) || failed;
      } catch (error) {
        const e = error as Error & { code?: unknown };
        if (e.name === "SourceAdminError" || typeof e.code === "string")
          throw new UsageError(`source ${sub} ${source.name} (${source.urlSetting}): ${e.message}`);
        throw error;
      }
    }
    if (sub === "status") {
      if (values.json) process.stdout.write(maskSecrets(`${JSON.stringify(statuses, null, 2)}\n`));
      else if (statuses.length === 0) process.stdout.write("no source has its URL set (TALLY_SOURCE_<NAME>_URL)\n");
      else process.stdout.write(maskSecrets(admin.formatStatuses(statuses)));
    }
    if (failed) process.stderr.write(`source check: failed — apply the fixes above and run it again\n`);
    return failed ? 1 : 0;
  });
}

/**
 * Asks the running cdc role to snapshot the source again (a request row in the ledger database), and
 * by default waits until it is done: the new counts are placed at the snapshot's position in the stream.
 */
async function sourceResnapshot(settings: Settings, name: string, wait: boolean, timeoutMs: number): Promise<number> {
  const config = await loadTallyConfig(settings.configFile);
  if (!config.sources[name]) throw new UsageError(`source ${JSON.stringify(name)} is not declared in ${settings.configFile}`);
  return withPostgres(requireDatabaseUrl(settings), "tally-source", 1, async (sql) => {
    await assertEnvironment(sql, settings.env);
    const [row] = await sql<[{ requested: Date; haltedReason: string | null; detail: { message?: string } | null } | undefined]>`
      update cdc_sources set resnapshot_requested_at = now() where source = ${name}
      returning resnapshot_requested_at as requested, halted_reason as "haltedReason", halted_detail as detail`;
    if (!row) throw new UsageError(`source ${name} has never been started by the cdc role: its first start takes the snapshot`);
    if (row.haltedReason)
      // The operator's choice for a source whose slot was lost: say what it does and does not do.
      process.stdout.write(
        `source ${name} is halted (${row.haltedReason}): ${row.detail?.message ?? ""}\n` +
          `re-snapshot: the cdc role creates a new slot and reads the source's tables; their counts set on-hand as the source has it now, ` +
          `and what moved in the gap is not replayed movement by movement\n`,
      );
    process.stdout.write(`source ${name}: re-snapshot requested\n`);
    if (!wait) return 0;
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const [state] = await sql<[{ pending: boolean; rows: number; lsn: string | null }]>`
        select resnapshot_requested_at is not null as pending, snapshot_rows as rows, snapshot_lsn as lsn from cdc_sources where source = ${name}`;
      if (state && !state.pending) {
        process.stdout.write(`source ${name}: re-snapshot done at ${state.lsn} (${state.rows} rows)\n`);
        return 0;
      }
      await sleep(500);
    }
    process.stderr.write(`source ${name}: re-snapshot not done after ${timeoutMs / 1000}s (is the cdc role running?)\n`);
    return 1;
  });
}

/**
 * `tally bench`: the load benchmark runs as a child process (`node --import tsx bench/bench.ts <args>`), so the
 * shipped CLI never imports it; its output goes straight to this terminal and its exit code is the CLI's.
 */
function cmdBench(args: ReadonlyArray<string>): Promise<number> {
  const script = fileURLToPath(new URL("../../bench/bench.ts", import.meta.url));
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

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    const e = error as Error;
    const known = [
      "SettingsError",
      "ConfigFileError",
      "EnvironmentMismatch",
      "MigrationError",
      "UsageError",
      "TokenConfigError",
      "DatabaseTlsError",
      "DriverPatchError",
    ];
    if (known.includes(e?.name)) process.stderr.write(`tally: ${maskSecrets(e.message)}\n`);
    else process.stderr.write(`tally: ${maskSecrets(e?.stack ?? String(error))}\n`);
    process.exitCode = e instanceof UsageError ? e.code : 1;
  },
);
