// @ts-check
// The `tally` command line: every command, option, help text and exit code is defined here, once.
//
// This module is plain JavaScript on purpose and imports nothing but commander and node:fs: `tally
// --help`, `tally <command> --help` and `tally --version` answer without tsx and without loading the
// application (registering tsx alone costs more than the whole help; loading the app, seconds). A
// command's action registers tsx, then imports the one TypeScript module it needs (./ledger.ts,
// ./source.ts, ./dlq.ts, ./run.ts, ../dev.ts). tsc checks this file (allowJs + checkJs).
import { readFileSync } from "node:fs";
import { Command, CommanderError, InvalidArgumentError, Option } from "commander";

/**
 * The settings' defaults as the help text names them. The one definition is DEFAULTS and
 * COMPUTED_DEFAULTS in src/platform/settings.ts, which cannot be loaded without tsx and effect;
 * test/cliHelp.test.ts fails when this copy and it differ.
 */
const D = {
  TALLY_ENV: "dev",
  TALLY_NATS_URL: "nats://127.0.0.1:4222",
  TALLY_NATS_REPLICAS: 1,
  TALLY_PARTITIONS: 16,
  TALLY_DUPLICATE_WINDOW_SECONDS: 7200,
  TALLY_LEASE_TTL_MS: 10000,
  TALLY_HTTP_PORT: 8080,
  TALLY_CONFIG: "tally.config.ts",
  TALLY_MAX_ACTORS: 100000,
  TALLY_BATCH_MAX: 2000,
  TALLY_HTTP_HOST: "0.0.0.0",
  TALLY_API_RATE_LIMIT: 600,
  TALLY_SHUTDOWN_TIMEOUT_MS: 10000,
  TALLY_REQUEST_TIMEOUT_MS: 2000,
  TALLY_RESERVATION_SHED_LAG_MS: 3000,
  TALLY_WORKER_PROCESS: "separate",
  TALLY_ANCHOR_INTERVAL_MS: 60000,
  TALLY_APPLY_CONCURRENCY: "CPU count",
  TALLY_METRICS_PORT: 9464,
  TALLY_METRICS_HOST: "0.0.0.0",
  TALLY_COMMANDS_MAX_AGE_SECONDS: 604800,
  TALLY_EVENTS_MAX_AGE_SECONDS: 2592000,
  TALLY_AVAILABILITY_MAX_AGE_SECONDS: 86400,
  TALLY_DLQ_MAX_AGE_SECONDS: 2592000,
  TALLY_DLQ_MAX_BYTES: 1073741824,
  TALLY_POS_CLAIM_RETENTION_SECONDS: 2592000,
  TALLY_RESERVATION_RETENTION_SECONDS: 604800,
  TALLY_OUTCOMES_ARCHIVE_RETENTION_SECONDS: 7776000,
  TALLY_CATALOG_MAX_AGE_SECONDS: 604800,
  TALLY_CATALOG_HISTORY_RETENTION_SECONDS: 2592000,
  TALLY_PRUNE_INTERVAL_MS: 300000,
  TALLY_PRUNE_BATCH: 1000,
};

const EXIT_CODES = `exit codes:
  0  ok
  1  the command failed (no connection, a bad setting or config file, a step that did not succeed)
  2  usage error: unknown command or option, missing argument, bad value
  3  a check ran and found a problem: ledger verify (a mismatch), source check (a failed check),
     reconcile (drift above the tolerance)
  4  submit: invalid lines were dead-lettered (the others were published)`;

