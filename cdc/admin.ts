/**
 * What a database admin runs against a source (`tally source check|enable|status|drop`).
 *
 * Every function takes a connection to the SOURCE database (the ERP's or the shop's), not the
 * ledger's. The ledger is read only for the per-source state the CDC reader keeps in
 * `cdc_sources` (snapshot, heartbeat, counters).
 *
 * The slot's life cycle: `enable` creates the publication and then the slot (in that order:
 * pgoutput looks the publication up as of each decoded change, so a slot older than its
 * publication fails with "publication does not exist"). A slot made by `enable` has no exported
 * snapshot; the CDC reader, finding a slot with no snapshot recorded in the ledger's `cdc_sources`,
 * drops it and recreates it with EXPORT_SNAPSHOT to read the opening balances. A slot `enable`
 * creates after the reader had already captured the source (its old slot was lost) is not taken
 * for Tally's: the reader halts the source with an alert until `tally source resnapshot`. `enable` still
 * creates the slot so that WAL is retained from the moment the admin enabled the source, and so a
 * role allowed to create slots only through the DBA can have them made up front. `drop` removes
 * both, so a decommissioned source cannot pile up WAL.
 */
import type { Sql } from "postgres";
import { sleep } from "../src/platform/index.ts";
import type { ResolvedSource } from "./sources.ts";

/** How one check came out: `fail` blocks CDC; `warn` works but is risky; `info` is state, not a verdict. */
export type CheckLevel = "pass" | "warn" | "fail" | "info";

/** One line of `tally source check`. */
export interface CheckResult {
  readonly check: string;
  /** False only for `fail`. */
  readonly ok: boolean;
  readonly level: CheckLevel;
  readonly detail: string;
  /** The exact SQL (or postgresql.conf line) that fixes a `fail` or `warn`; null when nothing to do. */
  readonly fix: string | null;
}

/** An admin action that cannot go on (a slot owned by another database, a FOR ALL TABLES publication …). */
export class SourceAdminError extends Error {
  override readonly name = "SourceAdminError";
}

// Reserved and type/function-name keywords: these cannot be a bare schema or table name.
const KEYWORDS = new Set(
  (
    "all analyse analyze and any array as asc asymmetric authorization binary both case cast check collate collation " +
    "column concurrently constraint create cross current_catalog current_date current_role current_schema current_time " +
    "current_timestamp current_user default deferrable desc distinct do else end except false fetch for foreign freeze " +
    "from full grant group having ilike in initially inner intersect into is isnull join lateral leading left like limit " +
    "localtime localtimestamp natural not notnull null offset on only or order outer overlaps placing primary references " +
    "returning right select session_user similar some symmetric system_user table tablesample then to trailing true union " +
    "unique user using variadic verbose when where window with"
  ).split(" "),
);

/** An identifier as SQL text: bare when that is unambiguous, double-quoted otherwise. */
export function quoteIdent(name: string): string {
  return /^[a-z_][a-z0-9_$]*$/.test(name) && !KEYWORDS.has(name) ? name : `"${name.replaceAll('"', '""')}"`;
}

/** `schema.table` (the config's table key) as SQL text. */
export function qualifiedName(key: string): string {
  const dot = key.indexOf(".");
  return `${quoteIdent(key.slice(0, dot))}.${quoteIdent(key.slice(dot + 1))}`;
}

const literal = (s: string) => `'${s.replaceAll("'", "''")}'`;

async function currentDatabase(sql: Sql): Promise<string> {
  const [row] = await sql<Array<{ database: string }>>`select current_database() as database`;
  return row!.database;
}

const tableKeys = (source: ResolvedSource) => Object.keys(source.tables).sort();
/** Tables the initial snapshot reads that are not captured (e.g. a stock-on-hand table). */
const snapshotOnlyKeys = (source: ResolvedSource) =>
  [...new Set(source.snapshot.map((t) => t.table))].filter((k) => !Object.hasOwn(source.tables, k)).sort();

// ---------------------------------------------------------------------------------------------
// check

interface ServerRow {
  wal_level: string;
  max_replication_slots: number;
  max_wal_senders: number;
  max_slot_wal_keep_size: string | null;
  used_slots: number;
  active_senders: number;
  role: string;
  database: string;
  rolsuper: boolean;
  rolreplication: boolean;
  can_create: boolean;
  server_version: number;
}

/** Server settings, slot and sender usage, and the connecting role's rights. */
async function readServer(sql: Sql): Promise<ServerRow> {
  const [row] = await sql<ServerRow[]>`
    select current_setting('wal_level') as wal_level,
           current_setting('max_replication_slots')::int as max_replication_slots,
           current_setting('max_wal_senders')::int as max_wal_senders,
           current_setting('max_slot_wal_keep_size', true) as max_slot_wal_keep_size,
           (select count(*)::int from pg_replication_slots) as used_slots,
           (select count(*)::int from pg_stat_activity where backend_type = 'walsender') as active_senders,
           current_user as role,
           current_database() as database,
           r.rolsuper,
           r.rolreplication,
           has_database_privilege(current_database(), 'CREATE') as can_create,
           current_setting('server_version_num')::int as server_version
      from pg_roles r
     where r.rolname = current_user`;
  return row!;
}

