/**
 * The fixes patches/postgres+3.4.9.patch carries for postgres.js, each shown against a real server:
 * without the patch these fail.
 */
import net from "node:net";
import postgres from "postgres";
import { beforeAll, describe, expect, it } from "vitest";
import { testContext, type TestContext } from "./support/context.ts";

let ctx: TestContext;
beforeAll(async () => {
  ctx = await testContext();
});

describe("postgres.js, as patched", () => {
  // porsager/postgres#1189: when the connection's pipeline is full (or the socket pushes back),
  // BEGIN was written without reserving the connection: UNSAFE_TRANSACTION, and the server-side
  // transaction stayed open on a connection the pool handed to unrelated queries.
  it("reserves the connection whenever BEGIN is written, even at a full pipeline", async () => {
    const app = `tally-test-begin-${process.pid}`;
    // max_pipeline (undeclared in the typings): 0 makes every query fill the pipeline, as backpressure does under load.
    const sql = postgres(ctx.databaseUrl, { max: 2, onnotice: () => {}, connection: { application_name: app }, ...({ max_pipeline: 0 } as object) });
    try {
      const results = await Promise.all(Array.from({ length: 20 }, (_, i) => sql.begin(async (tx) => (await tx`select ${i}::int as n`)[0]!.n)));
      expect(results).toEqual(Array.from({ length: 20 }, (_, i) => i));
      const [{ open }] = await sql<[{ open: number }]>`
        select count(*)::int as open from pg_stat_activity where application_name = ${app} and state like 'idle in transaction%'`;
      expect(open).toBe(0);
    } finally {
      await sql.end({ timeout: 5 });
    }
  });

  // porsager/postgres#1192, #1205, #1223: a new connection's first statement is the driver's own array
  // types query, whose promise was dropped. When the server went away under it (killed, restarting),
  // its rejection was unhandled, which ends a Node process (seen in CI: a source Postgres killed -9).
  it("a connection lost during its array-types query fails the waiting query, with no unhandled rejection", async () => {
    const unhandled: Array<unknown> = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on("unhandledRejection", onUnhandled);
    const target = new URL(ctx.databaseUrl);
    // A proxy that forwards until the types query passes, then drops the connection and stops
    // listening: the server "died" mid-query and the driver's reconnect is refused.
    let typesQuerySeen = false;
    const proxy = net.createServer((client) => {
      const server = net.connect(Number(target.port || 5432), target.hostname);
      server.on("error", () => client.destroy());
      client.on("error", () => server.destroy());
      server.pipe(client);
      client.on("data", (chunk: Buffer) => {
        if (chunk.includes("typarray")) {
          typesQuerySeen = true;
          proxy.close();
          client.destroy();
          server.destroy();
          return;
        }
        server.write(chunk);
      });
    });
    await new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", resolve));
    const url = new URL(ctx.databaseUrl);
    url.hostname = "127.0.0.1";
    url.port = String((proxy.address() as net.AddressInfo).port);
    const sql = postgres(url.toString(), { max: 1, onnotice: () => {}, connect_timeout: 5 });
    try {
      const failed = await sql`select 1 as one`.then(
        () => null,
        (error: unknown) => error as Error & { code?: string },
      );
      expect(typesQuerySeen).toBe(true);
      expect(failed?.code).toBe("ECONNREFUSED");
      // Rejections are reported after the microtask queue drains: give them a turn of the event loop.
      await new Promise((resolve) => setTimeout(resolve, 50));
      expect(unhandled).toEqual([]);
    } finally {
      process.off("unhandledRejection", onUnhandled);
      await sql.end({ timeout: 1 });
      proxy.close();
    }
  });
});
