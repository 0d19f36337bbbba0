import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodeCommand, type Command } from "../src/contract/command.ts";
import { entryHash, GENESIS_HASH, noValue, valueLeg, type LocationValue } from "../ledger/index.ts";
import { type EntryRow, hashedEntry } from "../ledger/entryRow.ts";
import { readNatsAnchors } from "../src/channels/anchors.ts";
import { startTally } from "../src/app/roles.ts";
import { loadSettings } from "../src/platform/settings.ts";
import { connectPostgres, type Sql } from "../src/platform/db.ts";
import { createLogger } from "../src/platform/log.ts";
import { publishCommands } from "../src/wire/publisher.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { TEST_CHANNELS, eventually, harness, outcomeCounts, runTally, tallyEnv, type Harness } from "./support/tally.ts";

let ctx: TestContext;
let owner: string;
let runtime: string;
let ownerUrl: string;
let runtimeUrl: string;
let asOwner: Sql;
let asRuntime: Sql;
let h: Harness;
let dir: string;

const asUser = (url: string, user: string) => {
  const u = new URL(url);
  u.username = user;
  return u.toString();
};

let n = 0;
const command = (type: string, sku: string, qty: number): Command => {
  const d = decodeCommand({
    id: `roles:${++n}`,
    type,
    sku,
    location: "S01",
    qty,
    source: { system: "test", ref: `r${n}` },
    occurredAt: "2026-11-30T10:00:00Z",
  });
  if (d._tag === "Left") throw d.left;
  return d.right;
};

beforeAll(async () => {
  ctx = await testContext();
  dir = await mkdtemp(join(tmpdir(), "tally-anchors-"));
  owner = `tally_owner_${ctx.env}`;
  runtime = `tally_runtime_${ctx.env}`;
  const admin = connectPostgres(ctx.adminUrl, { max: 1 });
  const database = new URL(ctx.databaseUrl).pathname.slice(1);
  await admin.unsafe(`create role ${owner} login`);
  await admin.unsafe(`create role ${runtime} login`);
  await admin.unsafe(`alter database ${database} owner to ${owner}`);
  await admin.end({ timeout: 5 });
  ownerUrl = asUser(ctx.databaseUrl, owner);
  runtimeUrl = asUser(ctx.databaseUrl, runtime);
  const migrated = await runTally(["migrate", "--runtime-role", runtime], { ...tallyEnv(ctx), TALLY_DATABASE_URL: ownerUrl });
  expect(migrated.output).toMatch(/granted the runtime privileges/);
  expect(migrated.code).toBe(0);
  asOwner = connectPostgres(ownerUrl, { max: 1 });
  asRuntime = connectPostgres(runtimeUrl, { max: 1 });
  h = await harness({ ...ctx, databaseUrl: ownerUrl });
}, 120_000);

afterAll(async () => {
  await h?.close();
  await asOwner?.end({ timeout: 5 });
  await asRuntime?.end({ timeout: 5 });
  await rm(dir, { recursive: true, force: true });
});

const sale = command("sell", "ANCHOR-1", 1);

describe("an owner role that migrates, a runtime role that may only append to the ledger", () => {
  it("Tally runs as the runtime role: commands are applied, and the relay publishes the chain heads to the anchors stream", async () => {
    const tally = await startTally(
      loadSettings({ ...tallyEnv(ctx), TALLY_DATABASE_URL: runtimeUrl, TALLY_ANCHOR_INTERVAL_MS: "200" }),
      TEST_CHANNELS,
      ["worker", "relay"],
      createLogger("test-roles", process.env.TALLY_LOG_LEVEL ?? "warn"),
    );
    try {
      const commands = [command("receive", "ANCHOR-1", 100), sale, command("receive", "ANCHOR-1", 5), command("receive", "ANCHOR-2", 7)];
      await publishCommands(h.nats.js, h.topology, commands);
      await eventually(
        "the commands to be applied",
        async () =>
          (
            await outcomeCounts(
              h.sql,
              commands.map((c) => c.id),
            )
          ).n === commands.length,
      );
      const [head] = await h.sql<Array<{ seq: number }>>`select seq from sku_heads where sku = 'ANCHOR-1'`;
      await eventually("the head of ANCHOR-1 to be anchored", async () =>
        (await readNatsAnchors(h.nats, h.topology)).some((a) => a.sku === "ANCHOR-1" && a.seq === head!.seq),
      );
    } finally {
      await tally.close();
    }
    // An anchor file as well, for the operator who keeps one on write-once storage.
    const anchored = await runTally(["ledger", "anchor", "--file", join(dir, "anchors.ndjson")], {
      ...tallyEnv(ctx),
      TALLY_DATABASE_URL: runtimeUrl,
    });
    expect(anchored.output).toMatch(/2 SKU heads appended/);
  }, 120_000);

  it("the runtime role cannot update, delete or truncate ledger entries, nor disable or drop the append-only trigger", async () => {
    for (const statement of [
      "update ledger_entries set delta = -101 where sku = 'ANCHOR-1'",
      "delete from ledger_entries where sku = 'ANCHOR-1'",
      "truncate ledger_entries",
      "alter table ledger_entries disable trigger ledger_entries_append_only",
      "drop trigger ledger_entries_append_only on ledger_entries",
      "alter table ledger_entries owner to current_user",
      "insert into tally_meta (key, value) values ('environment2', 'x')",
    ]) {
      await expect(asRuntime.unsafe(statement), statement).rejects.toMatchObject({ code: "42501" });
    }
    // What it needs, it has: reading the ledger.
    const [{ count }] = await asRuntime<[{ count: number }]>`select count(*)::int as count from ledger_entries`;
    expect(count).toBeGreaterThan(0);
  });

  it("`tally migrate --print-grants` prints the statements for a DBA without connecting", async () => {
    const printed = await runTally(["migrate", "--print-grants", "--runtime-role", "tally_app"], {
      TALLY_DATABASE_URL: "postgres://nobody@127.0.0.1:1/none",
    });
    expect(printed.code).toBe(0);
    expect(printed.stdout).toContain('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "tally_app";');
    expect(printed.stdout).toContain('REVOKE UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON public.ledger_entries FROM "tally_app";');
    const bad = await runTally(["migrate", "--print-grants", "--runtime-role", 'x"; drop table y; --'], {});
    expect(bad.code).not.toBe(0);
  });
});

