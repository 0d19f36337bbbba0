import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encodeEnvelope } from "../src/wire/envelope.ts";
import { listStuck, recordStuck } from "../ledger/index.ts";
import { listDeadLetters } from "../src/operations/deadLetterReplay.ts";
import { publishCommands } from "../src/wire/publisher.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { eventually, harness, outcomeCounts, runTally, startInProcess, tallyEnv, type Harness } from "./support/tally.ts";

// One partition: every command below shares it, so a command that blocked the partition would
// block every one published after it.
const OPTS = { partitions: 1 };

let ctx: TestContext;
let h: Harness;

beforeAll(async () => {
  ctx = await testContext();
  h = await harness(ctx, OPTS);
});
afterAll(async () => {
  await h?.close();
});

let n = 0;
const sale = (ref: string, extra: Record<string, unknown> = {}) => ({
  id: `poison:${ref}:${++n}`,
  type: "sell",
  sku: "POISON-SKU",
  location: "S01",
  qty: 1,
  source: { system: "pos", ref },
  occurredAt: "2026-11-26T10:00:00Z",
  ...extra,
});
const receipt = (ref: string) => ({ ...sale(ref), id: `poison:${ref}:${++n}`, type: "receive", qty: 5 });

/** Publishes an envelope straight on the partition's subject, as a forger (or an old release) would. */
async function publishRaw(commands: ReadonlyArray<unknown>): Promise<number> {
  const ack = await h.nats.js.publish(h.topology.commandSubject(0), encodeEnvelope(commands), { msgID: `raw-${++n}` });
  return ack.seq;
}

const applied = async (ids: ReadonlyArray<string>) => (await outcomeCounts(h.sql, ids)).n === ids.length;
const commandLetters = async () => listDeadLetters(h.nats, h.topology, "commands");

describe("a poison command never blocks the commands behind it", () => {
  it("a forged envelope with a command dated year 0 is dead-lettered, naming occurredAt; later commands in the partition apply", async () => {
    const tally = await startInProcess(ctx, ["worker"], OPTS);
    try {
      const poison = sale("year0", { occurredAt: "0000-01-01T00:00:00Z" });
      const seq = await publishRaw([poison]);
      const after = [receipt("after-year0"), sale("after-year0")];
      await publishRaw(after);
      await eventually("the commands behind the poison to apply", () => applied(after.map((c) => c.id)), 30_000);
      const letter = (await commandLetters()).find((l) => l.context.stream_seq === seq);
      expect(letter?.reason).toMatch(/^occurredAt: expected a date-time from 1900/);
      expect(letter?.payload).toMatchObject({ id: poison.id, occurredAt: "0000-01-01T00:00:00Z" });
      expect((await outcomeCounts(h.sql, [poison.id])).n).toBe(0);
    } finally {
      await tally.close();
    }
  }, 60_000);

  it("a command the ledger refuses at commit (a data error no schema caught) is isolated and dead-lettered with its SQLSTATE; the rest of its message and the messages after it apply", async () => {
    // A constraint the schema knows nothing of stands in for any data error Postgres raises (class 23).
    await h.sql`alter table ledger_entries add constraint test_poison check (source_ref <> 'refused-ref') not valid`;
    // Published before the worker starts, so the first batch holds several messages.
    const before = [receipt("before"), sale("before")];
    const poison = sale("refused-ref");
    const neighbours = [receipt("neighbour"), poison, sale("neighbour")];
    const after = [sale("after-refused"), receipt("after-refused")];
    await publishRaw(before);
    const seq = await publishRaw(neighbours);
    await publishRaw(after);
    const tally = await startInProcess(ctx, ["worker"], OPTS);
    try {
      const good = [...before, neighbours[0]!, neighbours[2]!, ...after].map((c) => c.id);
      await eventually("every command but the refused one to apply", () => applied(good), 30_000);
      const [outcome] = await h.sql<
        Array<{ status: string; reason: string }>
      >`select status, reason from command_outcomes where command_id = ${poison.id}`;
      expect(outcome).toEqual({ status: "rejected", reason: "unstorable" });
      const [{ entries }] = await h.sql<[{ entries: number }]>`select count(*)::int as entries from ledger_entries where command_id = ${poison.id}`;
      expect(entries).toBe(0);
      const letter = (await commandLetters()).find((l) => l.context.command_id === poison.id);
      expect(letter).toMatchObject({ context: { stream_seq: seq, sqlstate: "23514" }, payload: { id: poison.id } });
      expect(letter!.reason).toMatch(/^the ledger cannot store this command: .*test_poison.*\(SQLSTATE 23514\)$/);
      expect(tally.worker!.metrics.poisoned).toBe(1);
    } finally {
      await tally.close();
      await h.sql`alter table ledger_entries drop constraint test_poison`;
    }
  }, 60_000);
});

