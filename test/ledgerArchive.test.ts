import { cp, mkdtemp, readdir, readFile, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GENESIS_HASH, claimPartition, commitBatch, entryHash, verifyArchive, verifyLedger, type HashedEntry } from "../ledger/index.ts";
import { publishCommands } from "../src/wire/publisher.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { decodedCommands, eventually, harness, runTally, startInProcess, tallyEnv, type Harness } from "./support/tally.ts";

let ctx: TestContext;
let h: Harness;
let dir: string;

/** The first instant of the UTC month `back` months before the current one. */
const monthsAgo = (back: number): Date => {
  const d = new Date();
  return new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth() - back, 1));
};
const monthName = (d: Date) => d.toISOString().slice(0, 7);
const older = monthsAgo(2);
const newer = monthsAgo(1);
const OLD = monthName(older);
const NEW = monthName(newer);
const at = (month: Date, day: number) => new Date(month.getTime() + (day - 1) * 86_400_000 + 3_600_000);

/** Per SKU: the chain head and on_hand at DC1, as the backdated writes below leave them. */
const chains = new Map<string, { seq: number; hash: string; qty: bigint; version: number }>();

/**
 * Commits receipts and sales through the store's batch write (the apply path's last step) with a
 * recorded time in the past: the worker stamps entries with its clock, so this is how a ledger that
 * ran in earlier months looks. Each command is one leg on DC1's on_hand; hashes chained as the worker does.
 */
async function backdated(when: Date, commands: ReadonlyArray<{ id: string; sku: string; delta: bigint }>, outcomes = true): Promise<void> {
  const { epoch } = await claimPartition(h.sql, 0);
  const entries = [];
  const touched = new Map<string, { seq: number; hash: string; qty: bigint; version: number }>();
  for (const c of commands) {
    const prior = touched.get(c.sku) ?? chains.get(c.sku) ?? { seq: 0, hash: GENESIS_HASH, qty: 0n, version: 0 };
    const e: HashedEntry = {
      commandId: c.id,
      leg: 0,
      sku: c.sku,
      location: "DC1",
      bucket: "on_hand",
      delta: c.delta,
      balanceAfter: prior.qty + c.delta,
      movement: c.delta > 0n ? "receive" : "sell",
      sourceSystem: "erp",
      sourceRef: `ref-${c.id}`,
      occurredAt: when,
      recordedAt: when,
      skuSeq: prior.seq + 1,
    };
    const hash = entryHash(prior.hash, e);
    entries.push({ ...e, prevHash: prior.hash, hash });
    touched.set(c.sku, { seq: e.skuSeq, hash, qty: prior.qty + c.delta, version: prior.version + 1 });
  }
  await commitBatch(h.sql, {
    partition: 0,
    epoch,
    lastSeq: 0,
    recordedAt: when,
    entries,
    balances: [...touched].map(([sku, s]) => ({ sku, location: "DC1", bucket: "on_hand", qty: s.qty })),
    heads: [...touched].map(([sku, s]) => ({ sku, seq: s.seq, lastHash: s.hash, version: s.version })),
    skuLocations: [],
    transfers: [],
    settledTransfers: [],
    holds: [],
    outcomes: outcomes
      ? commands.map((c) => ({ commandId: c.id, streamSeq: 0, sku: c.sku, type: "receive", status: "applied" as const, reason: null, detail: null }))
      : [],
    outbox: [],
  });
  for (const [sku, s] of touched) chains.set(sku, s);
}

const env = () => tallyEnv(ctx);

beforeAll(async () => {
  ctx = await testContext();
  h = await harness(ctx);
  dir = await mkdtemp(path.join(tmpdir(), "tally-archive-"));
  // The partitions a worker running in those months would have created ahead of them.
  for (const m of [older, newer]) await h.sql`select tally_ledger_month_partition(${m.toISOString().slice(0, 10)}::date)`;
  await backdated(at(older, 3), [
    { id: "old-1", sku: "ARC-A", delta: 10n },
    { id: "old-2", sku: "ARC-B", delta: 7n },
  ]);
  await backdated(at(older, 20), [
    { id: "old-3", sku: "ARC-A", delta: -4n },
    { id: "old-4", sku: "ARC-C", delta: 3n },
  ]);
  await backdated(at(newer, 5), [
    { id: "new-1", sku: "ARC-A", delta: 5n },
    { id: "new-2", sku: "ARC-B", delta: -2n },
  ]);
}, 120_000);
afterAll(async () => {
  await h?.close();
});

const partitions = async () =>
  (
    await h.sql<Array<{ name: string }>>`
      select c.relname as name from pg_inherits i join pg_class c on c.oid = i.inhrelid
       where i.inhparent = 'ledger_entries'::regclass order by 1`
  ).map((r) => r.name);