const SETTINGS = `settings (environment): TALLY_ENV (default ${D.TALLY_ENV}), TALLY_DATABASE_URL,
  TALLY_NATS_URL (a server or a comma-separated list, default ${D.TALLY_NATS_URL}),
  TALLY_NATS_REPLICAS (replicas of every stream and KV bucket, default ${D.TALLY_NATS_REPLICAS}), TALLY_PARTITIONS (default ${D.TALLY_PARTITIONS}),
  TALLY_DUPLICATE_WINDOW_SECONDS (default ${D.TALLY_DUPLICATE_WINDOW_SECONDS}), TALLY_LEASE_TTL_MS (default ${D.TALLY_LEASE_TTL_MS}),
  TALLY_MAX_ACTORS (default ${D.TALLY_MAX_ACTORS}), TALLY_BATCH_MAX (default ${D.TALLY_BATCH_MAX}),
  TALLY_APPLY_CONCURRENCY (partitions applying at once per worker, default ${D.TALLY_APPLY_CONCURRENCY}),
  TALLY_CONFIG (or --config; default ${D.TALLY_CONFIG}), TALLY_LOG_LEVEL, TALLY_HTTP_HOST (default ${D.TALLY_HTTP_HOST}),
  TALLY_HTTP_PORT (default ${D.TALLY_HTTP_PORT}), TALLY_API_TOKENS / TALLY_API_TOKENS_FILE (hashed tokens, JSON),
  TALLY_API_RATE_LIMIT (write requests per minute per token, default ${D.TALLY_API_RATE_LIMIT}),
  TALLY_REQUEST_TIMEOUT_MS (default ${D.TALLY_REQUEST_TIMEOUT_MS}),
  TALLY_RESERVATION_SHED_LAG_MS (holds shed while a partition decides slower; 0: never; default ${D.TALLY_RESERVATION_SHED_LAG_MS}), TALLY_WORKER_PROCESS (default ${D.TALLY_WORKER_PROCESS}),
  TALLY_SHUTDOWN_TIMEOUT_MS (longest stop after SIGTERM/SIGINT, default ${D.TALLY_SHUTDOWN_TIMEOUT_MS}),
  TALLY_ANCHOR_INTERVAL_MS (chain heads published by the relay, default ${D.TALLY_ANCHOR_INTERVAL_MS}),
  TALLY_METRICS_HOST (default ${D.TALLY_METRICS_HOST}) + TALLY_METRICS_PORT (/metrics of a process without the api
  role, default ${D.TALLY_METRICS_PORT}), TALLY_CORS_ORIGINS (web origins allowed to call the API),
  TALLY_STREAM_TOKEN_SECRET (signs browsers' short-lived stream tokens),
  retention (README "Retention"): TALLY_COMMANDS_MAX_AGE_SECONDS (default ${D.TALLY_COMMANDS_MAX_AGE_SECONDS}),
  TALLY_EVENTS_MAX_AGE_SECONDS (default ${D.TALLY_EVENTS_MAX_AGE_SECONDS}), TALLY_AVAILABILITY_MAX_AGE_SECONDS (default ${D.TALLY_AVAILABILITY_MAX_AGE_SECONDS}),
  TALLY_DLQ_MAX_AGE_SECONDS (default ${D.TALLY_DLQ_MAX_AGE_SECONDS}), TALLY_DLQ_MAX_BYTES (default ${D.TALLY_DLQ_MAX_BYTES}),
  TALLY_POS_CLAIM_RETENTION_SECONDS (default ${D.TALLY_POS_CLAIM_RETENTION_SECONDS}),
  TALLY_RESERVATION_RETENTION_SECONDS (default ${D.TALLY_RESERVATION_RETENTION_SECONDS}),
  TALLY_OUTCOMES_ARCHIVE_RETENTION_SECONDS (0: forever; default ${D.TALLY_OUTCOMES_ARCHIVE_RETENTION_SECONDS}),
  TALLY_CATALOG_MAX_AGE_SECONDS (default ${D.TALLY_CATALOG_MAX_AGE_SECONDS}),
  TALLY_CATALOG_HISTORY_RETENTION_SECONDS (default ${D.TALLY_CATALOG_HISTORY_RETENTION_SECONDS}),
  TALLY_PRUNE_INTERVAL_MS (default ${D.TALLY_PRUNE_INTERVAL_MS}), TALLY_PRUNE_BATCH (rows per statement, default ${D.TALLY_PRUNE_BATCH}),
  NATS credentials: TALLY_NATS_USER + TALLY_NATS_PASSWORD (or nats://user:pass@host), TALLY_NATS_TOKEN,
  TALLY_NATS_NKEY_SEED_FILE or TALLY_NATS_CREDS_FILE; NATS TLS: TALLY_NATS_CA_FILE, TALLY_NATS_CERT_FILE +
  TALLY_NATS_KEY_FILE; database TLS in the URL (?sslmode=verify-full&sslrootcert=<ca file>)`;