describe("tally ledger verify --anchors", () => {
  it("catches a rewrite that recomputed the chain (a sale of −1 made −101 by the owner), which plain verify passes, naming the SKU", async () => {
    const env = { ...tallyEnv(ctx), TALLY_DATABASE_URL: runtimeUrl };
    const before = await runTally(["ledger", "verify", "--anchors", "--anchors-file", join(dir, "anchors.ndjson")], env);
    expect(before.output).toMatch(/anchors of 2 SKUs match/);
    expect(before.code).toBe(0);

    await rewriteSale(asOwner, sale.id, -101);

    const plain = await runTally(["ledger", "verify"], env);
    expect(plain.output).toMatch(/ledger verify: ok/);
    expect(plain.code).toBe(0);
    const fromNats = await runTally(["ledger", "verify", "--anchors"], env);
    expect(fromNats.code).toBe(3);
    expect(fromNats.stdout).toMatch(/FAILED at SKU ANCHOR-1: sequence \d+ was anchored .* \(the chain was rewritten\)/);
    expect(fromNats.stdout).not.toMatch(/ANCHOR-2/);
    const fromFile = await runTally(["ledger", "verify", "--anchors-file", join(dir, "anchors.ndjson")], env);
    expect(fromFile.code).toBe(3);
    expect(fromFile.stdout).toMatch(/FAILED at SKU ANCHOR-1/);
  }, 120_000);
});

/**
 * What an attacker with the owner's password can do: turn the trigger off, change one entry's delta,
 * and recompute every later balance_after, hash and prev_hash of the SKU, its balance and head, so
 * that the chain is consistent again.
 */
async function rewriteSale(sql: Sql, commandId: string, delta: number): Promise<void> {
  await sql.begin(async (tx) => {
    await tx`alter table ledger_entries disable trigger ledger_entries_append_only`;
    const [target] = await tx<Array<{ sku: string }>>`select sku from ledger_entries where command_id = ${commandId}`;
    const rows = await tx<Array<EntryRow & { delta: number }>>`select * from ledger_entries where sku = ${target!.sku} order by sku_seq`;
    let prev = GENESIS_HASH;
    const sums = new Map<string, number>();
    const values = new Map<string, LocationValue>();
    for (const r of rows) {
      const d = r.command_id === commandId ? delta : r.delta;
      const key = `${r.location}/${r.bucket}`;
      const balanceAfter = (sums.get(key) ?? 0) + d;
      sums.set(key, balanceAfter);
      // The valuation is hashed and replayed by verify: the attacker re-values the on_hand legs too.
      const stored = hashedEntry(r);
      let valued = { value: stored.value ?? null, unitCost: stored.unitCost ?? null, valuationFlag: stored.valuationFlag ?? null };
      if (r.bucket === "on_hand" && valued.value !== null) {
        const cost = r.movement === "receive" && valued.valuationFlag !== "no_cost" ? valued.unitCost : null;
        const v = valueLeg(BigInt(balanceAfter - d), values.get(r.location) ?? noValue, BigInt(d), cost, r.movement === "receive");
        values.set(r.location, v.after);
        valued = { value: v.value, unitCost: v.unitCost, valuationFlag: v.flag };
      }
      const hash = entryHash(prev, { ...stored, delta: d, balanceAfter, ...valued });
      await tx`update ledger_entries set delta = ${d}, balance_after = ${balanceAfter}, prev_hash = ${prev}, hash = ${hash},
                 value = ${valued.value === null ? null : String(valued.value)}::numeric,
                 unit_cost = ${valued.unitCost === null ? null : String(valued.unitCost)}::numeric,
                 valuation_flag = ${valued.valuationFlag} where entry_id = ${r.entry_id}`;
      prev = hash;
    }
    for (const [key, qty] of sums) {
      const [location, bucket] = key.split("/");
      await tx`update balances set qty = ${qty} where sku = ${target!.sku} and location = ${location!} and bucket = ${bucket!}`;
    }
    for (const [location, v] of values)
      await tx`update balances set value = ${String(v.value)}::numeric, last_unit_cost = ${v.lastUnitCost === null ? null : String(v.lastUnitCost)}::numeric
                where sku = ${target!.sku} and location = ${location} and bucket = 'on_hand'`;
    await tx`update sku_heads set last_hash = ${prev} where sku = ${target!.sku}`;
    await tx`alter table ledger_entries enable trigger ledger_entries_append_only`;
  });
}
