import { appendFile, cp, mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import type { TransactionSql } from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MigrationError, migrate } from "../ledger/index.ts";
import { connectPostgres } from "../src/platform/db.ts";
import { dropTestDatabase, testContext, type TestContext } from "./support/context.ts";
import { ROOT, harness, runTally, spawnTally, startInProcess, tallyEnv, type Harness } from "./support/tally.ts";

const MIGRATIONS = path.join(ROOT, "migrations");

let ctx: TestContext;
const extraContexts: Array<TestContext> = [];

/** Another fresh, un-migrated database (dropped after the file). */
async function freshContext(): Promise<TestContext> {
  const c = await testContext();
  extraContexts.push(c);
  return c;
}

beforeAll(async () => {
  ctx = await testContext();
});

afterAll(async () => {
  for (const c of extraContexts) await dropTestDatabase(c);
});

/** Waits for a spawned CLI to exit; kills it (and fails) if it is still running after `ms`. */
async function exitWithin(child: ReturnType<typeof spawnTally>, ms: number): Promise<number | null> {
  if (child.exitCode !== null) return child.exitCode;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`still running after ${ms} ms; output:\n${child.output()}`));
    }, ms);
    child.on("exit", (code) => {
      clearTimeout(timer);
      resolve(code);
    });
  });
}

const ndjson = (commands: ReadonlyArray<object>): string => `${commands.map((c) => JSON.stringify(c)).join("\n")}\n`;

function command(id: string, type: string, sku: string, location: string, qty: number, extra: object = {}) {
  return {
    id,
    type,
    sku,
    location,
    qty,
    source: { system: "erp", ref: `ref-${id}` },
    occurredAt: "2026-11-26T10:00:00Z",
    ...extra,
  };
}

/** Every migration file, in order. */
const migrationFiles = async (): Promise<Array<string>> => (await readdir(MIGRATIONS)).filter((f) => f.endsWith(".sql")).sort();