/** @returns {string} the package's version */
function packageVersion() {
  return JSON.parse(readFileSync(new URL("../../../package.json", import.meta.url), "utf8")).version;
}

// ---- values: a bad one is a usage error (exit 2) naming the option ----

/** @param {string} what @returns {(text: string) => number} */
const positive = (what) => (text) => {
  const n = Number(text);
  if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError(`expected ${what} > 0, got ${JSON.stringify(text)}`);
  return n;
};

/** @param {string} text @returns {number} */
const streamSeq = (text) => {
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError(`expected a stream sequence (1 or more), got ${JSON.stringify(text)}`);
  return n;
};

/**
 * @template {string} T
 * @param {string} name @param {ReadonlyArray<T>} values @returns {(text: string) => T}
 */
const oneOf = (name, values) => (text) => {
  if (!values.includes(/** @type {T} */ (text)))
    throw new InvalidArgumentError(`${name}: expected ${values.join(" or ")}, got ${JSON.stringify(text)}`);
  return /** @type {T} */ (text);
};

/** @param {string} text @returns {string} */
const month = (text) => {
  if (!/^[0-9]{4}-(0[1-9]|1[0-2])$/.test(text)) throw new InvalidArgumentError(`expected a month as YYYY-MM, got ${JSON.stringify(text)}`);
  return text;
};

/** @param {string} value @param {Array<string> | undefined} previous */
const collect = (value, previous) => [...(previous ?? []), value];

/** `--format table|json` (and `--json`, its shorthand) for a command that prints a table. */
function formatOptions() {
  return [
    new Option("--format <format>", "output: table (for people) or json (for scripts)")
      .argParser(oneOf("--format", ["table", "json"]))
      .default("table"),
    new Option("--json", "the same as --format json").implies({ format: "json" }),
  ];
}

// ---- actions: each registers tsx, imports its module, and returns the exit code ----

let tsxRegistered = false;
/** @type {number} */
let exitCode = 0;

/**
 * Runs a command's action: TypeScript loaded on first use, errors reported as one line (or a stack
 * trace for the unexpected) with their exit code.
 * @param {() => Promise<number>} action
 */
async function run(action) {
  if (!tsxRegistered) {
    const { register } = await import("tsx/esm/api");
    register();
    tsxRegistered = true;
  }
  try {
    // Refuses to run with a driver whose fix (patches/) was not applied, e.g. after `npm i --ignore-scripts`.
    (await import("../../platform/index.ts")).assertDriverPatches();
    exitCode = await action();
  } catch (error) {
    const { reportError } = await import("./common.ts");
    exitCode = reportError(error);
  }
}

/** @param {Command} program */
function addRunCommands(program) {
  program
    .command("migrate")
    .description("apply pending migrations; record TALLY_ENV in the database; grant the runtime privileges to a role")
    .option("--runtime-role <role>", "grant the runtime privileges (append-only ledger) to <role>")
    .option("--print-grants", "print the GRANT statements for a DBA instead, without connecting (default role tally_runtime)")
    .action((opts) => run(async () => (await import("./run.ts")).migrate(opts)));
  program
    .command("start")
    .description("run roles until SIGINT/SIGTERM")
    .option("--roles <roles>", "comma-separated: worker, relay, cdc, api", "worker,relay,cdc")
    .action((opts) => run(async () => (await import("./run.ts")).start(opts)));
  program
    .command("submit")
    .description("publish canonical commands (one JSON per line)")
    .argument("<file>", "an NDJSON file, or - for standard input")
    .option("--wait", "wait for each command's outcome (needs TALLY_DATABASE_URL)")
    .addOption(new Option("--timeout <seconds>", "longest wait for outcomes").argParser(positive("seconds")).default(120))
    .action((file, opts) => run(async () => (await import("./run.ts")).submit(file, opts)));
}