interface SlotRow {
  slot_name: string;
  plugin: string | null;
  slot_type: string;
  database: string | null;
  active: boolean;
  active_pid: number | null;
  confirmed_flush_lsn: string | null;
  restart_lsn: string | null;
  wal_status: string | null;
  lag_bytes: number | null;
  current_lsn: string | null;
}

/** The named slot, wherever it lives; wal_status is read through jsonb so servers before 13 answer too. */
async function readSlot(sql: Sql, slot: string): Promise<SlotRow | undefined> {
  const [row] = await sql<SlotRow[]>`
    select s.slot_name,
           s.plugin,
           s.slot_type,
           s.database,
           s.active,
           s.active_pid,
           s.confirmed_flush_lsn::text as confirmed_flush_lsn,
           s.restart_lsn::text as restart_lsn,
           to_jsonb(s) ->> 'wal_status' as wal_status,
           case when pg_is_in_recovery() or s.confirmed_flush_lsn is null then null
                else pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::float8 end as lag_bytes,
           case when pg_is_in_recovery() then null else pg_current_wal_lsn()::text end as current_lsn
      from pg_replication_slots s
     where s.slot_name = ${slot}`;
  return row;
}

interface PublicationRow {
  puballtables: boolean;
  pubinsert: boolean;
  pubupdate: boolean;
  pubdelete: boolean;
  tables: string[];
}

/** The named publication in this database and the tables it publishes (`schema.table`). */
async function readPublication(sql: Sql, publication: string): Promise<PublicationRow | undefined> {
  const [row] = await sql<PublicationRow[]>`
    select p.puballtables, p.pubinsert, p.pubupdate, p.pubdelete,
           coalesce((select array_agg(t.schemaname || '.' || t.tablename order by t.schemaname, t.tablename)
                       from pg_publication_tables t
                      where t.pubname = p.pubname), '{}') as tables
      from pg_publication p
     where p.pubname = ${publication}`;
  return row;
}

interface TableRow {
  key: string;
  schema_exists: boolean;
  relkind: string | null;
  relreplident: string | null;
  schema_usage: boolean | null;
  can_select: boolean | null;
  owned: boolean | null;
  primary_key: string | null;
  identity_index: string | null;
  /** A unique, non-partial, non-deferrable index on NOT NULL columns only: usable as replica identity. */
  candidate_index: string | null;
}

/** Each captured table: whether it exists, our rights on it, its key and replica identity. */
async function readTables(sql: Sql, keys: ReadonlyArray<string>): Promise<TableRow[]> {
  const schemas = keys.map((k) => k.slice(0, k.indexOf(".")));
  const names = keys.map((k) => k.slice(k.indexOf(".") + 1));
  return sql<TableRow[]>`
    select t.schema || '.' || t.name as key,
           n.oid is not null as schema_exists,
           c.relkind::text as relkind,
           c.relreplident::text as relreplident,
           case when n.oid is not null then has_schema_privilege(n.oid, 'USAGE') end as schema_usage,
           case when c.oid is not null then has_table_privilege(c.oid, 'SELECT') end as can_select,
           case when c.oid is not null then pg_has_role(c.relowner, 'USAGE') end as owned,
           (select string_agg(quote_ident(a.attname), ', ' order by k.ord)
              from pg_index i
              cross join unnest(i.indkey) with ordinality as k(attnum, ord)
              join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
             where i.indrelid = c.oid and i.indisprimary) as primary_key,
           (select quote_ident(ic.relname)
              from pg_index i join pg_class ic on ic.oid = i.indexrelid
             where i.indrelid = c.oid and i.indisreplident) as identity_index,
           (select quote_ident(ic.relname)
              from pg_index i join pg_class ic on ic.oid = i.indexrelid
             where i.indrelid = c.oid and i.indisunique and i.indimmediate and i.indisvalid
               and i.indpred is null and i.indexprs is null
               and not exists (select 1 from unnest(i.indkey) k(attnum)
                                 join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
                                where not a.attnotnull)
             order by i.indnatts, ic.relname
             limit 1) as candidate_index
      from unnest(${schemas}::text[], ${names}::text[]) with ordinality as t(schema, name, ord)
      left join pg_namespace n on n.nspname = t.schema
      left join pg_class c on c.relnamespace = n.oid and c.relname = t.name
     order by t.ord`;
}

/** `max_slot_wal_keep_size` in MB (what current_setting reports with a unit), -1 for unbounded. */
function keepSizeMb(value: string): number {
  const m = /^(-?\d+)\s*(kB|MB|GB|TB)?$/.exec(value.trim());
  if (!m) return Number.NaN;
  const n = Number(m[1]);
  if (n < 0) return -1;
  const unit = m[2] ?? "MB";
  return unit === "kB" ? n / 1024 : unit === "GB" ? n * 1024 : unit === "TB" ? n * 1024 * 1024 : n;
}

// These three settings take effect only when the server starts.
const RESTART = "then restart Postgres";

