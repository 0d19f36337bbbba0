/**
 * Least privilege for the ledger database. The owner role runs `tally migrate` and owns every table
 * (only an owner may disable or drop the trigger that keeps `ledger_entries` append-only). The
 * runtime role that `tally start` connects as gets data access only: it may add to the ledger but
 * never change or remove an entry, and it owns nothing.
 */

/** Tables the runtime role may only read and append to. */
export const APPEND_ONLY_TABLES: ReadonlyArray<string> = ["ledger_entries", "ledger_entry_keys", "gl_journals", "gl_lines"];
/** Tables the runtime role may only read (written by `tally migrate`). */
export const READ_ONLY_TABLES: ReadonlyArray<string> = ["tally_meta", "tally_migrations", "ledger_archive_months", "ledger_archive_heads"];

/** A role name that is unsafe to put in SQL. */
export class RoleNameError extends Error {
  override readonly name = "RoleNameError";
}

/**
 * The statements that give `role` what the runtime needs in `schema`. Run them as the owner after
 * every `tally migrate` (they cover the tables that exist when they run); `tally migrate
 * --runtime-role <role>` does it.
 */
export function runtimeGrants(role: string, schema = "public"): ReadonlyArray<string> {
  if (!/^[a-z_][a-z0-9_$]{0,62}$/.test(role))
    throw new RoleNameError(`--runtime-role: expected a lowercase role name ([a-z_][a-z0-9_$]*), got ${JSON.stringify(role)}`);
  if (!/^[a-z_][a-z0-9_]{0,62}$/.test(schema)) throw new RoleNameError(`schema: expected a lowercase name, got ${JSON.stringify(schema)}`);
  const r = `"${role}"`;
  return [
    `GRANT USAGE ON SCHEMA ${schema} TO ${r};`,
    `REVOKE CREATE ON SCHEMA ${schema} FROM ${r};`,
    `GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA ${schema} TO ${r};`,
    `GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA ${schema} TO ${r};`,
    ...APPEND_ONLY_TABLES.map((t) => `REVOKE UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON ${schema}.${t} FROM ${r};`),
    ...READ_ONLY_TABLES.map((t) => `REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON ${schema}.${t} FROM ${r};`),
    // The ledger's monthly partitions: reached only through ledger_entries (whose privileges are
    // the ones checked), so the runtime role needs none on a partition itself.
    `DO $$ DECLARE p regclass; BEGIN FOR p IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = '${schema}.ledger_entries'::regclass LOOP EXECUTE format('REVOKE ALL ON %s FROM ${r}', p); END LOOP; END $$;`,
  ];
}