describe("a partition stuck for a reason that is not the data", () => {
  it("counts its attempts across re-subscribes, alerts, records where it is stuck; `tally dlq skip` dead-letters that message and the partition moves on; the letter replays after the fix", async () => {
    // An error no retry cures and that is not a data error: the partition must not skip on its own.
    await h.sql.unsafe(`
      create function test_refuse() returns trigger language plpgsql as $$
      begin
        if new.source_ref = 'stuck-ref' then raise exception 'refused by the test trigger'; end if;
        return new;
      end $$;
      create trigger test_refuse before insert on ledger_entries for each row execute function test_refuse();`);
    const alerts: Array<{ kind: string; partition: number; attempt: number; streamSeq: number }> = [];
    const sub = h.nats.nc.subscribe(h.topology.eventSubject("alert"), { callback: (_e, m) => void alerts.push(m.json()) });
    const tally = await startInProcess(ctx, ["worker"], OPTS);
    try {
      const stuck = sale("stuck-ref");
      const seq = await publishRaw([stuck]);
      const after = [receipt("after-stuck")];
      await publishCommands(h.nats.js, h.topology, after as never);

      await eventually("the stuck-partition alert", async () => alerts.some((a) => a.kind === "partition_stuck"), 60_000);
      expect(alerts.find((a) => a.kind === "partition_stuck")).toMatchObject({ partition: 0, attempt: 5, streamSeq: seq });
      // The attempts went on growing through re-subscribes (they used to restart at 1 each time).
      await eventually("a sixth attempt", async () => (tally.worker!.statuses()[0]?.attempts ?? 0) >= 6, 60_000);
      expect(tally.worker!.statuses()[0]).toMatchObject({
        partition: 0,
        stuck: true,
        lastError: expect.stringContaining("refused by the test trigger"),
      });
      const [row] = await listStuck(h.sql);
      expect(row).toMatchObject({ partition: 0, streamSeq: seq, error: expect.stringContaining("refused by the test trigger (SQLSTATE P0001)") });
      expect(await applied(after.map((c) => c.id))).toBe(false);

      const env = tallyEnv(ctx, OPTS);
      const list = await runTally(["dlq", "list", "--stuck"], env);
      expect(list.code, list.output).toBe(0);
      expect(list.stdout).toMatch(new RegExp(`^partition 0\\tseq ${seq}\\t\\d+ attempts since .*refused by the test trigger.*\\t${stuck.id}$`, "m"));

      const skip = await runTally(["dlq", "skip", "0"], env);
      expect(skip.code, skip.output).toBe(0);
      expect(skip.stdout).toContain(`partition 0: message ${seq} will be dead-lettered`);
      await eventually("the commands behind the skipped message to apply", () => applied(after.map((c) => c.id)), 30_000);
      await eventually("the stuck record to clear", async () => (await listStuck(h.sql)).length === 0, 10_000);
      const letter = (await commandLetters()).find((l) => l.context.stream_seq === seq && l.context.skipped === true);
      expect(letter?.reason).toMatch(/^skipped by an operator \(.*@cli\); it was failing with: refused by the test trigger/);
      expect(letter?.payload).toEqual({ v: 1, commands: [stuck] });

      // Fixed: the skipped message replays as it was, and applies once.
      await h.sql.unsafe(`drop trigger test_refuse on ledger_entries; drop function test_refuse();`);
      const replay = await runTally(["dlq", "replay", String(letter!.id)], env);
      expect(replay.code, replay.output).toBe(0);
      await eventually("the replayed command to apply", () => applied([stuck.id]), 30_000);
    } finally {
      sub.unsubscribe();
      await tally.close();
      await h.sql.unsafe(`drop trigger if exists test_refuse on ledger_entries; drop function if exists test_refuse();`);
    }
  }, 180_000);
});

describe("a stuck record another worker left", () => {
  it("is cleared by the first batch the partition's new holder commits", async () => {
    // As a worker that died while the partition was stuck would leave it.
    await recordStuck(h.sql, { partition: 0, streamSeq: 1, attempts: 9, error: "left by a dead worker" });
    const tally = await startInProcess(ctx, ["worker"], OPTS);
    try {
      const next = [receipt("after-handover")];
      await publishRaw(next);
      await eventually("the command to apply", () => applied(next.map((c) => c.id)), 30_000);
      await eventually("the stale stuck record to clear", async () => (await listStuck(h.sql)).length === 0, 10_000);
    } finally {
      await tally.close();
    }
  }, 60_000);
});