/**
 * The least-privilege role the cdc role may connect to a source as: LOGIN and REPLICATION (to
 * create and stream its slot), USAGE on the captured tables' schemas and SELECT on those tables
 * and on the tables only the initial snapshot reads — nothing else. The publication is created by the tables'
 * owner (`tally source enable`, or its `--print-sql` for a DBA). Set the password with `\password`.
 */
export function replicationRoleSql(source: ResolvedSource, role: string): string[] {
  const r = quoteIdent(role);
  const keys = [...new Set([...tableKeys(source), ...snapshotOnlyKeys(source)])];
  const schemas = [...new Set(keys.map((k) => k.slice(0, k.indexOf("."))))];
  return [
    `CREATE ROLE ${r} WITH LOGIN REPLICATION;`,
    ...schemas.map((schema) => `GRANT USAGE ON SCHEMA ${quoteIdent(schema)} TO ${r};`),
    ...keys.map((k) => `GRANT SELECT ON ${qualifiedName(k)} TO ${r};`),
  ];
}

/**
 * Checks that the source can be captured: logical WAL, a free slot and WAL sender, the role's
 * REPLICATION right, SELECT on every captured table, a usable replica identity on each (FULL where
 * the mapping reads old rows), and a bound on the WAL a stuck slot may hold. Each failure names
 * the exact SQL that fixes it. The publication and slot are reported, not judged: before
 * `enable` they do not exist yet.
 */
export async function checkSource(sql: Sql, source: ResolvedSource): Promise<CheckResult[]> {
  const checks = newChecks();
  const server = await readServer(sql);
  const slot = await readSlot(sql, source.slot);
  checkServer(checks, server, slot, source);
  const { keys, tables } = await checkTables(checks, sql, source, server);
  checkWalKeep(checks, server);
  await checkPublication(checks, sql, source, server, keys, tables);
  checkSlot(checks, server, slot, source);
  return checks.results;
}

/** The check results so far, and one recorder per level. */
interface Checks {
  readonly results: CheckResult[];
  pass(check: string, detail: string): void;
  info(check: string, detail: string, fix?: string | null): void;
  warn(check: string, detail: string, fix: string): void;
  fail(check: string, detail: string, fix: string): void;
}

function newChecks(): Checks {
  const results: CheckResult[] = [];
  return {
    results,
    pass: (check, detail) => results.push({ check, ok: true, level: "pass", detail, fix: null }),
    info: (check, detail, fix = null) => results.push({ check, ok: true, level: "info", detail, fix }),
    warn: (check, detail, fix) => results.push({ check, ok: true, level: "warn", detail, fix }),
    fail: (check, detail, fix) => results.push({ check, ok: false, level: "fail", detail, fix }),
  };
}

/** Logical WAL, a free slot and WAL sender, and the role's REPLICATION right. */
function checkServer(checks: Checks, server: ServerRow, slot: SlotRow | undefined, source: ResolvedSource): void {
  const { pass, fail } = checks;
  const ownSlot = slot !== undefined && slot.database === server.database;
  if (server.wal_level === "logical") pass("wal_level", "logical");
  else
    fail(
      "wal_level",
      `is ${server.wal_level}; logical decoding needs logical`,
      `ALTER SYSTEM SET wal_level = logical; -- or wal_level = logical in postgresql.conf (RDS: rds.logical_replication = 1); ${RESTART}`,
    );

  const freeSlots = server.max_replication_slots - server.used_slots;
  const slotDetail = `${server.used_slots} of ${server.max_replication_slots} in use`;
  if (ownSlot) pass("replication slots", `${slotDetail} (one is ours: ${source.slot})`);
  else if (freeSlots >= 1) pass("replication slots", `${slotDetail}, ${freeSlots} free`);
  else
    fail(
      "replication slots",
      `${slotDetail}, none free for ${source.slot}`,
      `ALTER SYSTEM SET max_replication_slots = ${Math.max(server.max_replication_slots + 2, 10)}; -- ${RESTART}; or drop an unused slot: SELECT pg_drop_replication_slot('<name>') (see pg_replication_slots)`,
    );

  const senderDetail = `${server.active_senders} of ${server.max_wal_senders} in use`;
  if (ownSlot && slot.active) pass("wal senders", `${senderDetail} (one streams our slot)`);
  else if (server.max_wal_senders - server.active_senders >= 1)
    pass("wal senders", `${senderDetail}, ${server.max_wal_senders - server.active_senders} free`);
  else
    fail(
      "wal senders",
      `${senderDetail}, none free for the CDC stream`,
      `ALTER SYSTEM SET max_wal_senders = ${Math.max(server.max_wal_senders + 2, 10)}; -- ${RESTART}`,
    );

  if (server.rolsuper) pass("replication role", `${server.role} is a superuser`);
  else if (server.rolreplication) pass("replication role", `${server.role} has REPLICATION`);
  else
    fail(
      "replication role",
      `${server.role} has neither REPLICATION nor superuser: it cannot create or stream a slot`,
      `ALTER ROLE ${quoteIdent(server.role)} WITH REPLICATION;`,
    );
}