/** @param {Command} program */
function addLedgerCommands(program) {
  const ledger = program.command("ledger").description("verify, anchor, export and archive the ledger");
  const verify = ledger
    .command("verify")
    .description("recompute every hash chain and balance in one snapshot (exit 3 on a mismatch, 1 when it could not check)")
    .option("--anchors", "also compare the chain heads with the anchors published to NATS")
    .option("--anchors-file <file>", "also compare them with the anchors kept in <file> (repeatable)", collect)
    .option("--archive <dir>", "also check the archived months' files in <dir> (`ledger archive`) and that the live chains continue from them");
  for (const o of formatOptions()) verify.addOption(o);
  verify.action((opts) => run(async () => (await import("./ledger.ts")).verify(opts)));
  ledger
    .command("anchor")
    .description("publish every SKU's chain head now (or append them to a file)")
    .option("--file <file>", "append the heads to <file> instead of publishing them")
    .action((opts) => run(async () => (await import("./ledger.ts")).anchor(opts)));
  ledger
    .command("export")
    .description("stream the entries committed after the cursor; the summary (with the next cursor) as one JSON line on stderr")
    .option("--cursor <cursor>", "the nextCursor of a previous export")
    .option("--from <time>", "entries recorded at or after this ISO-8601 date or date-time")
    .option("--to <time>", "entries recorded before this ISO-8601 date or date-time")
    .addOption(new Option("--format <format>", "csv (RFC 4180) or ndjson").argParser(oneOf("--format", ["csv", "ndjson"])).default("csv"))
    .option("--out <file>", "write to <file> (and the summary to <file>.summary.json) instead of stdout")
    .action((opts) => run(async () => (await import("./ledger.ts")).exportLedger(opts)));
  ledger
    .command("archive")
    .description(
      "export every whole month before --before to <dir>/ledger-YYYY-MM.ndjson with a manifest (sha256, rows, chain heads at the cut), then detach its partition; run as the database owner",
    )
    .requiredOption("--before <month>", "archive the months before this one, YYYY-MM (only closed, fully journaled months)", month)
    .option("--out <dir>", "where the files go", ".")
    .option("--drop", "drop each detached partition instead of keeping it as ledger_archived_YYYY_MM")
    .action((opts) => run(async () => (await import("./ledger.ts")).archive(opts)));
}

// ---- gl: the journal's readers (export, trial balance); the posting side adds its own gl commands ----

/**
 * `tally gl export` and `tally gl trial-balance`, in the `gl` group.
 * @param {Command} program
 */
function addGlReadCommands(program) {
  const gl = glGroup(program);
  gl.command("export")
    .description(
      "journal lines posted between two dates (inclusive), one row per line; the summary (with the next cursor) as one JSON line on stderr",
    )
    .requiredOption("--from <date>", "first posting date, YYYY-MM-DD")
    .requiredOption("--to <date>", "last posting date, YYYY-MM-DD")
    .addOption(new Option("--format <format>", "csv (RFC 4180) or ndjson").argParser(oneOf("--format", ["csv", "ndjson"])).default("csv"))
    .option("--output <file>", "write to <file> instead of stdout")
    .option("--cursor <cursor>", "only journals committed after the export whose nextCursor this is")
    .action((opts) => run(async () => (await import("./glExport.ts")).exportJournal(opts)));
  const tb = gl
    .command("trial-balance")
    .description("debit, credit and balance (debit - credit) of each account over the lines posted on or before --at")
    .option("--at <date>", "YYYY-MM-DD (default: today in the finance time zone)");
  for (const o of formatOptions()) tb.addOption(o);
  tb.action((opts) => run(async () => (await import("./glExport.ts")).printTrialBalance(opts)));
}

