import { Effect } from "effect";
import { assertEnvironment } from "../../../ledger/index.ts";
import { maskSecrets, requireDatabaseUrl, type Settings, type Sql } from "../../platform/index.ts";
import { ensureTopology, topology } from "../../wire/index.ts";
import { fromPromise, natsResource, postgresResource, runEffect } from "../roles.ts";

/**
 * The exit codes scripts rely on (README "CLI", `tally --help`): 0 ok, 1 the command failed (no
 * connection, a bad setting, a step that did not succeed), 2 a usage error (unknown command or
 * option, missing argument, bad value), 3 a check ran and found a problem (`ledger verify`,
 * `source check`), 4 `submit` dead-lettered invalid lines (and published the others).
 */
export const EXIT = { ok: 0, failure: 1, usage: 2, mismatch: 3, invalidInput: 4 } as const;

/** A bad command line (a value commander cannot judge alone): printed as one line, exit 2. */
export class UsageError extends Error {
  override readonly name = "UsageError";
}

/** A failure the user can act on: printed as one line without a stack trace, exit 1. */
export class CommandError extends Error {
  override readonly name = "CommandError";
}

/** Errors whose message is the whole story (a setting, the config file, the database's state): no stack trace. */
const ONE_LINE = [
  "SettingsError",
  "ConfigFileError",
  "EnvironmentMismatch",
  "MigrationError",
  "UsageError",
  "CommandError",
  "TokenConfigError",
  "DatabaseTlsError",
  "RoleNameError",
  "SourceAdminError",
  "ReconcileError",
  "DriverPatchError",
];

/** Prints an error that ended a command on stderr (secrets masked) and returns its exit code. */
export function reportError(error: unknown): number {
  const e = error as Error | undefined;
  if (ONE_LINE.includes(e?.name ?? "")) process.stderr.write(`tally: ${maskSecrets(e!.message)}\n`);
  else process.stderr.write(`tally: ${maskSecrets(e?.stack ?? String(error))}\n`);
  return e?.name === "UsageError" ? EXIT.usage : EXIT.failure;
}

/** How a command that prints a table prints it: `table` for people, `json` for scripts. */
export type OutputFormat = "table" | "json";

/** One JSON document on stdout (secrets masked), for `--format json`. */
export function writeJson(value: unknown): void {
  process.stdout.write(maskSecrets(`${JSON.stringify(value, null, 2)}\n`));
}

/** The ledger database's pool, in the enclosing scope, once it is known to belong to the settings' environment. */
export const ledgerResource = (settings: Settings, application: string) =>
  Effect.tap(postgresResource(requireDatabaseUrl(settings), application), (sql) => fromPromise(() => assertEnvironment(sql, settings.env)));

/**
 * Runs `use` with a Postgres pool that lives in an Effect scope of its own and is ended however `use`
 * ends: the CLI's one idiom for a resource (with `url` null, `use` gets null and nothing is opened).
 */
export function withPostgres<A>(url: string, application: string, max: number, use: (sql: Sql) => Promise<A>): Promise<A>;
export function withPostgres<A>(url: string | null, application: string, max: number, use: (sql: Sql | null) => Promise<A>): Promise<A>;
export function withPostgres<A>(url: string | null, application: string, max: number, use: (sql: Sql) => Promise<A>): Promise<A> {
  if (url === null) return (use as (sql: Sql | null) => Promise<A>)(null);
  return runEffect(Effect.scoped(Effect.flatMap(postgresResource(url, application, max), (sql) => fromPromise(() => use(sql)))));
}

/** A NATS connection with the environment's topology, for the span of an Effect scope. */
export const natsTopology = (settings: Settings, name: string) =>
  Effect.gen(function* () {
    const t = topology(settings.env, settings.partitions);
    const nc = yield* natsResource(settings.natsUrl, name, settings.natsAccess);
    const nats = yield* fromPromise(() =>
      ensureTopology(nc, t, { duplicateWindowMs: settings.duplicateWindowMs, leaseTtlMs: settings.leaseTtlMs, retention: settings.retention }),
    );
    return { ...nats, topology: t };
  });