/** SELECT on every captured table and a usable replica identity on each; SELECT on the snapshot-only tables. */
async function checkTables(checks: Checks, sql: Sql, source: ResolvedSource, server: ServerRow): Promise<{ keys: string[]; tables: TableRow[] }> {
  const { pass, fail } = checks;
  const { results } = checks;
  const keys = tableKeys(source);
  const tables = keys.length === 0 ? [] : await readTables(sql, keys);
  if (keys.length === 0) fail("tables", "the source captures no tables", "add tables to the source in tally.config.ts");
  for (const t of tables) {
    const name = qualifiedName(t.key);
    const config = source.tables[t.key]!;
    if (t.relkind === null) {
      fail(
        `table ${t.key}`,
        t.schema_exists ? "does not exist" : `does not exist (no schema ${t.key.slice(0, t.key.indexOf("."))})`,
        `create the table, or remove ${t.key} from the source's tables in tally.config.ts`,
      );
      continue;
    }
    if (t.relkind !== "r" && t.relkind !== "p") {
      fail(
        `table ${t.key}`,
        `is not a table (relkind ${t.relkind}): views and foreign tables cannot be published`,
        `capture the underlying table instead of ${t.key} in tally.config.ts`,
      );
      continue;
    }
    if (!t.schema_usage || !t.can_select) {
      const grants = [
        ...(t.schema_usage ? [] : [`GRANT USAGE ON SCHEMA ${quoteIdent(t.key.slice(0, t.key.indexOf(".")))} TO ${quoteIdent(server.role)};`]),
        ...(t.can_select ? [] : [`GRANT SELECT ON ${name} TO ${quoteIdent(server.role)};`]),
      ];
      fail(`select ${t.key}`, `${server.role} cannot read it (needed for the initial snapshot and by pgoutput)`, grants.join(" "));
    } else pass(`select ${t.key}`, `${server.role} may SELECT`);

    results.push(replicaIdentity(t, name, config.oldRow));
  }

  // Tables only the snapshot reads: SELECT is all they need (they are not published).
  const snapshotKeys = snapshotOnlyKeys(source);
  for (const t of snapshotKeys.length === 0 ? [] : await readTables(sql, snapshotKeys)) {
    if (t.relkind === null)
      fail(`snapshot ${t.key}`, "does not exist", `create the table, or remove ${t.key} from the source's snapshot in tally.config.ts`);
    else if (!t.schema_usage || !t.can_select)
      fail(
        `snapshot ${t.key}`,
        `${server.role} cannot read it (the initial snapshot does)`,
        [
          ...(t.schema_usage ? [] : [`GRANT USAGE ON SCHEMA ${quoteIdent(t.key.slice(0, t.key.indexOf(".")))} TO ${quoteIdent(server.role)};`]),
          ...(t.can_select ? [] : [`GRANT SELECT ON ${qualifiedName(t.key)} TO ${quoteIdent(server.role)};`]),
        ].join(" "),
      );
    else pass(`snapshot ${t.key}`, `${server.role} may SELECT`);
  }
  return { keys, tables };
}

/** A bound on the WAL a stuck slot may hold. */
function checkWalKeep(checks: Checks, server: ServerRow): void {
  const { pass, info, warn } = checks;
  const keep = server.max_slot_wal_keep_size;
  if (keep === null) info("max_slot_wal_keep_size", `not available before Postgres 13 (server ${server.server_version}): watch the slot's lag`);
  else if (keepSizeMb(keep) === -1)
    warn(
      "max_slot_wal_keep_size",
      "is -1 (unbounded): a stuck or abandoned slot keeps WAL until the disk is full",
      "ALTER SYSTEM SET max_slot_wal_keep_size = '10GB'; SELECT pg_reload_conf();",
    );
  else pass("max_slot_wal_keep_size", `${keep}: a slot falling further behind is invalidated (then re-snapshot) instead of filling the disk`);
}

/** The publication is reported, not judged, before `enable`; after it, it must publish exactly the captured tables. */
async function checkPublication(
  checks: Checks,
  sql: Sql,
  source: ResolvedSource,
  server: ServerRow,
  keys: ReadonlyArray<string>,
  tables: ReadonlyArray<TableRow>,
): Promise<void> {
  const { pass, info, warn, fail } = checks;
  const publication = await readPublication(sql, source.publication);
  if (!publication) {
    const canCreate = server.rolsuper || (server.can_create && tables.every((t) => t.owned !== false));
    info(
      "publication",
      `${source.publication} does not exist yet${canCreate ? "" : ` (and ${server.role} may not create it: it must own every table and have CREATE on the database)`}`,
      `tally source enable ${source.name}${canCreate ? "" : " --print-sql  (for a DBA to run)"}`,
    );
  } else if (publication.puballtables)
    fail(
      "publication",
      `${source.publication} is FOR ALL TABLES; Tally needs its own table list`,
      `DROP PUBLICATION ${quoteIdent(source.publication)}; -- then tally source enable ${source.name}`,
    );
  else {
    const missing = keys.filter((k) => !publication.tables.includes(k));
    const extra = publication.tables.filter((k) => !keys.includes(k));
    const narrow = !(publication.pubinsert && publication.pubupdate && publication.pubdelete);
    if (missing.length === 0 && extra.length === 0 && !narrow)
      pass("publication", `${source.publication} publishes the ${keys.length} captured tables`);
    else
      warn(
        "publication",
        [
          missing.length > 0 ? `does not publish ${missing.join(", ")}` : "",
          extra.length > 0 ? `also publishes ${extra.join(", ")}` : "",
          narrow ? "does not publish every insert, update and delete" : "",
        ]
          .filter(Boolean)
          .join("; "),
        `tally source enable ${source.name}`,
      );
  }
}

