import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { LogicalReplicationService, PgoutputPlugin } from "pg-logical-replication";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { migrate } from "../ledger/index.ts";
import { decodeTallyConfig, type TallyConfigInput } from "../src/platform/configFile.ts";
import { connectPostgres, type Sql } from "../src/platform/db.ts";
import { testContext, type TestContext } from "../test/support/context.ts";
import { startPostgres, type PostgresServer } from "../test/support/postgres.ts";
import { ROOT, eventually, runTally } from "../test/support/tally.ts";
import { checkSource, dropSource, enableSource, enableSql, sourceStatus, type CheckResult } from "./admin.ts";
import { findSource, type ResolvedSource } from "./sources.ts";

const noMap = () => [];

/** A TallyConfig with one source `shop` capturing `tables`, resolved against `url`. */
function shopSource(ctx: TestContext, url: string, tables: Record<string, { oldRow?: "key" | "full" }>): ResolvedSource {
  const input: TallyConfigInput = {
    channels: { web: { locations: ["DC1"] } },
    sources: { shop: { tables: Object.fromEntries(Object.entries(tables).map(([k, t]) => [k, { map: noMap, ...t }])) } },
  };
  return findSource(decodeTallyConfig(input), "shop", ctx.env, { TALLY_SOURCE_SHOP_URL: url });
}

const CAPTURED = {
  "shop.products": {}, // primary key: fine
  "shop.movements": {}, // no primary key, REPLICA IDENTITY DEFAULT: deletes would be lost
  "shop.order_lines": { oldRow: "full" as const }, // primary key, but the mapping reads old rows
  "shop.stock": {}, // no primary key, but a unique index on NOT NULL columns
};

async function createShopTables(sql: Sql): Promise<void> {
  await sql.unsafe(`
    create schema shop;
    create table shop.products (id int primary key, sku text not null);
    create table shop.movements (sku text not null, qty int not null);
    create table shop.order_lines (id int primary key, sku text not null, status text not null);
    create table shop.stock (sku text not null, location text not null, qty int not null);
    create unique index stock_sku_location on shop.stock (sku, location);
  `);
}

const byCheck = (results: ReadonlyArray<CheckResult>, check: string) => {
  const r = results.find((x) => x.check === check);
  if (!r) throw new Error(`no check ${check} in ${results.map((x) => x.check).join(", ")}`);
  return r;
};

let ctx: TestContext;
let sql: Sql;
let source: ResolvedSource;

beforeAll(async () => {
  ctx = await testContext();
  sql = connectPostgres(ctx.databaseUrl, { max: 4, application: "test-admin" });
  await createShopTables(sql);
  source = shopSource(ctx, ctx.databaseUrl, CAPTURED);
});

afterAll(async () => {
  if (sql) {
    if (source) await dropSource(sql, source).catch(() => undefined);
    await sql.end({ timeout: 5 });
  }
});