describe("ledger partitions", () => {
  it("the entries table is partitioned by month, with this month's and the next ones' partitions and a default", async () => {
    const names = await partitions();
    expect(names).toContain("ledger_entries_default");
    expect(names).toContain(`ledger_entries_${OLD.replace("-", "_")}`);
    expect(names).toContain(`ledger_entries_${monthName(monthsAgo(0)).replace("-", "_")}`);
    expect(names).toContain(`ledger_entries_${monthName(monthsAgo(-2)).replace("-", "_")}`);
    const [{ n }] = await h.sql<[{ n: number }]>`select count(*)::int as n from ledger_entries_default`;
    expect(n).toBe(0);
  });

  it("every partition is append-only, and a command's legs are still unique across partitions", async () => {
    const part = `ledger_entries_${OLD.replace("-", "_")}`;
    await expect(h.sql`delete from ${h.sql(part)}`).rejects.toThrow(/append-only/);
    await expect(h.sql`truncate ${h.sql(part)}`).rejects.toThrow(/append-only/);
    await expect(h.sql`update ledger_entries set delta = 99 where command_id = 'old-1'`).rejects.toThrow(/append-only/);
    // The same command id again, recorded in another month: refused by the global key.
    const replay = backdated(at(newer, 9), [{ id: "old-1", sku: "ARC-Z", delta: 1n }], false);
    await expect(replay).rejects.toMatchObject({ code: "23505", constraint_name: "ledger_entries_command_leg" });
    chains.delete("ARC-Z");
  });
});