/** The slot, if it exists: ours (a pgoutput slot in this database), and not invalidated. */
function checkSlot(checks: Checks, server: ServerRow, slot: SlotRow | undefined, source: ResolvedSource): void {
  const { info, fail } = checks;
  if (!slot) info("slot", `${source.slot} does not exist yet`, `tally source enable ${source.name}`);
  else if (slot.database !== server.database || slot.slot_type !== "logical" || slot.plugin !== "pgoutput")
    fail(
      "slot",
      `${source.slot} exists but is a ${slot.slot_type} slot${slot.plugin ? ` for ${slot.plugin}` : ""} in database ${slot.database ?? "(none)"}; Tally needs a pgoutput slot in ${server.database}`,
      `SELECT pg_drop_replication_slot(${literal(source.slot)}); -- from the slot's database; then tally source enable ${source.name}`,
    );
  else if (slot.wal_status === "lost")
    fail(
      "slot",
      `${source.slot} lost WAL it still needed (it fell behind by more than max_slot_wal_keep_size): changes were skipped`,
      `tally source drop ${source.name}; tally source enable ${source.name}  -- the reader then takes a new snapshot`,
    );
  else
    info(
      "slot",
      `${source.slot} ${slot.active ? `streaming (pid ${slot.active_pid})` : "idle"}, confirmed ${slot.confirmed_flush_lsn ?? "-"}` +
        (slot.lag_bytes !== null ? `, ${slot.lag_bytes} bytes behind` : "") +
        (slot.wal_status ? `, wal_status ${slot.wal_status}` : ""),
    );
}

function replicaIdentity(t: TableRow, name: string, oldRow: "key" | "full"): CheckResult {
  const check = `replica identity ${t.key}`;
  const full = `ALTER TABLE ${name} REPLICA IDENTITY FULL;`;
  const ok = (detail: string): CheckResult => ({ check, ok: true, level: "pass", detail, fix: null });
  const bad = (detail: string, fix: string): CheckResult => ({ check, ok: false, level: "fail", detail, fix });
  if (t.relreplident === "f") return ok("FULL: old rows carry every column");
  if (oldRow === "full")
    return bad(
      "the mapping reads old rows (oldRow: 'full'), so the table needs REPLICA IDENTITY FULL; updates and deletes would lack old values",
      full,
    );
  // A key is enough: no usable one means deletes arrive with no old row at all.
  const noKey = (detail: string) =>
    bad(
      `${detail}: deletes would not be captured`,
      t.candidate_index !== null
        ? `ALTER TABLE ${name} REPLICA IDENTITY USING INDEX ${t.candidate_index}; -- or ${full}`
        : `${full} -- or give it a primary key: ALTER TABLE ${name} ADD PRIMARY KEY (<key columns>);`,
    );
  switch (t.relreplident) {
    case "d":
      return t.primary_key !== null ? ok(`DEFAULT, primary key (${t.primary_key})`) : noKey("DEFAULT without a primary key");
    case "i":
      return t.identity_index !== null ? ok(`USING INDEX ${t.identity_index}`) : noKey("USING INDEX, but the index no longer exists");
    case "n":
      return noKey("NOTHING");
    default:
      return noKey(`unknown (${t.relreplident ?? "none"})`);
  }
}

// ---------------------------------------------------------------------------------------------
// enable

/** What exists already, so `enableSql` emits only what is missing or stale. */
export interface EnableState {
  /** null: no publication; else whether its table list and published actions are what Tally needs. */
  readonly publication: null | { readonly tablesMatch: boolean; readonly publishesChanges: boolean };
  readonly slotExists: boolean;
}

const NOTHING_YET: EnableState = { publication: null, slotExists: false };

/**
 * The SQL that enables CDC for the source: the publication, then the slot (in that order).
 * Without `state` it is the SQL for a database that has neither (what `--print-sql` shows).
 */
export function enableSql(source: ResolvedSource, state: EnableState = NOTHING_YET): string[] {
  const pub = quoteIdent(source.publication);
  const tables = tableKeys(source).map(qualifiedName).join(", ");
  const out: string[] = [];
  if (state.publication === null) out.push(`CREATE PUBLICATION ${pub} FOR TABLE ${tables};`);
  else {
    if (!state.publication.tablesMatch) out.push(`ALTER PUBLICATION ${pub} SET TABLE ${tables};`);
    if (!state.publication.publishesChanges) out.push(`ALTER PUBLICATION ${pub} SET (publish = 'insert, update, delete, truncate');`);
  }
  if (!state.slotExists) out.push(`SELECT pg_create_logical_replication_slot(${literal(source.slot)}, 'pgoutput');`);
  return out;
}

/** What `enableSource` did. */
export interface EnableResult {
  readonly publication: "created" | "updated" | "unchanged";
  readonly slot: "created" | "exists";
  /** The statements run, in order. */
  readonly statements: ReadonlyArray<string>;
}

