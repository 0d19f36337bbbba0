import { assertEnvironment } from "../../../ledger/index.ts";
import { loadSettings, loadTallyConfig, maskSecrets, requireDatabaseUrl, type Settings, type Sql, sleep } from "../../platform/index.ts";
import { CommandError, EXIT, type OutputFormat, withPostgres, writeJson } from "./common.ts";

/** `tally source check|enable|status|drop <name>`: the database admin's view of a CDC source. */
type SourceAdmin = typeof import("../../../cdc/index.ts");
type SourceOf = ReturnType<SourceAdmin["findSource"]>;
type Step = "check" | "enable" | "status" | "drop";

/**
 * Runs `step` against each source (the one named, or every configured one), each with a pool on its
 * own database; `ledger` is the ledger database when the step uses it and it is set.
 */
async function eachSource(
  sub: Step,
  name: string | undefined,
  step: (admin: SourceAdmin, sql: Sql, ledger: Sql | null, source: SourceOf) => Promise<void>,
): Promise<void> {
  const settings = loadSettings();
  const admin = await import("../../../cdc/index.ts");
  const config = await loadTallyConfig(settings.configFile);
  const sources = name !== undefined ? [admin.findSource(config, name, settings.env)] : admin.configuredSources(config, settings.env);
  const ledgerUrl = settings.databaseUrl && (sub === "status" || sub === "drop") ? settings.databaseUrl : null;
  await withPostgres(ledgerUrl, "tally-source", 1, async (ledger) => {
    if (ledger) await assertEnvironment(ledger, settings.env);
    for (const source of sources) {
      try {
        await withPostgres(source.url, `tally-source-${sub}`, 1, (sql) => step(admin, sql, ledger, source));
      } catch (error) {
        const e = error as Error & { code?: unknown };
        if (e.name === "SourceAdminError" || typeof e.code === "string")
          throw new CommandError(`source ${sub} ${source.name} (${source.urlSetting}): ${e.message}`);
        throw error;
      }
    }
  });
}

/** `tally source check <name>`: pass/fail table of what CDC needs; exit 3 when a check fails. */
export async function check(name: string, opts: { readonly format: OutputFormat }): Promise<number> {
  const results: Array<{ source: string; urlSetting: string; checks: Awaited<ReturnType<SourceAdmin["checkSource"]>> }> = [];
  await eachSource("check", name, async (admin, sql, _ledger, source) => {
    const checks = await admin.checkSource(sql, source);
    results.push({ source: source.name, urlSetting: source.urlSetting, checks });
    if (opts.format === "table") process.stdout.write(`source ${source.name} (${source.urlSetting}):\n${admin.formatChecks(checks)}`);
  });
  const failed = results.some((r) => r.checks.some((c) => !c.ok));
  if (opts.format === "json") writeJson(results);
  if (failed) process.stderr.write(`source check: failed — apply the fixes above and run it again\n`);
  return failed ? EXIT.mismatch : EXIT.ok;
}

/** `tally source enable <name> --print-sql`: printing needs no connection (a DBA may run it where the source URL is not set). */
async function printEnableSql(name: string, role: string | undefined): Promise<number> {
  const settings = loadSettings();
  const admin = await import("../../../cdc/index.ts");
  const config = await loadTallyConfig(settings.configFile);
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
  return EXIT.ok;
}

/** `tally source enable <name> [--print-sql [--role r]]`: creates the publication and slot (or prints the SQL). */
export async function enable(name: string, opts: { readonly printSql?: boolean; readonly role?: string }): Promise<number> {
  if (opts.printSql) return printEnableSql(name, opts.role);
  await eachSource("enable", name, async (admin, sql, _ledger, source) => {
    const r = await admin.enableSource(sql, source);
    process.stdout.write(
      `source ${source.name}: publication ${source.publication} ${r.publication}, slot ${source.slot} ${r.slot}\n` +
        r.statements.map((s) => `  ${s}\n`).join("") +
        "the cdc role takes the initial snapshot on first start (it recreates the slot with an exported snapshot)\n" +
        (r.slot === "created"
          ? "if the cdc role had captured this source before, this new slot missed what changed while there was none: the cdc role halts the source and alerts until you run tally source resnapshot\n"
          : ""),
    );
  });
  return EXIT.ok;
}

/** `tally source status [<name>]`: slot, confirmed LSN, lag, heartbeat, snapshot and counters of each source. */
export async function status(name: string | undefined, opts: { readonly format: OutputFormat }): Promise<number> {
  const statuses: Array<Awaited<ReturnType<SourceAdmin["sourceStatus"]>>> = [];
  let format: ((s: typeof statuses) => string) | undefined;
  await eachSource("status", name, async (admin, sql, ledger, source) => {
    format = admin.formatStatuses;
    statuses.push(await admin.sourceStatus(sql, ledger, source));
  });
  if (opts.format === "json") writeJson(statuses);
  else if (statuses.length === 0 || !format) process.stdout.write("no source has its URL set (TALLY_SOURCE_<NAME>_URL)\n");
  else process.stdout.write(maskSecrets(format(statuses)));
  return EXIT.ok;
}