/** @param {Command} program */
function addDlqCommands(program) {
  const dlq = program.command("dlq").description("dead letters (CDC sources, submit, commands, POS) and stuck partitions");
  const list = dlq
    .command("list")
    .description("list dead letters; with --stuck, the partitions not advancing, the message each is stuck at, and why")
    .option("--origin <origin>", "only the dead letters of this origin")
    .option("--stuck", "list stuck partitions instead");
  for (const o of formatOptions()) list.addOption(o);
  list.action((opts) => run(async () => (opts.stuck ? (await import("./dlq.ts")).stuck(opts) : (await import("./dlq.ts")).list(opts))));
  dlq
    .command("replay")
    .description("map / decode again and publish; removes each letter that succeeds")
    .argument("[ids...]", "dead letter ids")
    .option("--all", "every dead letter")
    .action((ids, opts) => run(async () => (await import("./dlq.ts")).replay(ids, opts)));
  dlq
    .command("discard")
    .description("remove dead letters for good")
    .argument("[ids...]", "dead letter ids")
    .option("--all", "every dead letter")
    .action((ids, opts) => run(async () => (await import("./dlq.ts")).discard(ids, opts)));
  dlq
    .command("skip")
    .description("dead-letter the message a stuck partition is stuck at (or message n) and let it move on; replay it after a fix")
    .argument("<partition>", "the stuck partition")
    .addOption(new Option("--seq <n>", "skip stream message n instead").argParser(streamSeq))
    .action((partition, opts) => run(async () => (await import("./dlq.ts")).skip(partition, opts)));
}

/** @param {Command} program */
function addPartitionCommands(program) {
  const partitions = program.command("partitions").description("the partition layout: status, and changing the partition count");
  const status = partitions.command("status").description("the layout workers apply and publishers publish under, and each partition's checkpoint");
  for (const o of formatOptions()) status.addOption(o);
  status.action((opts) => run(async () => (await import("./partitions.ts")).status(opts)));
  const resize = partitions
    .command("resize")
    .description("change the partition count: cut the stream over to the new layout, drain the old one, then switch (docs/scaling.md)")
    .argument("<n>", "the new partition count (1 to 1024)")
    .option("--dry-run", "show the layouts and each partition's progress; change nothing")
    .addOption(
      new Option("--timeout <seconds>", "longest wait for the old layout to drain (run again to resume)").argParser(positive("seconds")).default(120),
    );
  for (const o of formatOptions()) resize.addOption(o);
  resize.action((n, opts) => run(async () => (await import("./partitions.ts")).resize(n, opts)));
}