/**
 * Creates the publication (or brings its table list up to date) and then the slot if missing;
 * safe to run again. Refuses a slot of the same name that belongs to another database or plugin.
 */
export async function enableSource(sql: Sql, source: ResolvedSource): Promise<EnableResult> {
  if (tableKeys(source).length === 0) throw new SourceAdminError(`source ${source.name} captures no tables: nothing to publish`);
  for (let attempt = 1; ; attempt++) {
    const database = await currentDatabase(sql);
    const publication = await readPublication(sql, source.publication);
    const slot = await readSlot(sql, source.slot);
    if (publication?.puballtables)
      throw new SourceAdminError(
        `publication ${source.publication} is FOR ALL TABLES: drop it (DROP PUBLICATION ${quoteIdent(source.publication)}) or name another in tally.config.ts`,
      );
    if (slot && (slot.database !== database || slot.plugin !== "pgoutput"))
      throw new SourceAdminError(
        `replication slot ${source.slot} exists but is ${slot.plugin ? `a ${slot.plugin} slot` : `a ${slot.slot_type} slot`} in database ${slot.database ?? "(none)"}: drop it there, or name another slot in tally.config.ts`,
      );
    const keys = tableKeys(source);
    const state: EnableState = {
      publication: publication
        ? {
            tablesMatch: keys.length === publication.tables.length && keys.every((k) => publication.tables.includes(k)),
            publishesChanges: publication.pubinsert && publication.pubupdate && publication.pubdelete,
          }
        : null,
      slotExists: slot !== undefined,
    };
    const statements = enableSql(source, state);
    const publicationStatements = statements.filter((s) => !s.startsWith("SELECT pg_create_logical_replication_slot"));
    try {
      // The slot cannot be created in a transaction that has written, so it goes on its own, after.
      if (publicationStatements.length > 0)
        await sql.begin(async (tx) => {
          for (const s of publicationStatements) await tx.unsafe(s);
        });
      if (!state.slotExists) await sql.unsafe(`SELECT pg_create_logical_replication_slot(${literal(source.slot)}, 'pgoutput')`);
    } catch (error) {
      // Someone else enabled it between our look and our statements: look again.
      if ((error as { code?: string }).code === "42710" && attempt < 3) continue;
      throw error;
    }
    return {
      publication: state.publication === null ? "created" : publicationStatements.length > 0 ? "updated" : "unchanged",
      slot: state.slotExists ? "exists" : "created",
      statements,
    };
  }
}

// ---------------------------------------------------------------------------------------------
// status

/** Where the initial snapshot stands, from the ledger's `cdc_sources`. */
export type SnapshotState = "done" | "in_progress" | "not_started" | "unknown";

/** One source's replication state: the slot on the source, the reader's progress from the ledger. */
export interface SourceStatus {
  readonly source: string;
  /** `missing`: captured tables the publication lacks, whose changes are not captured (`enable` repairs it). */
  readonly publication: {
    readonly name: string;
    readonly exists: boolean;
    readonly tables: ReadonlyArray<string>;
    readonly missing: ReadonlyArray<string>;
  };
  readonly slot: {
    readonly name: string;
    readonly exists: boolean;
    readonly active: boolean;
    readonly activePid: number | null;
    readonly confirmedFlushLsn: string | null;
    readonly restartLsn: string | null;
    /** `reserved`, `extended`, `unreserved` or `lost` (Postgres 13+). */
    readonly walStatus: string | null;
  };
  readonly currentLsn: string | null;
  /** WAL between the server's current position and the slot's confirmed one: what the slot holds back. */
  readonly lagBytes: number | null;
  /**
   * 0 when the slot is caught up; else the seconds since the reader last confirmed progress
   * (its last event or heartbeat in the ledger); null when that is not known.
   */
  readonly lagSeconds: number | null;
  readonly lastEventAt: Date | null;
  readonly lastHeartbeatAt: Date | null;
  readonly snapshot: {
    readonly state: SnapshotState;
    readonly lsn: string | null;
    readonly doneAt: Date | null;
    readonly rows: number | null;
    /** While the snapshot's slot creation waits for transactions running on the source server: which, since when. */
    readonly waitingFor: {
      readonly since: string;
      readonly transactions: ReadonlyArray<{ readonly pid: number | null; readonly ageSeconds: number; readonly query: string }>;
    } | null;
  };
  /**
   * Set while the CDC reader has stopped capturing the source because its slot was lost, replaced
   * or invalidated: changes after `lastConfirmedLsn` may be missing. `tally source resnapshot` is the way on.
   */
  readonly halted: {
    readonly reason: string;
    readonly since: Date;
    readonly message: string;
    readonly lastConfirmedLsn: string | null;
    readonly lastConfirmedAt: string | null;
  } | null;
  /** The reader's confirmed LSN as recorded in the ledger. */
  readonly ledgerConfirmedLsn: string | null;
  readonly counters: { readonly changes: number; readonly commands: number; readonly skipped: number; readonly deadLetters: number } | null;
}