/** `tally source drop <name>`: drops the slot and the publication (and the ledger's state of the source). */
export async function drop(name: string): Promise<number> {
  await eachSource("drop", name, async (admin, sql, ledger, source) => {
    const r = await admin.dropSource(sql, source, ledger);
    process.stdout.write(
      `source ${source.name}: slot ${source.slot} ${r.slotDropped ? "dropped" : "already gone"}` +
        (r.terminatedPid !== null ? ` (terminated walsender ${r.terminatedPid})` : "") +
        `, publication ${source.publication} ${r.publicationDropped ? "dropped" : "already gone"}` +
        (ledger ? `, ledger state ${r.ledgerRowDeleted ? "deleted" : "already gone"}` : "") +
        "\n",
    );
  });
  return EXIT.ok;
}

/**
 * Polls until the running cdc role has taken the requested snapshot and, when its config declares the
 * source's onHand, reconciled on-hand after it (0), or the timeout passes (1).
 */
async function awaitResnapshot(sql: Sql, name: string, afterRunId: string, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  let done = false;
  while (Date.now() < deadline) {
    // The cdc role records its run before it clears the request: read the request first, then look for the run.
    const [state] = await sql<[{ pending: boolean; rows: number; lsn: string | null; reconciling: boolean }]>`
      select resnapshot_requested_at is not null as pending, snapshot_rows as rows, snapshot_lsn as lsn,
             reconcile_requested_at is not null as reconciling
        from cdc_sources where source = ${name}`;
    if (state && !state.pending && !done) {
      done = true;
      process.stdout.write(`source ${name}: re-snapshot done at ${state.lsn} (${state.rows} rows)\n`);
    }
    if (done) {
      const cdc = await import("../../../cdc/index.ts");
      const run = await cdc.runSince(sql, name, "resnapshot", afterRunId);
      if (run) return printResnapshotRun(run);
      // No reconciliation requested and none recorded: the running cdc role's config declares no onHand for it.
      if (!state?.reconciling) return EXIT.ok;
    }
    await sleep(500);
  }
  process.stderr.write(`source ${name}: re-snapshot not done after ${timeoutMs / 1000}s (is the cdc role running?)\n`);
  return EXIT.failure;
}

type Run = NonNullable<Awaited<ReturnType<SourceAdmin["runSince"]>>>;

/** The re-snapshot's reconciliation: its drift report (before anything was applied), then what it changed. */
async function printResnapshotRun(run: Run): Promise<number> {
  const { driftTable } = await import("./reconcile.ts");
  if (run.error !== null || run.at === null) {
    process.stderr.write(
      `source ${run.source}: on-hand not reconciled after the re-snapshot: ${run.error} (run tally reconcile ${run.source} --apply)\n`,
    );
    return EXIT.failure;
  }
  process.stdout.write(driftTable({ source: run.source, at: run.at, drift: run.drift }, run.tolerance));
  const wb = run.toWriteBack.length + run.corrected.length;
  process.stdout.write(
    `on-hand by the system of record: ${run.applied} counts recorded (reason reconciliation) where the source wins` +
      (wb > 0
        ? `; ${wb} pairs where Tally wins left unchanged in the ledger (${run.corrected.length} written back, ${run.toWriteBack.length} to write back)`
        : "") +
      "\n",
  );
  return EXIT.ok;
}

/**
 * `tally source resnapshot <name>`: asks the running cdc role to snapshot the source again (a request row
 * in the ledger database), and by default waits until it is done: the new counts are placed at the
 * snapshot's position in the stream.
 */
export async function resnapshot(name: string, opts: { readonly wait: boolean; readonly timeout: number }): Promise<number> {
  const settings: Settings = loadSettings();
  const config = await loadTallyConfig(settings.configFile);
  if (!config.sources[name]) throw new CommandError(`source ${JSON.stringify(name)} is not declared in ${settings.configFile}`);
  // With an onHand declaration the cdc role leaves on-hand to reconciliation (per systemOfRecord) after the snapshot.
  const reconciled = config.sources[name].onHand !== undefined;
  return withPostgres(requireDatabaseUrl(settings), "tally-source", 1, async (sql) => {
    await assertEnvironment(sql, settings.env);
    const [row] = await sql<[{ lastRun: string; haltedReason: string | null; detail: { message?: string } | null } | undefined]>`
      update cdc_sources set resnapshot_requested_at = now() where source = ${name}
      returning (select coalesce(max(run_id), 0)::text from reconcile_runs where source = ${name}) as "lastRun",
                halted_reason as "haltedReason", halted_detail as detail`;
    if (!row) throw new CommandError(`source ${name} has never been started by the cdc role: its first start takes the snapshot`);
    if (row.haltedReason)
      // The operator's choice for a source whose slot was lost: say what it does and does not do.
      process.stdout.write(
        `source ${name} is halted (${row.haltedReason}): ${row.detail?.message ?? ""}\n` +
          (reconciled
            ? `re-snapshot: the cdc role creates a new slot and reads the source's tables; then reconciliation sets on-hand as the source has it now ` +
              `where the source is the system of record, and what moved in the gap is not replayed movement by movement\n`
            : `re-snapshot: the cdc role creates a new slot and reads the source's tables; their counts set on-hand as the source has it now, ` +
              `and what moved in the gap is not replayed movement by movement\n`),
      );
    process.stdout.write(`source ${name}: re-snapshot requested\n`);
    return opts.wait ? awaitResnapshot(sql, name, row.lastRun, opts.timeout * 1000) : EXIT.ok;
  });
}