/** @param {Command} program */
function addSourceCommands(program) {
  const source = program
    .command("source")
    .description("CDC sources: the source's database is TALLY_SOURCE_<NAME>_URL; status and drop also use TALLY_DATABASE_URL when set");
  const check = source
    .command("check")
    .description("pass/fail table of what CDC needs, with the SQL that fixes each failure (exit 3 when one fails)")
    .argument("<name>", "the source");
  for (const o of formatOptions()) check.addOption(o);
  check.action((name, opts) => run(async () => (await import("./source.ts")).check(name, opts)));
  source
    .command("enable")
    .description("create the publication and slot (or print the SQL for a DBA)")
    .argument("<name>", "the source")
    .option("--print-sql", "print the SQL instead, without connecting")
    .option("--role <role>", "with --print-sql: also a least-privilege replication role <role> for the cdc role")
    .action((name, opts) => run(async () => (await import("./source.ts")).enable(name, opts)));
  const status = source
    .command("status")
    .description("slot, confirmed LSN, lag bytes/seconds, heartbeat, snapshot, counters")
    .argument("[name]", "the source (default: every source with its URL set)");
  for (const o of formatOptions()) status.addOption(o);
  status.action((name, opts) => run(async () => (await import("./source.ts")).status(name, opts)));
  source
    .command("drop")
    .description("drop the slot and publication (stop the cdc role first)")
    .argument("<name>", "the source")
    .action((name) => run(async () => (await import("./source.ts")).drop(name)));
  source
    .command("resnapshot")
    .description(
      "snapshot again while streaming on (the running cdc role does it); for a source halted because its slot was lost: a new slot and a full snapshot. With an onHand declaration, on-hand is then reconciled (per systemOfRecord) and its drift report printed",
    )
    .argument("<name>", "the source")
    .option("--no-wait", "return once requested")
    .addOption(new Option("--timeout <seconds>", "longest wait").argParser(positive("seconds")).default(600))
    .action((name, opts) => run(async () => (await import("./source.ts")).resnapshot(name, opts)));
}

/** @param {string} text @returns {number} */
const nonNegativeInt = (text) => {
  const n = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(n))
    throw new InvalidArgumentError(`expected a whole number (0 or more), got ${JSON.stringify(text)}`);
  return n;
};

/** @param {Command} program */
function addReconcileCommand(program) {
  program
    .command("reconcile")
    .description(
      "compare a source's stock on hand (its mapping's onHand) with the ledger's at one WAL position, once CDC and the workers caught up to it (exit 3 on drift)",
    )
    .argument("<source>", "the source")
    .addOption(
      new Option("--format <format>", "table (for people), csv (RFC 4180) or json")
        .argParser(oneOf("--format", ["table", "csv", "json"]))
        .default("table"),
    )
    .addOption(new Option("--tolerance <n>", "ignore pairs whose |difference| is at most n base units").argParser(nonNegativeInt).default(0))
    .option(
      "--apply",
      "act per (SKU, location) as systemOfRecord says: where the source wins record a count (reason reconciliation), where Tally wins list it to write back; then check again",
    )
    .addOption(new Option("--timeout <seconds>", "longest wait for CDC and the workers").argParser(positive("seconds")).default(60))
    .action((name, opts) => run(async () => (await import("./reconcile.ts")).reconcile(name, opts)));
}

// ---- gl: the GL journal. The group is found or made by glGroup, so each block below adds its own subcommands. ----

/** The `gl` command group, made on first use. @param {Command} program @returns {Command} */
function glGroup(program) {
  return program.commands.find((c) => c.name() === "gl") ?? program.command("gl").description("the GL journal: periods, export, trial balance");
}

/** @param {string} text @returns {string} */
const period = (text) => {
  if (!/^[0-9]{4}-(0[1-9]|1[0-2])$/.test(text))
    throw new InvalidArgumentError(`expected a month as YYYY-MM (like 2026-11), got ${JSON.stringify(text)}`);
  return text;
};

/** `tally gl close` and `tally gl periods`. @param {Command} program */
function addGlPeriodCommands(program) {
  const gl = glGroup(program);
  gl.command("close")
    .description(
      "close a month: movements dated in it that are not posted yet post on the first day of the next open month (keeping their business date)",
    )
    .argument("<period>", "the month, YYYY-MM", period)
    .option("--by <name>", "who closes it (default: the operating-system user)")
    .action((p, opts) => run(async () => (await import("./gl.ts")).close(p, opts)));
  const periods = gl.command("periods").description("list the closed periods");
  for (const o of formatOptions()) periods.addOption(o);
  periods.action((opts) => run(async () => (await import("./gl.ts")).periods(opts)));
}

/**
 * `tally dev`'s options, given back to its own parser (src/app/dev.ts) as arguments.
 * @param {{ fresh?: boolean, dir: string, demo: boolean, rate?: number, skus?: number }} o */