interface LedgerRow {
  slot: string;
  snapshot_lsn: string | null;
  snapshot_done_at: Date | null;
  snapshot_rows: number;
  confirmed_lsn: string | null;
  last_event_at: Date | null;
  last_heartbeat_at: Date | null;
  changes: number;
  commands: number;
  skipped: number;
  dead_letters: number;
  idle_seconds: number | null;
  snapshot_waiting_for: SourceStatus["snapshot"]["waitingFor"];
  halted_at: Date | null;
  halted_reason: string | null;
  halted_detail: { message: string; lastConfirmedLsn: string | null; lastConfirmedAt: string | null } | null;
}

/** The reader's row for this source, or undefined (none yet, or a ledger not migrated to CDC). */
async function readLedgerRow(ledger: Sql, source: ResolvedSource): Promise<LedgerRow | undefined> {
  try {
    const [row] = await ledger<LedgerRow[]>`
      select slot, snapshot_lsn, snapshot_done_at, snapshot_rows::float8 as snapshot_rows, confirmed_lsn,
             last_event_at, last_heartbeat_at,
             changes::float8 as changes, commands::float8 as commands, skipped::float8 as skipped,
             dead_letters::float8 as dead_letters, snapshot_waiting_for, halted_at, halted_reason, halted_detail,
             extract(epoch from now() - greatest(last_event_at, last_heartbeat_at))::float8 as idle_seconds
        from cdc_sources
       where source = ${source.name}`;
    // A row for another slot name is another configuration's history, not this slot's.
    return row && row.slot === source.slot ? row : undefined;
  } catch (error) {
    if ((error as { code?: string }).code === "42P01") return undefined; // undefined_table
    throw error;
  }
}

/** The source's slot and publication, with the reader's progress when a ledger connection is given. */
export async function sourceStatus(sourceSql: Sql, ledgerSql: Sql | null, source: ResolvedSource): Promise<SourceStatus> {
  const slot = await readSlot(sourceSql, source.slot);
  const publication = await readPublication(sourceSql, source.publication);
  const [current] = await sourceSql<Array<{ lsn: string | null }>>`
    select case when pg_is_in_recovery() then null else pg_current_wal_lsn()::text end as lsn`;
  const lsn = current?.lsn ?? null;
  const row = ledgerSql ? await readLedgerRow(ledgerSql, source) : undefined;
  const lagBytes = slot?.lag_bytes ?? null;
  const lagSeconds =
    lagBytes === null
      ? null
      : lagBytes <= 0
        ? 0
        : row?.idle_seconds !== undefined && row.idle_seconds !== null
          ? Math.max(0, row.idle_seconds)
          : null;
  const snapshotState: SnapshotState =
    ledgerSql === null
      ? "unknown"
      : !row
        ? "not_started"
        : row.snapshot_done_at
          ? "done"
          : row.snapshot_lsn || row.snapshot_waiting_for
            ? "in_progress"
            : "not_started";
  return {
    source: source.name,
    publication: {
      name: source.publication,
      exists: publication !== undefined,
      tables: publication?.tables ?? [],
      missing: tableKeys(source).filter((k) => !(publication?.tables ?? []).includes(k)),
    },
    slot: {
      name: source.slot,
      exists: slot !== undefined,
      active: slot?.active ?? false,
      activePid: slot?.active_pid ?? null,
      confirmedFlushLsn: slot?.confirmed_flush_lsn ?? null,
      restartLsn: slot?.restart_lsn ?? null,
      walStatus: slot?.wal_status ?? null,
    },
    currentLsn: lsn,
    lagBytes,
    lagSeconds,
    lastEventAt: row?.last_event_at ?? null,
    lastHeartbeatAt: row?.last_heartbeat_at ?? null,
    snapshot: {
      state: snapshotState,
      lsn: row?.snapshot_lsn ?? null,
      doneAt: row?.snapshot_done_at ?? null,
      rows: row ? row.snapshot_rows : null,
      waitingFor: row?.snapshot_done_at ? null : (row?.snapshot_waiting_for ?? null),
    },
    halted:
      row?.halted_at && row.halted_reason
        ? {
            reason: row.halted_reason,
            since: row.halted_at,
            message: row.halted_detail?.message ?? row.halted_reason,
            lastConfirmedLsn: row.halted_detail?.lastConfirmedLsn ?? null,
            lastConfirmedAt: row.halted_detail?.lastConfirmedAt ?? null,
          }
        : null,
    ledgerConfirmedLsn: row?.confirmed_lsn ?? null,
    counters: row ? { changes: row.changes, commands: row.commands, skipped: row.skipped, deadLetters: row.dead_letters } : null,
  };
}

// ---------------------------------------------------------------------------------------------
// drop

/** What `dropSource` removed (false: it was already gone). */
export interface DropResult {
  readonly slotDropped: boolean;
  /** The walsender that was streaming the slot and was terminated, if any. */
  readonly terminatedPid: number | null;
  readonly publicationDropped: boolean;
  readonly ledgerRowDeleted: boolean;
}

/**
 * Drops the slot (terminating a walsender still streaming it) and the publication, and with a
 * ledger connection forgets the source's `cdc_sources` row, so a decommissioned source holds no
 * WAL. Safe to run again. Stop the `cdc` role first: a running reader would recreate the slot.
 */