describe("checkSource", () => {
  it("names each table without a usable replica identity, with the SQL that fixes it", async () => {
    const results = await checkSource(sql, source);

    expect(byCheck(results, "wal_level")).toMatchObject({ ok: true, level: "pass" });
    expect(byCheck(results, "replication slots")).toMatchObject({ ok: true });
    expect(byCheck(results, "wal senders")).toMatchObject({ ok: true });
    expect(byCheck(results, "replication role")).toMatchObject({ ok: true, detail: "postgres is a superuser" });
    for (const t of Object.keys(CAPTURED)) expect(byCheck(results, `select ${t}`)).toMatchObject({ ok: true });

    expect(byCheck(results, "replica identity shop.products")).toMatchObject({ ok: true, detail: "DEFAULT, primary key (id)" });
    const movements = byCheck(results, "replica identity shop.movements");
    expect(movements).toMatchObject({ ok: false, level: "fail" });
    expect(movements.detail).toContain("deletes would not be captured");
    expect(movements.fix).toMatch(/^ALTER TABLE shop\.movements REPLICA IDENTITY FULL;/);
    expect(movements.fix).toContain("ALTER TABLE shop.movements ADD PRIMARY KEY (");
    const lines = byCheck(results, "replica identity shop.order_lines");
    expect(lines).toMatchObject({ ok: false, fix: "ALTER TABLE shop.order_lines REPLICA IDENTITY FULL;" });
    expect(lines.detail).toContain("oldRow: 'full'");
    const stock = byCheck(results, "replica identity shop.stock");
    expect(stock).toMatchObject({ ok: false });
    expect(stock.fix).toMatch(/^ALTER TABLE shop\.stock REPLICA IDENTITY USING INDEX stock_sku_location;/);

    // The shared test server leaves max_slot_wal_keep_size at its default, -1.
    expect(byCheck(results, "max_slot_wal_keep_size")).toMatchObject({
      ok: true,
      level: "warn",
      fix: "ALTER SYSTEM SET max_slot_wal_keep_size = '10GB'; SELECT pg_reload_conf();",
    });
    // Before `enable`: reported, not failed.
    expect(byCheck(results, "publication")).toMatchObject({ ok: true, level: "info" });
    expect(byCheck(results, "slot")).toMatchObject({ ok: true, level: "info" });
    expect(
      results
        .filter((r) => !r.ok)
        .map((r) => r.check)
        .sort(),
    ).toEqual(["replica identity shop.movements", "replica identity shop.order_lines", "replica identity shop.stock"]);
    for (const r of results.filter((x) => !x.ok)) expect(r.fix).not.toBeNull();

    // Each fix is runnable SQL as given.
    for (const r of results.filter((x) => !x.ok)) await sql.unsafe(r.fix!);
    const after = await checkSource(sql, source);
    expect(after.filter((r) => !r.ok)).toEqual([]);
    expect(byCheck(after, "replica identity shop.movements").detail).toBe("FULL: old rows carry every column");
    expect(byCheck(after, "replica identity shop.order_lines").detail).toBe("FULL: old rows carry every column");
    expect(byCheck(after, "replica identity shop.stock").detail).toBe("USING INDEX stock_sku_location");
  });

  it("fails a table that does not exist, and one with REPLICA IDENTITY NOTHING", async () => {
    await sql.unsafe(`create table shop.notes (id int primary key, body text); alter table shop.notes replica identity nothing`);
    const other = shopSource(ctx, ctx.databaseUrl, { "shop.notes": {}, "shop.missing": {}, "nosuch.table": {} });
    const results = await checkSource(sql, other);
    expect(byCheck(results, "table shop.missing")).toMatchObject({ ok: false, detail: "does not exist" });
    expect(byCheck(results, "table nosuch.table")).toMatchObject({ ok: false, detail: "does not exist (no schema nosuch)" });
    const notes = byCheck(results, "replica identity shop.notes");
    expect(notes).toMatchObject({ ok: false, detail: "NOTHING: deletes would not be captured" });
    expect(notes.fix).toMatch(/^ALTER TABLE shop\.notes REPLICA IDENTITY USING INDEX notes_pkey;/);
  });

  it("names the REPLICATION right and the grants a plain role lacks", async () => {
    const role = `tally_reader_${ctx.env}`;
    await sql.unsafe(`create role ${role} login`);
    const url = new URL(ctx.databaseUrl);
    url.username = role;
    const asRole = connectPostgres(url.toString(), { max: 1, application: "test-admin-role" });
    try {
      const results = await checkSource(asRole, source);
      expect(byCheck(results, "replication role")).toMatchObject({ ok: false, fix: `ALTER ROLE ${role} WITH REPLICATION;` });
      const select = byCheck(results, "select shop.products");
      expect(select).toMatchObject({ ok: false, fix: `GRANT USAGE ON SCHEMA shop TO ${role}; GRANT SELECT ON shop.products TO ${role};` });
      // It owns no table: the publication needs a DBA.
      expect(byCheck(results, "publication").fix).toBe("tally source enable shop --print-sql  (for a DBA to run)");

      for (const r of results.filter((x) => !x.ok)) await sql.unsafe(r.fix!);
      const after = await checkSource(asRole, source);
      expect(after.filter((r) => !r.ok)).toEqual([]);
      expect(byCheck(after, "replication role").detail).toBe(`${role} has REPLICATION`);
    } finally {
      await asRole.end({ timeout: 5 });
      await sql.unsafe(`drop owned by ${role}; drop role ${role}`);
    }
  });
});

