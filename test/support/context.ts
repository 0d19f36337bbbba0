import { randomBytes } from "node:crypto";
import postgres from "postgres";
import { inject } from "vitest";

/** What one test file gets: its own database and env name on the run's shared servers. */
export interface TestContext {
  /** Environment name (`t<8 hex>`, matches `[a-z0-9_]+`); prefixes stream and consumer names. */
  env: string;
  /** URL of this file's own database `t_<same 8 hex>`. */
  databaseUrl: string;
  /** URL of the shared nats-server. */
  natsUrl: string;
  /** Superuser URL of the shared Postgres (database `postgres`). */
  adminUrl: string;
}

function withDatabase(url: string, database: string): string {
  const parsed = new URL(url);
  parsed.pathname = `/${database}`;
  return parsed.toString();
}

function databaseOf(url: string): string {
  return decodeURIComponent(new URL(url).pathname.slice(1));
}

async function asAdmin(adminUrl: string, statement: string): Promise<void> {
  const sql = postgres(adminUrl, { max: 1, onnotice: () => {} });
  try {
    await sql.unsafe(statement);
  } finally {
    await sql.end({ timeout: 5 });
  }
}

/**
 * Creates a fresh database on the shared Postgres and picks a matching env
 * name, so test files running side by side never see each other's rows or
 * streams. Call it once per file (e.g. in `beforeAll`).
 */
export async function testContext(): Promise<TestContext> {
  const adminUrl = inject("pgAdminUrl");
  const natsUrl = inject("natsUrl");
  const suffix = randomBytes(4).toString("hex");
  const database = `t_${suffix}`;
  await asAdmin(adminUrl, `create database ${database}`);
  return { env: `t${suffix}`, databaseUrl: withDatabase(adminUrl, database), natsUrl, adminUrl };
}

/**
 * Drops the context's database, disconnecting anyone still using it. Optional:
 * the whole server is deleted at the end of the run anyway.
 */
export async function dropTestDatabase(ctx: TestContext): Promise<void> {
  const database = databaseOf(ctx.databaseUrl);
  await asAdmin(ctx.adminUrl, `drop database if exists "${database.replaceAll('"', '""')}" with (force)`);
}