const devArgs = (o) => [
  ...(o.fresh ? ["--fresh"] : []),
  "--dir",
  o.dir,
  ...(o.demo ? [] : ["--no-demo"]),
  ...(o.rate !== undefined ? ["--rate", String(o.rate)] : []),
  ...(o.skus !== undefined ? ["--skus", String(o.skus)] : []),
];

/** @param {Command} program */
function addOtherCommands(program) {
  program
    .command("token")
    .description("API tokens")
    .command("new")
    .description("a fresh API token, and the hashed entry to configure for it")
    .argument("<id>", "the token's id")
    .requiredOption("--scopes <scopes>", "comma-separated scopes")
    .option("--channel <channel>", "the only channel the token may act for")
    .action((id, opts) => run(async () => (await import("./run.ts")).tokenNew(id, opts)));
  program
    .command("demo")
    .description("the reference ERP and shop")
    .command("init")
    .description("reference ERP + shop schemas and data in TALLY_SOURCE_{ERP,SHOP}_URL")
    .action(() => run(async () => (await import("./run.ts")).demoInit()));
  program
    .command("dev")
    .description("local Postgres + nats-server, demo ERP and shop, every role, demo traffic and the dashboard")
    .option("--fresh", "delete the data folder first")
    .option("--dir <dir>", "data folder (kept between runs)", ".tally")
    .option("--no-demo", "no demo traffic")
    .addOption(new Option("--rate <n>", "demo events per second").argParser(positive("events per second")))
    .addOption(new Option("--skus <n>", "demo catalog size").argParser(positive("a number of SKUs")))
    .action((opts) => run(async () => (await import("../dev.ts")).devMain(devArgs(opts))));
  program
    .command("bench")
    .description("the load benchmark (own servers; JSON + HTML report in bench/results)")
    .argument("[options...]", "the benchmark's options, e.g. --scenario steady|flash-sale|catalog-1m --duration <s> --rate <n>")
    .allowUnknownOption()
    .action((args) => run(async () => (await import("./run.ts")).bench(args)));
  program
    .command("version", { hidden: true })
    .description("print the version")
    .action(() => {
      process.stdout.write(`tally ${packageVersion()}\n`);
    });
}

/** The whole command line, with help, suggestions and --config. */
function buildProgram() {
  const program = new Command("tally")
    .description("real-time inventory ledger")
    .version(`tally ${packageVersion()}`, "-V, --version", "print the version")
    .option("--config <file>", `the config file (sets TALLY_CONFIG; default ${D.TALLY_CONFIG})`)
    .exitOverride()
    .showSuggestionAfterError(true)
    .configureHelp({ showGlobalOptions: true })
    .addHelpText("after", `\n${EXIT_CODES}\n\n${SETTINGS}\n`);
  program.hook("preAction", () => {
    // Before any command loads its settings: the same as TALLY_CONFIG=<file>.
    const { config } = program.opts();
    if (config !== undefined) process.env.TALLY_CONFIG = config;
  });
  addRunCommands(program);
  addLedgerCommands(program);
  addDlqCommands(program);
  addPartitionCommands(program);
  addSourceCommands(program);
  addReconcileCommand(program);
  addGlPeriodCommands(program);
  addGlReadCommands(program);
  addOtherCommands(program);
  return program;
}

/**
 * Runs the command line `argv` (without node and the script) and returns its exit code: 0 for help
 * and --version, 2 for a usage error commander finds (it has printed it), else the command's own.
 * @param {ReadonlyArray<string>} argv
 * @returns {Promise<number>}
 */
export async function main(argv) {
  const program = buildProgram();
  try {
    await program.parseAsync([...argv], { from: "user" });
    return exitCode;
  } catch (error) {
    if (error instanceof CommanderError) return error.exitCode === 0 ? 0 : 2;
    throw error;
  }
}