describe("enableSource, sourceStatus, dropSource", () => {
  it("enableSql is the publication, then the slot", () => {
    expect(enableSql(source)).toEqual([
      `CREATE PUBLICATION tally_${ctx.env}_shop FOR TABLE shop.movements, shop.order_lines, shop.products, shop.stock;`,
      `SELECT pg_create_logical_replication_slot('tally_${ctx.env}_shop', 'pgoutput');`,
    ]);
    expect(enableSql(source, { publication: { tablesMatch: false, publishesChanges: true }, slotExists: true })).toEqual([
      `ALTER PUBLICATION tally_${ctx.env}_shop SET TABLE shop.movements, shop.order_lines, shop.products, shop.stock;`,
    ]);
  });

  it("enable creates the publication and slot, again is a no-op, and a new table updates the publication", async () => {
    const first = await enableSource(sql, source);
    expect(first).toMatchObject({ publication: "created", slot: "created" });
    const [slot] = await sql`select plugin, database from pg_replication_slots where slot_name = ${source.slot}`;
    expect(slot).toMatchObject({ plugin: "pgoutput", database: (await sql`select current_database() as d`)[0]!.d });
    const tables = await sql`select schemaname || '.' || tablename as t from pg_publication_tables where pubname = ${source.publication} order by 1`;
    expect(tables.map((r) => r.t)).toEqual(["shop.movements", "shop.order_lines", "shop.products", "shop.stock"]);

    expect(await enableSource(sql, source)).toEqual({ publication: "unchanged", slot: "exists", statements: [] });

    const fewer = shopSource(ctx, ctx.databaseUrl, { "shop.products": {}, "shop.stock": {} });
    const updated = await enableSource(sql, fewer);
    expect(updated).toMatchObject({ publication: "updated", slot: "exists" });
    expect(updated.statements).toEqual([`ALTER PUBLICATION tally_${ctx.env}_shop SET TABLE shop.products, shop.stock;`]);
    expect(await enableSource(sql, source)).toMatchObject({ publication: "updated" });

    const checked = await checkSource(sql, source);
    expect(byCheck(checked, "publication")).toMatchObject({ level: "pass" });
    expect(byCheck(checked, "slot")).toMatchObject({ level: "info", ok: true });
    expect(byCheck(checked, "replication slots").detail).toContain(`one is ours: ${source.slot}`);
  });

  it("status shows the slot and its lag; with a ledger, the reader's progress", async () => {
    await sql`insert into shop.products values (1, 'SKU-1')`;
    const status = await sourceStatus(sql, null, source);
    expect(status.slot).toMatchObject({ name: source.slot, exists: true, active: false, activePid: null });
    expect(status.slot.confirmedFlushLsn).toMatch(/^[0-9A-F]+\/[0-9A-F]+$/);
    expect(status.publication).toMatchObject({ exists: true, tables: ["shop.movements", "shop.order_lines", "shop.products", "shop.stock"] });
    expect(status.lagBytes).toBeGreaterThan(0); // the insert above is behind the slot
    expect(status.lagSeconds).toBeNull(); // no ledger: nobody has confirmed anything
    expect(status.snapshot.state).toBe("unknown");
    expect(status.counters).toBeNull();

    // The ledger lives in the same database here (its tables are in public, the source's in shop).
    await migrate(sql, ctx.env);
    expect((await sourceStatus(sql, sql, source)).snapshot.state).toBe("not_started");
    await sql`
      insert into cdc_sources (source, slot, publication, snapshot_lsn, snapshot_done_at, snapshot_rows, confirmed_lsn,
                               last_event_at, last_heartbeat_at, changes, commands, skipped, dead_letters)
      values ('shop', ${source.slot}, ${source.publication}, '0/1', now() - interval '1 hour', 12, '0/2',
              now() - interval '30 seconds', now() - interval '5 seconds', 40, 38, 1, 1)`;
    const withLedger = await sourceStatus(sql, sql, source);
    expect(withLedger.snapshot).toMatchObject({ state: "done", lsn: "0/1", rows: 12 });
    expect(withLedger.counters).toEqual({ changes: 40, commands: 38, skipped: 1, deadLetters: 1 });
    expect(withLedger.ledgerConfirmedLsn).toBe("0/2");
    expect(withLedger.lastHeartbeatAt).toBeInstanceOf(Date);
    expect(withLedger.lagSeconds).toBeGreaterThanOrEqual(5);
    expect(withLedger.lagSeconds).toBeLessThan(60);
  });

  it("drop terminates the walsender streaming the slot, drops slot and publication and the ledger row; again is a no-op", async () => {
    const stream = new LogicalReplicationService({ connectionString: ctx.databaseUrl }, { acknowledge: { auto: false, timeoutSeconds: 0 } });
    stream.on("error", () => undefined);
    void stream.subscribe(new PgoutputPlugin({ protoVersion: 1, publicationNames: [source.publication] }), source.slot).catch(() => undefined);
    try {
      await eventually("the slot to be streamed", async () => (await sourceStatus(sql, null, source)).slot.active, 20_000);
      const active = await sourceStatus(sql, null, source);
      const checked = await checkSource(sql, source);
      expect(byCheck(checked, "wal senders").detail).toContain("one streams our slot");

      const dropped = await dropSource(sql, source, sql);
      expect(dropped).toEqual({ slotDropped: true, terminatedPid: active.slot.activePid, publicationDropped: true, ledgerRowDeleted: true });
    } finally {
      await stream.stop().catch(() => undefined);
    }
    expect(await sql`select 1 from pg_replication_slots where slot_name = ${source.slot}`).toHaveLength(0);
    expect(await sql`select 1 from pg_publication where pubname = ${source.publication}`).toHaveLength(0);
    expect(await sql`select 1 from cdc_sources where source = 'shop'`).toHaveLength(0);

    expect(await dropSource(sql, source, sql)).toEqual({
      slotDropped: false,
      terminatedPid: null,
      publicationDropped: false,
      ledgerRowDeleted: false,
    });
    const status = await sourceStatus(sql, sql, source);
    expect(status.slot.exists).toBe(false);
    expect(status.publication.exists).toBe(false);
    expect(status.lagBytes).toBeNull();
  });
});

