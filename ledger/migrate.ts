import { createHash, randomUUID } from "node:crypto";
import { readdir, readFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import type { Sql } from "postgres";

const MIGRATIONS_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../migrations");
/** Arbitrary constant: the advisory lock that serialises concurrent `tally migrate` runs. */
const MIGRATE_LOCK = 7_402_117_001;

export class MigrationError extends Error {
  override readonly name = "MigrationError";
}

/** The database belongs to another environment, or has never been migrated. */
export class EnvironmentMismatch extends Error {
  override readonly name = "EnvironmentMismatch";
}

interface MigrationFile {
  readonly id: number;
  readonly name: string;
  readonly sql: string;
  readonly checksum: string;
}

async function readMigrations(dir: string): Promise<ReadonlyArray<MigrationFile>> {
  const files = (await readdir(dir)).filter((f) => f.endsWith(".sql")).sort();
  const out: Array<MigrationFile> = [];
  for (const file of files) {
    const match = /^(\d{4})_([a-z0-9_]+)\.sql$/.exec(file);
    if (!match) throw new MigrationError(`${file}: migration files are named NNNN_name.sql`);
    const id = Number(match[1]);
    if (out.length > 0 && out[out.length - 1]!.id === id) throw new MigrationError(`${file}: duplicate number ${id}`);
    const sql = await readFile(path.join(dir, file), "utf8");
    out.push({ id, name: file, sql, checksum: createHash("sha256").update(sql).digest("hex") });
  }
  return out;
}

export interface MigrateResult {
  readonly applied: ReadonlyArray<string>;
  readonly environment: string;
}

/**
 * Applies pending `migrations/NNNN_*.sql` in order, each in its own transaction, under an advisory
 * lock so two processes can run it at once. Records the environment on first run and refuses a
 * database that belongs to another one.
 */
export async function migrate(sql: Sql, env: string, dir = MIGRATIONS_DIR): Promise<MigrateResult> {
  const files = await readMigrations(dir);
  const conn = await sql.reserve();
  try {
    await conn`select pg_advisory_lock(${MIGRATE_LOCK})`;
    try {
      // A database of another environment is refused before anything is applied to it.
      const [meta] = await conn<Array<{ ok: boolean }>>`select to_regclass('tally_meta') is not null as ok`;
      if (meta?.ok) {
        const [row] = await conn<Array<{ value: string }>>`select value from tally_meta where key = 'environment'`;
        if (row && row.value !== env) await assertEnvironment(conn, env);
      }
      await conn`
        create table if not exists tally_migrations (
          id integer primary key,
          name text not null,
          checksum text not null,
          applied_at timestamptz not null default now()
        )`;
      const done = new Map(
        (await conn<Array<{ id: number; name: string; checksum: string }>>`select id, name, checksum from tally_migrations`).map(
          (r) => [r.id, r] as const,
        ),
      );
      const applied: Array<string> = [];
      for (const m of files) {
        const prior = done.get(m.id);
        if (prior) {
          if (prior.checksum !== m.checksum)
            throw new MigrationError(`${m.name}: changed after it was applied (migrations are never edited; add a new one)`);
          continue;
        }
        // A reserved connection has no sql.begin(): the transaction is spelled out.
        await conn.unsafe("begin");
        try {
          await conn.unsafe(m.sql);
          await conn`insert into tally_migrations (id, name, checksum) values (${m.id}, ${m.name}, ${m.checksum})`;
          await conn.unsafe("commit");
        } catch (error) {
          await conn.unsafe("rollback");
          throw new MigrationError(`${m.name}: ${(error as Error).message}`, { cause: error });
        }
        applied.push(m.name);
      }
      // The ledger's partitions of this month and the next two (migration 0086), at every migrate.
      const [parts] = await conn<Array<{ ok: boolean }>>`select to_regproc('tally_ledger_partitions') is not null as ok`;
      if (parts?.ok) await conn`select tally_ledger_partitions(2)`;
      await conn`
        insert into tally_meta (key, value) values ('environment', ${env}), ('instance_id', ${randomUUID()})
        on conflict (key) do nothing`;
      await assertEnvironment(conn, env);
      return { applied, environment: env };
    } finally {
      await conn`select pg_advisory_unlock(${MIGRATE_LOCK})`;
    }
  } finally {
    conn.release();
  }
}

/** Refuses to go on when the database records another environment (or none: not migrated). */
export async function assertEnvironment(sql: Sql, env: string): Promise<void> {
  const [exists] = await sql<Array<{ ok: boolean }>>`select to_regclass('tally_meta') is not null as ok`;
  const [row] = exists?.ok ? await sql<Array<{ value: string }>>`select value from tally_meta where key = 'environment'` : [];
  const recorded = row?.value ?? null;
  if (recorded === null)
    throw new EnvironmentMismatch(`the database has no Tally environment recorded: run \`tally migrate\` with TALLY_ENV=${env} first`);
  if (recorded !== env)
    throw new EnvironmentMismatch(`TALLY_ENV is "${env}" but this database belongs to environment "${recorded}"; refusing to start`);
}

/** A random id recorded at first migrate; prefixes outbox message ids so a rebuilt database never reuses one. */
export async function instanceId(sql: Sql): Promise<string> {
  const [row] = await sql<Array<{ value: string }>>`select value from tally_meta where key = 'instance_id'`;
  if (!row) throw new EnvironmentMismatch("the database has no instance id: run `tally migrate` first");
  return row.value;
}