describe("tally ledger archive", () => {
  it("refuses a month that is not closed, and one the GL poster has not journaled, writing nothing", async () => {
    const current = monthName(monthsAgo(-1));
    const open = await runTally(["ledger", "archive", "--before", current, "--out", dir], env());
    expect(open.code, open.output).toBe(1);
    expect(open.output).toMatch(new RegExp(`${monthName(monthsAgo(0))} is not closed`));
    // The GL in use, its poster behind the old month's entries.
    await h.sql`update gl_cursor set horizon = '1'::xid8 where id = 1`;
    try {
      const behind = await runTally(["ledger", "archive", "--before", NEW, "--out", dir], env());
      expect(behind.code, behind.output).toBe(1);
      expect(behind.output).toMatch(new RegExp(`${OLD} holds 4 entries the GL poster has not journaled`));
    } finally {
      await h.sql`update gl_cursor set horizon = null where id = 1`;
    }
    // A write-back to a source that has not passed the month yet.
    await h.sql`insert into writeback_positions (source) values ('erp-archive-test')`;
    try {
      const writeBack = await runTally(["ledger", "archive", "--before", NEW, "--out", dir], env());
      expect(writeBack.code, writeBack.output).toBe(1);
      expect(writeBack.output).toMatch(new RegExp(`${OLD} holds 4 entries the write-back to erp-archive-test has not passed yet`));
    } finally {
      await h.sql`delete from writeback_positions where source = 'erp-archive-test'`;
    }
    expect(await readdir(dir)).toEqual([]);
    expect(await partitions()).toContain(`ledger_entries_${OLD.replace("-", "_")}`);
  });

  it("exports the older month with its manifest, detaches it, and both verifies pass across the cut", async () => {
    const run = await runTally(["ledger", "archive", "--before", NEW, "--out", dir], env());
    expect(run.code, run.output).toBe(0);
    expect(run.stdout).toMatch(new RegExp(`${OLD} — 4 entries .*detached as ledger_archived_${OLD.replace("-", "_")}`));
    expect((await readdir(dir)).sort()).toEqual([`ledger-${OLD}.manifest.json`, `ledger-${OLD}.ndjson`]);
    const manifest = JSON.parse(await readFile(path.join(dir, `ledger-${OLD}.manifest.json`), "utf8"));
    expect(manifest).toMatchObject({ month: OLD, previousMonth: null, entries: 4, file: `ledger-${OLD}.ndjson` });
    expect(manifest.heads["ARC-A"]).toMatchObject({ seq: 2 });
    expect(manifest.heads["ARC-C"]).toMatchObject({ seq: 1 });
    // Gone from the live ledger; the newer month stays.
    const names = await partitions();
    expect(names).not.toContain(`ledger_entries_${OLD.replace("-", "_")}`);
    expect(names).toContain(`ledger_entries_${NEW.replace("-", "_")}`);
    const [{ n }] = await h.sql<[{ n: number }]>`select count(*)::int as n from ledger_entries`;
    expect(n).toBe(2);
    // Live verify starts from the recorded cut: the missing start is not corruption.
    const live = await runTally(["ledger", "verify"], env());
    expect(live.code, live.output).toBe(0);
    expect(live.stdout).toMatch(/chains start at the cut after the archived months/);
    expect(live.stdout).toMatch(/ledger verify: ok — 2 entries/);
    const full = await runTally(["ledger", "verify", "--archive", dir], env());
    expect(full.code, full.output).toBe(0);
    expect(full.stdout).toMatch(/ledger verify --archive: ok — 1 archived months, 4 entries/);
    // Archiving again has nothing left to do.
    const again = await runTally(["ledger", "archive", "--before", NEW, "--out", dir], env());
    expect(again.code, again.output).toBe(0);
    expect(again.stdout).toMatch(/no month before/);
  });

  it("the worker's chains continue from the cut: new entries applied now verify with and without --archive", async () => {
    const tally = await startInProcess(ctx, ["worker"]);
    try {
      await publishCommands(
        h.nats.js,
        h.topology,
        decodedCommands([
          {
            id: "now-1",
            type: "receive",
            sku: "ARC-C",
            location: "DC1",
            qty: 2,
            source: { system: "erp", ref: "n1" },
            occurredAt: new Date().toISOString(),
          },
          {
            id: "now-2",
            type: "sell",
            sku: "ARC-A",
            location: "DC1",
            qty: 1,
            source: { system: "erp", ref: "n2" },
            occurredAt: new Date().toISOString(),
          },
        ]),
      );
      await eventually("the new commands applied", async () => {
        const rows = await h.sql`select 1 from command_outcomes where command_id in ('now-1', 'now-2') and status = 'applied'`;
        return rows.length === 2;
      });
    } finally {
      await tally.close();
    }
    const [c] = await h.sql<[{ sku_seq: number }]>`select sku_seq from ledger_entries where command_id = 'now-1'`;
    expect(c!.sku_seq).toBe(2);
    const live = await verifyLedger(h.sql);
    expect(live.problem).toBeNull();
    const full = await verifyArchive(h.sql, dir);
    expect(full.problems).toEqual([]);
    expect(full.ok).toBe(true);
  }, 120_000);

  it("a tampered archived file fails verify --archive, naming the file and the row", async () => {
    const copy = await mkdtemp(path.join(tmpdir(), "tally-archive-tampered-"));
    await cp(dir, copy, { recursive: true });
    const file = path.join(copy, `ledger-${OLD}.ndjson`);
    const lines = (await readFile(file, "utf8")).split("\n");
    // Rows are in (sku, sku_seq) order: row 2 is ARC-A's second entry (a sale of 4); make it 3.
    const row = JSON.parse(lines[1]!);
    expect(row).toMatchObject({ sku: "ARC-A", skuSeq: 2, delta: -4 });
    lines[1] = JSON.stringify({ ...row, delta: -3, balanceAfter: 7 });
    await writeFile(file, lines.join("\n"));
    const run = await runTally(["ledger", "verify", "--archive", copy], env());
    expect(run.code, run.output).toBe(3);
    expect(run.stdout).toMatch(new RegExp(`FAILED in ledger-${OLD}\\.ndjson row 2: entry \\d+ of SKU ARC-A: hash does not match its contents`));
    expect(run.stdout).toMatch(new RegExp(`FAILED in ledger-${OLD}\\.ndjson: sha256 is`));
    // A missing file is named too.
    const empty = await mkdtemp(path.join(tmpdir(), "tally-archive-empty-"));
    const missing = await runTally(["ledger", "verify", "--archive", empty], env());
    expect(missing.code).toBe(3);
    expect(missing.stdout).toMatch(new RegExp(`${OLD} is archived but its file is not in`));
  });

  it("live tampering is still caught after the cut", async () => {
    await h.sql.begin(async (tx) => {
      await tx`alter table ledger_entries disable trigger ledger_entries_append_only`;
      await tx`update ledger_entries set source_ref = 'forged' where command_id = 'new-1'`;
      await tx`alter table ledger_entries enable trigger ledger_entries_append_only`;
    });
    try {
      const run = await runTally(["ledger", "verify"], env());
      expect(run.code, run.output).toBe(3);
      expect(run.stdout).toMatch(/FAILED at SKU ARC-A .*command new-1.*entry altered/);
    } finally {
      await h.sql.begin(async (tx) => {
        await tx`alter table ledger_entries disable trigger ledger_entries_append_only`;
        await tx`update ledger_entries set source_ref = 'ref-new-1' where command_id = 'new-1'`;
        await tx`alter table ledger_entries enable trigger ledger_entries_append_only`;
      });
    }
    expect((await verifyLedger(h.sql)).ok).toBe(true);
  });

  it("a replayed duplicate of an archived command is refused (no second entry), even without its outcome", async () => {
    // As if the outcomes' retention had pruned it: only the ledger's keys remember the command now.
    await h.sql`delete from command_outcomes where command_id = 'old-2'`;
    const replay = backdated(new Date(), [{ id: "old-2", sku: "ARC-B", delta: 7n }], false);
    await expect(replay).rejects.toMatchObject({ code: "23505", constraint_name: "ledger_entries_command_leg" });
    const [{ n }] = await h.sql<[{ n: number }]>`select count(*)::int as n from ledger_entries where command_id = 'old-2'`;
    expect(n).toBe(0);
    const [{ k }] = await h.sql<[{ k: number }]>`select count(*)::int as k from ledger_entry_keys where command_id = 'old-2'`;
    expect(k).toBe(1);
    expect((await verifyArchive(h.sql, dir)).ok).toBe(true);
  });
});