describe("tally source (CLI)", () => {
  let dir: string;
  let configFile: string;
  let replica: PostgresServer | undefined;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "tally-source-"));
    // An ES module package, as the repository is: the tsx loader needs it to import the config.
    await writeFile(path.join(dir, "package.json"), '{ "type": "module" }\n');
    configFile = path.join(dir, "tally.config.ts");
    await writeFile(
      configFile,
      `import { defineConfig } from ${JSON.stringify(path.join(ROOT, "src/platform/configFile.ts"))};
export default defineConfig({
  channels: { web: { locations: ["DC1"] } },
  sources: { shop: { tables: { "shop.products": { map: () => [] }, "shop.stock": { map: () => [] } } } },
});
`,
    );
  });

  afterAll(async () => {
    await replica?.destroy();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const cliEnv = (sourceUrl: string, extra: Record<string, string> = {}) => ({
    TALLY_ENV: ctx.env,
    TALLY_CONFIG: configFile,
    TALLY_SOURCE_SHOP_URL: sourceUrl,
    TALLY_DATABASE_URL: "",
    ...extra,
  });

  it("`source check` on a server with wal_level=replica fails, names wal_level and its fix", async () => {
    replica = await startPostgres({ settings: { wal_level: "replica" } });
    const admin = postgres(replica.url(), { max: 1, onnotice: () => {} });
    try {
      await admin.unsafe(`create schema shop;
        create table shop.products (id int primary key, sku text not null);
        create table shop.stock (sku text not null, location text not null, qty int not null, primary key (sku, location))`);
    } finally {
      await admin.end({ timeout: 5 });
    }
    const { code, output, stdout } = await runTally(["source", "check", "shop"], cliEnv(replica.url()));
    expect(code, output).toBe(3); // a check ran and found a problem (the CLI's exit codes)
    const walLine = stdout.split("\n").find((l) => l.startsWith("wal_level"));
    expect(walLine, stdout).toMatch(/^wal_level\s+FAIL\s+is replica; logical decoding needs logical\s+ALTER SYSTEM SET wal_level = logical;/);
    expect(walLine).toContain("restart Postgres");
    expect(stdout).toMatch(/^check\s+result\s+detail\s+fix$/m);
    expect(stdout).toMatch(/^replica identity shop\.products\s+PASS/m);
    expect(stdout).toMatch(/^max_slot_wal_keep_size\s+WARN\s+.*ALTER SYSTEM SET max_slot_wal_keep_size = '10GB'; SELECT pg_reload_conf\(\);$/m);
    expect(output).toContain("source check: failed");

    // The keep-size fix, applied as given, takes effect without a restart.
    const fixer = postgres(replica.url(), { max: 1, onnotice: () => {} });
    try {
      // One statement at a time, as psql sends them (ALTER SYSTEM refuses a multi-statement query string).
      await fixer.unsafe("ALTER SYSTEM SET max_slot_wal_keep_size = '10GB'");
      await fixer.unsafe("SELECT pg_reload_conf()");
    } finally {
      await fixer.end({ timeout: 5 });
    }
    const onReplica = postgres(replica.url(), { max: 1, onnotice: () => {} });
    try {
      const source = shopSource(ctx, replica.url(), { "shop.products": {} });
      const after = await checkSource(onReplica, source);
      expect(byCheck(after, "max_slot_wal_keep_size")).toMatchObject({ level: "pass", detail: expect.stringMatching(/^10GB: /) });
      expect(byCheck(after, "wal_level")).toMatchObject({ ok: false }); // set on the command line: only a restart without it helps
    } finally {
      await onReplica.end({ timeout: 5 });
    }
  });

  it("enable --print-sql, enable, status, drop", async () => {
    const printed = await runTally(["source", "enable", "shop", "--print-sql"], cliEnv("", { TALLY_SOURCE_SHOP_URL: "" }));
    expect(printed.code, printed.output).toBe(0);
    expect(printed.stdout).toContain(`CREATE PUBLICATION tally_${ctx.env}_shop FOR TABLE shop.products, shop.stock;\n`);
    expect(printed.stdout).toContain(`SELECT pg_create_logical_replication_slot('tally_${ctx.env}_shop', 'pgoutput');\n`);

    const passing = await runTally(["source", "check", "shop"], cliEnv(ctx.databaseUrl));
    expect(passing.code, passing.output).toBe(0);

    const enabled = await runTally(["source", "enable", "shop"], cliEnv(ctx.databaseUrl));
    expect(enabled.code, enabled.output).toBe(0);
    expect(enabled.stdout).toContain(`source shop: publication tally_${ctx.env}_shop created, slot tally_${ctx.env}_shop created`);

    await migrate(sql, ctx.env); // status reads the reader's progress from a migrated ledger
    const table = await runTally(["source", "status"], cliEnv(ctx.databaseUrl, { TALLY_DATABASE_URL: ctx.databaseUrl }));
    expect(table.code, table.output).toBe(0);
    expect(table.stdout).toMatch(/^source\s+slot\s+state\s+confirmed lsn\s+lag bytes\s+lag s/);
    expect(table.stdout).toMatch(new RegExp(`^shop\\s+tally_${ctx.env}_shop\\s+idle\\s+[0-9A-F]+/[0-9A-F]+\\s+\\d+`, "m"));

    const json = await runTally(["source", "status", "shop", "--json"], cliEnv(ctx.databaseUrl));
    expect(json.code, json.output).toBe(0);
    const [status] = JSON.parse(json.stdout) as Array<{ source: string; slot: { exists: boolean }; lagBytes: number }>;
    expect(status).toMatchObject({ source: "shop", slot: { exists: true } });
    expect(status!.lagBytes).toBeGreaterThanOrEqual(0);

    const dropped = await runTally(["source", "drop", "shop"], cliEnv(ctx.databaseUrl));
    expect(dropped.code, dropped.output).toBe(0);
    expect(dropped.stdout).toContain(`slot tally_${ctx.env}_shop dropped, publication tally_${ctx.env}_shop dropped`);
    const again = await runTally(["source", "drop", "shop"], cliEnv(ctx.databaseUrl));
    expect(again.stdout).toContain("already gone");
  }, 240_000); // seven CLI processes, each loading TypeScript: ~60 s alone, twice that under a full run's load

  it("names an undeclared source and a missing URL", async () => {
    const unknown = await runTally(["source", "check", "erp"], cliEnv(ctx.databaseUrl));
    expect(unknown.code).toBe(1);
    expect(unknown.output).toContain('tally: source "erp" is not declared in tally.config.ts (declared: shop)');
    const noUrl = await runTally(["source", "check", "shop"], cliEnv(""));
    expect(noUrl.code).toBe(1);
    expect(noUrl.output).toContain("tally: TALLY_SOURCE_SHOP_URL: is not set");
  });
});
