/**
 * The fixes patches/postgres+3.4.9.patch carries for postgres.js, each shown against a real server:
 * without the patch these fail.
 */
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
});