export async function dropSource(sql: Sql, source: ResolvedSource, ledgerSql: Sql | null = null): Promise<DropResult> {
  const database = await currentDatabase(sql);
  let slotDropped = false;
  let terminatedPid: number | null = null;
  const deadline = Date.now() + 10_000;
  for (;;) {
    const slot = await readSlot(sql, source.slot);
    if (!slot) break;
    if (slot.database !== database)
      throw new SourceAdminError(`replication slot ${source.slot} belongs to database ${slot.database ?? "(none)"}, not ${database}: not dropped`);
    if (slot.active_pid !== null) {
      const [row] = await sql<Array<{ ok: boolean }>>`select pg_terminate_backend(${slot.active_pid}) as ok`;
      if (!row?.ok)
        throw new SourceAdminError(`replication slot ${source.slot} is in use by process ${slot.active_pid}, which could not be terminated`);
      terminatedPid = slot.active_pid;
    }
    try {
      await sql`select pg_drop_replication_slot(${source.slot})`;
      slotDropped = true;
      break;
    } catch (error) {
      const code = (error as { code?: string }).code;
      if (code === "42704") break; // dropped by someone else meanwhile
      // 55006: still active: the terminated walsender has not exited yet, or a reader reconnected.
      if (code !== "55006" || Date.now() > deadline) throw error;
      await sleep(100);
    }
  }
  const [dropped] = await sql<Array<{ existed: boolean }>>`
    select exists (select 1 from pg_publication where pubname = ${source.publication}) as existed`;
  if (dropped?.existed) await sql.unsafe(`DROP PUBLICATION IF EXISTS ${quoteIdent(source.publication)}`);
  let ledgerRowDeleted = false;
  if (ledgerSql) {
    try {
      const rows = await ledgerSql`delete from cdc_sources where source = ${source.name}`;
      ledgerRowDeleted = rows.count > 0;
    } catch (error) {
      if ((error as { code?: string }).code !== "42P01") throw error;
    }
  }
  return { slotDropped, terminatedPid, publicationDropped: dropped?.existed ?? false, ledgerRowDeleted };
}

// ---------------------------------------------------------------------------------------------
// printing (the CLI's tables)

/** Plain text columns, padded to the widest cell. */
export function formatTable(headers: ReadonlyArray<string>, rows: ReadonlyArray<ReadonlyArray<string>>): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: ReadonlyArray<string>) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join("  ")
      .trimEnd();
  return `${[line(headers), line(widths.map((w) => "-".repeat(w))), ...rows.map(line)].join("\n")}\n`;
}

/** `tally source check`'s table: check, result (PASS/FAIL/WARN/INFO), detail, fix. */
export function formatChecks(results: ReadonlyArray<CheckResult>): string {
  return formatTable(
    ["check", "result", "detail", "fix"],
    results.map((r) => [r.check, r.level.toUpperCase(), r.detail, r.fix ?? ""]),
  );
}

const ago = (d: Date | null) => (d === null ? "-" : `${Math.max(0, Math.round((Date.now() - d.getTime()) / 1000))}s ago`);

/** What needs an operator: a halted source, tables missing from the publication, a snapshot waiting. */
function attention(s: SourceStatus): string {
  const out: Array<string> = [];
  if (s.halted)
    out.push(
      `HALTED since ${s.halted.since.toISOString()} (${s.halted.reason}): changes after ${s.halted.lastConfirmedLsn ?? "the last confirmed position"} may be missing; ` +
        `run tally source resnapshot ${s.source}`,
    );
  if (s.publication.missing.length > 0)
    out.push(`publication lacks ${s.publication.missing.join(", ")} (not captured): run tally source enable ${s.source}`);
  if (s.snapshot.waitingFor)
    out.push(
      `snapshot waits for ${s.snapshot.waitingFor.transactions.map((t) => `${t.pid === null ? "a prepared transaction" : `pid ${t.pid}`} (${Math.round(t.ageSeconds)}s)`).join(", ") || "running transactions"}`,
    );
  return out.join("; ");
}

/** `tally source status`'s table, one row per source. */
export function formatStatuses(statuses: ReadonlyArray<SourceStatus>): string {
  return formatTable(
    [
      "source",
      "slot",
      "state",
      "confirmed lsn",
      "lag bytes",
      "lag s",
      "wal",
      "last heartbeat",
      "snapshot",
      "changes",
      "commands",
      "dead letters",
      "attention",
    ],
    statuses.map((s) => [
      s.source,
      s.slot.name,
      s.halted ? "halted" : !s.slot.exists ? "missing" : s.slot.active ? "active" : "idle",
      s.slot.confirmedFlushLsn ?? "-",
      s.lagBytes === null ? "-" : String(s.lagBytes),
      s.lagSeconds === null ? "-" : s.lagSeconds.toFixed(1),
      s.slot.walStatus ?? "-",
      ago(s.lastHeartbeatAt),
      s.snapshot.state,
      s.counters ? String(s.counters.changes) : "-",
      s.counters ? String(s.counters.commands) : "-",
      s.counters ? String(s.counters.deadLetters) : "-",
      attention(s),
    ]),
  );
}
