/**
 * The GL insert's guarantees, checked once per statement (insertJournals, migration 0106): a batch
 * with one unbalanced journal among balanced ones is refused whole; lines naming no journal are
 * refused (what gl_lines' foreign key did, line by line); each journal of a batch posts on the
 * posting date of its own business date, worked out once per distinct date, closed months honoured;
 * a journal already there is left alone, lines and all.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { insertJournals, migrate, type JournalInsert } from "../ledger/index.ts";
import { connectPostgres, type Sql } from "../src/platform/db.ts";
import { dropTestDatabase, testContext, type TestContext } from "./support/context.ts";

let ctx: TestContext;
let sql: Sql;

beforeAll(async () => {
  ctx = await testContext();
  sql = connectPostgres(ctx.databaseUrl, { max: 2, application: "test" });
  await migrate(sql, ctx.env);
});

afterAll(async () => {
  await sql?.end({ timeout: 5 });
  if (ctx) await dropTestDatabase(ctx);
});

/** A journal of a debit line per amount and one credit line of their sum (or of `credit` when given: unbalanced). */
function journal(journalId: string, businessDate: string, debits: ReadonlyArray<number>, credit?: number): JournalInsert {
  const total = debits.reduce((a, b) => a + b, 0);
  const line = (n: number, account: string, debit: number, credit: number) => ({
    line: n,
    account,
    costCenter: "CC-DC1",
    debit,
    credit,
    sku: "SKU-1",
    qty: 1,
    unit: "each",
    leg: n,
    memo: null,
  });
  return {
    journalId,
    kind: "inventory",
    businessDate,
    currency: "EUR",
    commandId: journalId,
    movement: "receive",
    sourceSystem: "test",
    sourceRef: journalId,
    lines: [...debits.map((d, i) => line(i + 1, "1400", d, 0)), line(debits.length + 1, "2100", 0, credit ?? total)],
  };
}

async function count(prefix: string): Promise<{ journals: number; lines: number }> {
  const [row] = await sql<[{ journals: number; lines: number }]>`
    select (select count(*)::int from gl_journals where journal_id like ${`${prefix}%`}) as journals,
           (select count(*)::int from gl_lines where journal_id like ${`${prefix}%`}) as lines`;
  return row;
}

describe("GL journal insert", () => {
  it("refuses a batch with one unbalanced journal among balanced ones, whole", async () => {
    const batch = [journal("ub-1", "2026-12-01", [100, 250]), journal("ub-2", "2026-12-01", [70], 69), journal("ub-3", "2026-12-02", [5, 5, 5])];
    await expect(insertJournals(sql, batch)).rejects.toThrow("GL journal ub-2 does not balance: debit 70 <> credit 69");
    expect(await count("ub-")).toEqual({ journals: 0, lines: 0 });
    const posted = await insertJournals(sql, [batch[0]!, batch[2]!]);
    expect(posted.map((p) => p.journalId).sort()).toEqual(["ub-1", "ub-3"]);
    expect(await count("ub-")).toEqual({ journals: 2, lines: 7 });
  });

  it("refuses lines whose journal is not in gl_journals", async () => {
    await insertJournals(sql, [journal("fk-1", "2026-12-01", [10])]);
    const orphan = sql`
      insert into gl_lines (journal_id, line, account, cost_center, debit, credit)
      values ('fk-1', 3, '1400', 'CC-DC1', 4, 0), ('fk-1', 4, '2100', 'CC-DC1', 0, 4),
             ('fk-2', 1, '1400', 'CC-DC1', 4, 0), ('fk-2', 2, '2100', 'CC-DC1', 0, 4)`;
    await expect(orphan).rejects.toMatchObject({ code: "23503", message: "GL lines of journal fk-2 have no journal in gl_journals" });
    expect(await count("fk-")).toEqual({ journals: 1, lines: 2 });
  });

  it("posts each journal of a batch on its own business date's posting date; one already there is left alone", async () => {
    await sql`select tally_gl_close_period('2026-08', 'test')`;
    await sql`select tally_gl_close_period('2026-09', 'test')`;
    await insertJournals(sql, [journal("pd-0", "2026-07-31", [1])]);
    const posted = await insertJournals(sql, [
      journal("pd-1", "2026-08-15", [10]),
      journal("pd-2", "2026-10-03", [20, 30]),
      journal("pd-0", "2026-07-31", [999, 1]), // already there: neither it nor its lines again
      journal("pd-3", "2026-09-30", [40]),
      journal("pd-4", "2026-10-03", [50]),
    ]);
    expect([...posted].sort((a, b) => a.journalId.localeCompare(b.journalId))).toEqual([
      { journalId: "pd-1", postedOn: "2026-10-01" },
      { journalId: "pd-2", postedOn: "2026-10-03" },
      { journalId: "pd-3", postedOn: "2026-10-01" },
      { journalId: "pd-4", postedOn: "2026-10-03" },
    ]);
    const rows = await sql<Array<{ journal_id: string; business_date: string; posted_on: string; period: string; lines: number }>>`
      select j.journal_id, j.business_date::text, j.posted_on::text, j.period, (select count(*)::int from gl_lines l where l.journal_id = j.journal_id) as lines
        from gl_journals j where j.journal_id like 'pd-%' order by j.journal_id`;
    expect(rows).toEqual([
      { journal_id: "pd-0", business_date: "2026-07-31", posted_on: "2026-07-31", period: "2026-07", lines: 2 },
      { journal_id: "pd-1", business_date: "2026-08-15", posted_on: "2026-10-01", period: "2026-10", lines: 2 },
      { journal_id: "pd-2", business_date: "2026-10-03", posted_on: "2026-10-03", period: "2026-10", lines: 3 },
      { journal_id: "pd-3", business_date: "2026-09-30", posted_on: "2026-10-01", period: "2026-10", lines: 2 },
      { journal_id: "pd-4", business_date: "2026-10-03", posted_on: "2026-10-03", period: "2026-10", lines: 2 },
    ]);
  });
});
