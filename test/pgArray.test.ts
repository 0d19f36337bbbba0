import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { arrayParam } from "../ledger/pgArray.ts";
import { connectPostgres, type Sql } from "../src/platform/db.ts";
import { dropTestDatabase, testContext, type TestContext } from "./support/context.ts";

let ctx: TestContext;
let sql: Sql;

beforeAll(async () => {
  ctx = await testContext();
  sql = connectPostgres(ctx.databaseUrl, { max: 1 });
});
afterAll(async () => {
  await sql?.end();
  await dropTestDatabase(ctx);
});

/** What Postgres reads from the parameter, element by element (a NULL as null; as JSON, which tells NULL from 'NULL'). */
async function roundTrip(values: Array<string | null>): Promise<Array<string | null>> {
  const [row] = await sql<[{ a: Array<string | null> }]>`select to_json(${arrayParam(values)}::text[]) as a`;
  return row!.a;
}

describe("batch columns as array literals", () => {
  it("every string arrives exactly as written, NULL as NULL", async () => {
    const values = [
      "plain",
      "",
      "NULL",
      "null",
      'a "quoted" word',
      "back\\slash \\\\ and \\n written out",
      "{braces}, commas, (parens)",
      "  spaces around  ",
      "ünïcødé 𝄞 and emoji 📦",
      '{"json":["in",1,null]}',
      null,
    ];
    expect(await roundTrip(values)).toEqual(values);
  });

  it("control characters and lone surrogates (escaped differently by JSON) take the slow path and arrive intact", async () => {
    const values = ["tab\there", "line\nbreak", "bell\u0007", "nul-free \u001f", "x\\y\nz"];
    expect(await roundTrip(values)).toEqual(values);
    // A lone surrogate is not valid UTF-8: it is sent (and read back) as U+FFFD, as by the driver's own arrays.
    expect(await roundTrip(["a\ud800b"])).toEqual(["a\ufffdb"]);
  });

  it("numbers, bigint text, timestamps and jsonb columns", async () => {
    const [row] = await sql<[{ n: Array<number>; b: Array<string>; t: Array<string | null>; j: Array<unknown> }]>`
      select ${arrayParam([1, -2, 32767])}::smallint[] as n,
             to_json(${arrayParam(["9223372036854775807", "-1", null])}::bigint[]::text[]) as b,
             to_json(${arrayParam(["2026-11-26T10:00:00.123Z", null])}::timestamptz[]) as t,
             to_json(${arrayParam([JSON.stringify({ a: 'q"uote', b: "back\\slash", c: [1, null] }), null])}::jsonb[]) as j`;
    expect(row!.n).toEqual([1, -2, 32767]);
    expect(row!.b).toEqual(["9223372036854775807", "-1", null]);
    expect(row!.t.map((d) => (d === null ? null : new Date(d).toISOString()))).toEqual(["2026-11-26T10:00:00.123Z", null]);
    expect(row!.j).toEqual([{ a: 'q"uote', b: "back\\slash", c: [1, null] }, null]);
  });

  it("an empty column is an empty array", async () => {
    expect(await roundTrip([])).toEqual([]);
  });
});
