import { readFileSync } from "node:fs";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { dropTestDatabase, testContext } from "./context.ts";
import { startNats, type NatsServer } from "./nats.ts";
import { startPostgres, type PostgresServer } from "./postgres.ts";

/** Runs `fn` with a short-lived postgres.js client. */
async function withSql<T>(url: string, fn: (sql: postgres.Sql) => Promise<T>): Promise<T> {
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  try {
    return await fn(sql);
  } finally {
    await sql.end({ timeout: 0 });
  }
}

async function walLevel(url: string): Promise<string> {
  return withSql(url, async (sql) => {
    const [row] = await sql<{ wal_level: string }[]>`show wal_level`;
    return row?.wal_level ?? "";
  });
}

/** True if the pid is running (zombies and missing pids count as not running). */
function isRunning(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const state = stat.slice(stat.lastIndexOf(")") + 2).split(" ")[0];
    return state !== "Z" && state !== "X";
  } catch {
    return false;
  }
}

describe("shared servers from globalSetup", () => {
  it("run Postgres with wal_level = logical", async () => {
    expect(await walLevel(inject("pgAdminUrl"))).toBe("logical");
  });

  it("run nats-server with JetStream enabled", async () => {
    const nc = await connect({ servers: inject("natsUrl") });
    try {
      const jsm = await jetstreamManager(nc);
      const info = await jsm.getAccountInfo();
      expect(info.limits).toBeDefined();
    } finally {
      await nc.close();
    }
  });
});

describe("a dedicated Postgres", () => {
  let pg: PostgresServer;
  beforeAll(async () => {
    pg = await startPostgres();
  });
  afterAll(async () => {
    await pg?.destroy();
  });

  it("keeps committed rows across kill() and start()", async () => {
    await withSql(pg.url(), async (sql) => {
      await sql`create table survivor (id int primary key, note text not null)`;
      await sql`insert into survivor values (1, 'before the crash')`;
    });
    await pg.kill();
    await pg.start();
    const rows = await withSql(pg.url(), (sql) => sql`select id, note from survivor`);
    expect(rows).toEqual([{ id: 1, note: "before the crash" }]);
  });

  it("kills busy backends too, and restart() comes back on the same port", async () => {
    const port = pg.port;
    const sql = postgres(pg.url(), { max: 1, onnotice: () => {} });
    const [row] = await sql<{ pid: number }[]>`select pg_backend_pid() as pid`;
    const backendPid = row!.pid;
    // Keep the backend busy so it cannot notice the postmaster's death on its own.
    const busy = sql`select pg_sleep(600)`.catch((error: unknown) => error);
    await new Promise((resolve) => setTimeout(resolve, 200));

    await pg.restart();
    expect(isRunning(backendPid)).toBe(false);
    expect(await busy).toBeInstanceOf(Error);
    await sql.end({ timeout: 0 });

    expect(pg.port).toBe(port);
    const rows = await withSql(pg.url(), (s) => s`select count(*)::int as n from survivor`);
    expect(rows).toEqual([{ n: 1 }]);
  });

  it("stops gracefully and starts again", async () => {
    await pg.stop();
    await expect(withSql(pg.url(), (sql) => sql`select 1`)).rejects.toThrow();
    await pg.start();
    expect(await walLevel(pg.url())).toBe("logical");
  });
});

describe("Postgres settings", () => {
  it("override the defaults", async () => {
    const pg = await startPostgres({ settings: { wal_level: "replica" } });
    try {
      expect(await walLevel(pg.url())).toBe("replica");
    } finally {
      await pg.destroy();
    }
  });
});

describe("a dedicated nats-server", () => {
  let nats: NatsServer;
  beforeAll(async () => {
    nats = await startNats();
  });
  afterAll(async () => {
    await nats?.destroy();
  });

  it("keeps JetStream streams and messages across restart()", async () => {
    const before = await connect({ servers: nats.url });
    try {
      const jsm = await jetstreamManager(before);
      await jsm.streams.add({ name: "SURVIVOR", subjects: ["survivor.>"] });
      const ack = await jetstream(before).publish("survivor.one", "before the crash");
      expect(ack.seq).toBe(1);
    } finally {
      await before.close();
    }

    await nats.restart();

    const after = await connect({ servers: nats.url });
    try {
      const jsm = await jetstreamManager(after);
      const info = await jsm.streams.info("SURVIVOR");
      expect(info.state.messages).toBe(1);
      const message = await jsm.streams.getMessage("SURVIVOR", { seq: 1 });
      expect(message?.subject).toBe("survivor.one");
      expect(message?.string()).toBe("before the crash");
    } finally {
      await after.close();
    }
  });
});

describe("testContext()", () => {
  it("gives each call its own database and env", async () => {
    const a = await testContext();
    const b = await testContext();
    try {
      expect(a.databaseUrl).not.toBe(b.databaseUrl);
      expect(a.env).not.toBe(b.env);
      for (const ctx of [a, b]) {
        expect(ctx.env).toMatch(/^[a-z0-9_]+$/);
        expect(ctx.natsUrl).toBe(inject("natsUrl"));
        const [row] = await withSql(ctx.databaseUrl, (sql) => sql<{ db: string }[]>`select current_database() as db`);
        expect(row?.db).toBe(`t_${ctx.env.slice(1)}`);
      }
    } finally {
      await dropTestDatabase(a);
      await dropTestDatabase(b);
    }
    const remaining = await withSql(
      a.adminUrl,
      (sql) => sql`select datname from pg_database where datname in (${`t_${a.env.slice(1)}`}, ${`t_${b.env.slice(1)}`})`,
    );
    expect(remaining).toEqual([]);
  });
});