describe("tally migrate", () => {
  it("applies 0001 (and every other file) on an empty database and is up to date the second time", async () => {
    const files = await migrationFiles();
    expect(files[0]).toBe("0001_ledger.sql");
    const first = await runTally(["migrate"], tallyEnv(ctx));
    expect(first.output).toContain(`migrate: applied ${files.join(", ")} (environment ${ctx.env})`);
    expect(first.code).toBe(0);

    const second = await runTally(["migrate"], tallyEnv(ctx));
    expect(second.output).toContain(`migrate: up to date (environment ${ctx.env})`);
    expect(second.code).toBe(0);

    const sql = connectPostgres(ctx.databaseUrl, { max: 1 });
    try {
      const rows = await sql<Array<{ id: number; name: string }>>`select id, name from tally_migrations order by id`;
      expect(rows.map((r) => r.name)).toEqual(files);
      const meta = await sql<Array<{ value: string }>>`select value from tally_meta where key = 'environment'`;
      expect(meta.map((m) => m.value)).toEqual([ctx.env]);
    } finally {
      await sql.end({ timeout: 5 });
    }
  });

  it("lets two processes migrate a fresh database at once: each file is applied exactly once", async () => {
    const fresh = await freshContext();
    const a = connectPostgres(fresh.databaseUrl, { max: 1, application: "migrate-a" });
    const b = connectPostgres(fresh.databaseUrl, { max: 1, application: "migrate-b" });
    try {
      const results = await Promise.all([migrate(a, fresh.env), migrate(b, fresh.env)]);
      const files = await migrationFiles();
      // One of them applied everything, the other found it done.
      const applied = results.map((r) => r.applied).sort((x, y) => y.length - x.length);
      expect(applied).toEqual([files, []]);

      const rows = await a<Array<{ id: number; name: string; n: number }>>`
        select id, name, count(*) over (partition by id)::int as n from tally_migrations order by id`;
      expect(rows.map((r) => r.name)).toEqual(files);
      expect(rows.every((r) => r.n === 1)).toBe(true);
      const meta = await a<Array<{ key: string; value: string }>>`select key, value from tally_meta where key = 'environment'`;
      expect(meta).toEqual([{ key: "environment", value: fresh.env }]);
    } finally {
      await a.end({ timeout: 5 });
      await b.end({ timeout: 5 });
    }
  });

  it("refuses a migration file that changed after it was applied, naming the file", async () => {
    const fresh = await freshContext();
    const dir = await mkdtemp(path.join(tmpdir(), "tally-migrations-"));
    const sql = connectPostgres(fresh.databaseUrl, { max: 2 });
    try {
      await cp(MIGRATIONS, dir, { recursive: true });
      const first = await migrate(sql, fresh.env, dir);
      expect(first.applied).toEqual(await migrationFiles());
      const [before] = await sql<Array<{ checksum: string }>>`select checksum from tally_migrations where id = 1`;

      await appendFile(path.join(dir, "0001_ledger.sql"), "\ncreate table sneaked_in (id int);\n");
      const refused = await migrate(sql, fresh.env, dir).then(
        () => null,
        (e: unknown) => e,
      );
      expect(refused).toBeInstanceOf(MigrationError);
      expect((refused as Error).message).toMatch(/^0001_ledger\.sql: changed after it was applied/);

      // Nothing of the edit ran, the recorded checksum is untouched, and the advisory lock was
      // released: the unedited files still migrate (as up to date) on the same pool.
      const [after] = await sql<Array<{ checksum: string }>>`select checksum from tally_migrations where id = 1`;
      expect(after!.checksum).toBe(before!.checksum);
      const [sneaked] = await sql<Array<{ t: string | null }>>`select to_regclass('sneaked_in')::text as t`;
      expect(sneaked!.t).toBeNull();
      await cp(path.join(MIGRATIONS, "0001_ledger.sql"), path.join(dir, "0001_ledger.sql"));
      expect((await migrate(sql, fresh.env, dir)).applied).toEqual([]);
    } finally {
      await sql.end({ timeout: 5 });
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("a process of another environment", () => {
  beforeAll(async () => {
    const sql = connectPostgres(ctx.databaseUrl, { max: 1 });
    try {
      await migrate(sql, ctx.env);
    } finally {
      await sql.end({ timeout: 5 });
    }
  });

  it("`ledger verify` refuses, naming both environments", async () => {
    const r = await runTally(["ledger", "verify"], { ...tallyEnv(ctx), TALLY_ENV: "other_env" });
    expect(r.code).not.toBe(0);
    expect(r.output).toContain('"other_env"');
    expect(r.output).toContain(`"${ctx.env}"`);
    expect(r.output).not.toMatch(/\n\s+at /); // one line, no stack trace
  });

  it("`start` refuses to start and exits", async () => {
    const child = spawnTally(["start"], { ...tallyEnv(ctx), TALLY_ENV: "other_env" });
    child.stdin!.end();
    const code = await exitWithin(child, 30_000);
    expect(code).not.toBe(0);
    expect(child.output()).toContain('TALLY_ENV is "other_env"');
    expect(child.output()).toContain(`belongs to environment "${ctx.env}"`);
    expect(child.output()).not.toMatch(/\n\s+at /);
  });

  it("`migrate` does not re-label the database", async () => {
    const r = await runTally(["migrate"], { ...tallyEnv(ctx), TALLY_ENV: "other_env" });
    expect(r.code).not.toBe(0);
    expect(r.output).toContain('"other_env"');
    const sql = connectPostgres(ctx.databaseUrl, { max: 1 });
    try {
      const meta = await sql<Array<{ value: string }>>`select value from tally_meta where key = 'environment'`;
      expect(meta.map((m) => m.value)).toEqual([ctx.env]);
    } finally {
      await sql.end({ timeout: 5 });
    }
  });

  it("an un-migrated database is refused with a hint to run `tally migrate`", async () => {
    const fresh = await freshContext();
    const verify = await runTally(["ledger", "verify"], tallyEnv(fresh));
    expect(verify.code).toBe(1); // could not check (3 means: checked, and found a mismatch)
    expect(verify.output).toContain("run `tally migrate`");

    const child = spawnTally(["start"], tallyEnv(fresh));
    child.stdin!.end();
    expect(await exitWithin(child, 30_000)).not.toBe(0);
    expect(child.output()).toContain("run `tally migrate`");
  });
});

describe("the ledger", () => {
  let h: Harness;
  /** SKU → its entries in chain order. */
  let chain: Map<string, Array<{ entry_id: number; sku_seq: number; command_id: string }>>;
  let totalEntries: number;

  const commands = [
    command("L:a1", "receive", "SKU-A", "DC1", 10),
    command("L:a2", "sell", "SKU-A", "DC1", 2),
    command("L:a3", "receive", "SKU-A", "S01", 5),
    command("L:a4", "reserve", "SKU-A", "DC1", 3, { reservationId: "L:a4" }),
    command("L:b1", "receive", "SKU-B", "S01", 7),
    command("L:b2", "adjust", "SKU-B", "S01", -1, { reason: "shrink" }),
  ];

  beforeAll(async () => {
    h = await harness(ctx);
    const tally = await startInProcess(ctx, ["worker", "relay"]);
    try {
      const r = await runTally(["submit", "-", "--wait"], tallyEnv(ctx), ndjson(commands));
      expect(r.stdout).toContain("accepted 6  rejected 0");
      expect(r.code).toBe(0);
    } finally {
      await tally.close();
    }
    const rows = await h.sql<Array<{ entry_id: number; sku: string; sku_seq: number; command_id: string }>>`
      select entry_id, sku, sku_seq, command_id from ledger_entries order by sku, sku_seq`;
    chain = new Map();
    for (const r of rows) chain.set(r.sku, [...(chain.get(r.sku) ?? []), r]);
    totalEntries = rows.length;
  });

  afterAll(async () => {
    await h?.close();
  });

  /** Runs `change` with the append-only trigger off, all in one transaction (so nobody else sees it off). */
  async function tamper(change: (tx: TransactionSql) => Promise<unknown>): Promise<void> {
    await h.sql.begin(async (tx) => {
      await tx`alter table ledger_entries disable trigger ledger_entries_append_only`;
      await change(tx);
      await tx`alter table ledger_entries enable trigger ledger_entries_append_only`;
    });
  }

  /**
   * Puts a deleted entry back as it was, id included (inserting is what the trigger allows). Its key
   * in ledger_entry_keys was never removed (deleting the entry does not touch it), so the trigger
   * that records keys is off for the re-insert.
   */
  async function reinsert(row: Record<string, unknown>): Promise<void> {
    const cols = Object.keys(row);
    const params = cols.map((_, i) => `$${i + 1}`).join(", ");
    await h.sql.begin(async (tx) => {
      await tx`alter table ledger_entries disable trigger ledger_entries_keys`;
      await tx.unsafe(
        `insert into ledger_entries (${cols.join(", ")}) overriding system value values (${params})`,
        cols.map((c) => row[c]) as Array<never>,
      );
      await tx`alter table ledger_entries enable trigger ledger_entries_keys`;
    });
  }

  const verify = () => runTally(["ledger", "verify"], tallyEnv(ctx));

  async function expectVerifyOk(): Promise<void> {
    const r = await verify();
    expect(r.stdout).toContain(`ledger verify: ok — ${totalEntries} entries, 2 SKUs,`);
    expect(r.code).toBe(0);
  }

  it("holds the expected chains, and verify passes with counts", async () => {
    expect(chain.get("SKU-A")!.map((e) => e.sku_seq)).toEqual([1, 2, 3, 4]);
    expect(chain.get("SKU-B")!.map((e) => e.sku_seq)).toEqual([1, 2]);
    const [{ n }] = await h.sql<[{ n: number }]>`select count(*)::int as n from balances`;
    const r = await verify();
    expect(r.stdout).toBe(`ledger verify: ok — 6 entries, 2 SKUs, ${n} balances\n`);
    expect(r.code).toBe(0);
  });

  describe("is append-only", () => {
    it("refuses UPDATE", async () => {
      await expect(h.sql`update ledger_entries set delta = 999 where sku = 'SKU-A'`).rejects.toThrow(/append-only/);
    });
    it("refuses DELETE", async () => {
      await expect(h.sql`delete from ledger_entries where sku = 'SKU-B'`).rejects.toThrow(/append-only/);
    });
    it("refuses TRUNCATE", async () => {
      await expect(h.sql`truncate ledger_entries`).rejects.toThrow(/append-only/);
    });
    it("still has every entry afterwards", async () => {
      const rows = await h.sql<Array<{ delta: number }>>`select delta from ledger_entries`;
      expect(rows).toHaveLength(totalEntries);
      expect(rows.some((r) => r.delta === 999)).toBe(false);
      await expectVerifyOk();
    });
  });

  describe("tamper detection (`tally ledger verify`)", () => {
    const middle = () => chain.get("SKU-A")![1]!; // sequence 2: the sale

    it.each([
      ["delta", "delta = delta * 2", /balance_after 8 but the entries sum to 6/],
      ["balance_after", "balance_after = balance_after + 1", /balance_after 9 but the entries sum to 8/],
      ["source_ref", "source_ref = 'forged'", /hash does not match its contents/],
    ])("finds a changed %s and names the SKU and the entry", async (column, assignment, why) => {
      const entry = middle();
      const [original] = await h.sql<Array<Record<string, unknown>>>`
        select delta, balance_after, source_ref from ledger_entries where entry_id = ${entry.entry_id}`;
      await tamper((tx) => tx.unsafe(`update ledger_entries set ${assignment} where entry_id = $1`, [entry.entry_id]));
      try {
        // The trigger is back on.
        await expect(h.sql`update ledger_entries set source_ref = 'x' where entry_id = ${entry.entry_id}`).rejects.toThrow(/append-only/);
        const r = await verify();
        expect(r.code).toBe(3);
        expect(r.stdout).toContain(`ledger verify: FAILED at SKU SKU-A entry ${entry.entry_id} (command ${entry.command_id})`);
        expect(r.stdout).toMatch(why);
      } finally {
        await tamper((tx) => tx`update ledger_entries set ${tx(original!, column)} where entry_id = ${entry.entry_id}`);
      }
      await expectVerifyOk();
    });

    it("finds an entry deleted from the middle of a chain", async () => {
      const entry = middle();
      const next = chain.get("SKU-A")![2]!;
      const [saved] = await h.sql<Array<Record<string, unknown>>>`select * from ledger_entries where entry_id = ${entry.entry_id}`;
      await tamper((tx) => tx`delete from ledger_entries where entry_id = ${entry.entry_id}`);
      try {
        const r = await verify();
        expect(r.code).toBe(3);
        expect(r.stdout).toContain(`FAILED at SKU SKU-A entry ${next.entry_id}`);
        expect(r.stdout).toContain("sequence 3 where 2 was expected (entry missing or reordered)");
      } finally {
        await reinsert(saved!);
      }
      await expectVerifyOk();
    });

    it("finds an entry re-inserted under a later entry id (chain order and entry order disagree)", async () => {
      const entry = middle();
      const next = chain.get("SKU-A")![2]!;
      const [saved] = await h.sql<Array<Record<string, unknown>>>`select * from ledger_entries where entry_id = ${entry.entry_id}`;
      const { entry_id: _, ...rest } = saved!;
      await tamper((tx) => tx`delete from ledger_entries where entry_id = ${entry.entry_id}`);
      await reinsert(rest);
      const [moved] = await h.sql<Array<{ entry_id: number }>>`select entry_id from ledger_entries where command_id = ${entry.command_id}`;
      try {
        expect(moved!.entry_id).toBeGreaterThan(next.entry_id);
        const r = await verify();
        expect(r.code).toBe(3);
        expect(r.stdout).toContain(`FAILED at SKU SKU-A entry ${next.entry_id}`);
        expect(r.stdout).toContain(`entry ${next.entry_id} at sequence 3 is numbered before entry ${moved!.entry_id}`);
      } finally {
        await tamper((tx) => tx`delete from ledger_entries where entry_id = ${moved!.entry_id}`);
        await reinsert(saved!);
      }
      await expectVerifyOk();
    });

    it("finds the last entry of a chain deleted, even with the balance made to match (the head no longer does)", async () => {
      const last = chain.get("SKU-B")!.at(-1)!; // the adjustment of -1: S01 on_hand 7 → 6
      const [saved] = await h.sql<Array<Record<string, unknown>>>`select * from ledger_entries where entry_id = ${last.entry_id}`;
      await tamper((tx) => tx`delete from ledger_entries where entry_id = ${last.entry_id}`);
      try {
        const r = await verify();
        expect(r.code).toBe(3);
        expect(r.stdout).toContain("FAILED at SKU SKU-B: balance S01/on_hand is 6 but its entries sum to 7");

        await h.sql`update balances set qty = 7 where sku = 'SKU-B' and location = 'S01' and bucket = 'on_hand'`;
        const again = await verify();
        expect(again.code).toBe(3);
        expect(again.stdout).toContain("FAILED at SKU SKU-B: head says sequence 2 but the chain ends at 1");
      } finally {
        await h.sql`update balances set qty = 6 where sku = 'SKU-B' and location = 'S01' and bucket = 'on_hand'`;
        await reinsert(saved!);
      }
      await expectVerifyOk();
    });

    it("finds a balance changed directly, and names it", async () => {
      await h.sql`update balances set qty = qty + 50 where sku = 'SKU-B' and location = 'S01' and bucket = 'on_hand'`;
      try {
        const r = await verify();
        expect(r.code).toBe(3);
        expect(r.stdout).toContain("ledger verify: FAILED at SKU SKU-B: balance S01/on_hand is 56 but its entries sum to 6");
      } finally {
        await h.sql`update balances set qty = qty - 50 where sku = 'SKU-B' and location = 'S01' and bucket = 'on_hand'`;
      }
      await expectVerifyOk();
    });
  });
});
