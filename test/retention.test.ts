/**
 * Retention (README "Retention"): every growing stream gets its configured limits at start (an existing
 * stream is updated to them), and the worker role's pruner applies each table horizon — nothing inside it
 * is removed, what is older goes — and expires dead letters only after logging and counting each. A
 * duplicate command replayed after its outcome left the outcomes horizon is still refused: the ledger's
 * unique command id finds it, and no second entry is written.
 */
import { Writable } from "node:stream";
import { DiscardPolicy, RetentionPolicy, StorageType, jetstreamManager } from "@nats-io/jetstream";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { catalogVersions, ensureCatalogStream } from "../cdc/index.ts";
import { ProcessMetrics } from "../src/app/processMetrics.ts";
import { Pruner, type PruneRound } from "../src/app/pruner.ts";
import { encodeCommand } from "../src/contract/command.ts";
import { DEFAULTS, SettingsError, loadSettings, type RetentionSettings } from "../src/platform/settings.ts";
import { deadLetter, publishDeadLetter } from "../src/wire/deadLetters.ts";
import { encodeEnvelope } from "../src/wire/envelope.ts";
import { connectNats, ensureTopology, streamLimits } from "../src/wire/nats.ts";
import { publishCommands } from "../src/wire/publisher.ts";
import { topology } from "../src/wire/topology.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { commandMaker, eventually, harness, outcomeCounts, startInProcess, type Harness } from "./support/tally.ts";

let ctx: TestContext;
let h: Harness;
let tally: Awaited<ReturnType<typeof startInProcess>>;

beforeAll(async () => {
  ctx = await testContext();
  h = await harness(ctx);
  tally = await startInProcess(ctx, ["worker"]);
}, 120_000);

afterAll(async () => {
  await tally?.close();
  await h?.close();
});

const HOUR = 3600_000;
const DAY = 24 * HOUR;
const DUPLICATE_WINDOW = 2 * HOUR;

const retention = (more: Partial<RetentionSettings> = {}): RetentionSettings => ({
  ...loadSettings({}).retention,
  ...more,
});

/** Log lines a pruner wrote, parsed. */
function capturedLog() {
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const l of chunk.toString().split("\n")) if (l.trim() !== "") lines.push(JSON.parse(l) as Record<string, unknown>);
      done();
    },
  });
  return { lines, log: pino({ level: "info" }, sink) };
}

function pruner(more: Partial<RetentionSettings> = {}, now: () => Date = () => new Date()) {
  const { lines, log } = capturedLog();
  const p = new Pruner({ sql: h.sql, nats: h.nats, topology: h.topology, duplicateWindowMs: DUPLICATE_WINDOW, retention: retention(more), log, now });
  return { p, lines };
}

/** One round of `p` (waiting while the worker's own pruner holds the pruning lock). */
async function round(p: Pruner): Promise<PruneRound> {
  let result: PruneRound | null = null;
  await eventually("the pruning lock", async () => {
    result = await p.prune();
    return result.ran;
  });
  return result!;
}

const make = commandMaker("retention");

/** Publishes and waits for each command's outcome. */
async function apply(commands: ReturnType<typeof make>[]): Promise<void> {
  await publishCommands(h.nats.js, h.topology, commands);
  const ids = commands.map((c) => c.id);
  await eventually("outcomes", async () => (await outcomeCounts(h.sql, ids)).distinct === ids.length);
}

/** Moves an outcome's recorded time back by `ms`. */
const age = (id: string, ms: number) =>
  h.sql`update command_outcomes set recorded_at = recorded_at - ${ms} * interval '1 millisecond' where command_id = ${id}`;

const where = async (id: string) => {
  const [row] = await h.sql<Array<{ live: boolean; archived: boolean }>>`
    select exists (select from command_outcomes where command_id = ${id}) as live,
           exists (select from command_outcomes_archive where command_id = ${id}) as archived`;
  return row!;
};

describe("stream limits", () => {
  it("a commands stream shorter than the duplicate window is refused at start, naming both settings", () => {
    expect(() => loadSettings({ TALLY_COMMANDS_MAX_AGE_SECONDS: "3600", TALLY_DUPLICATE_WINDOW_SECONDS: "7200" })).toThrow(SettingsError);
    expect(() => loadSettings({ TALLY_COMMANDS_MAX_AGE_SECONDS: "3600", TALLY_DUPLICATE_WINDOW_SECONDS: "7200" })).toThrow(
      /TALLY_COMMANDS_MAX_AGE_SECONDS: 3600 is shorter than TALLY_DUPLICATE_WINDOW_SECONDS \(7200\)/,
    );
    expect(() => streamLimits({ duplicateWindowMs: 7200_000, leaseTtlMs: 5000, retention: { ...retention(), commandsMaxAgeMs: 3600_000 } })).toThrow(
      /TALLY_COMMANDS_MAX_AGE_SECONDS/,
    );
    expect(loadSettings({ TALLY_COMMANDS_MAX_AGE_SECONDS: "7200", TALLY_DUPLICATE_WINDOW_SECONDS: "7200" }).retention.commandsMaxAgeMs).toBe(
      7200_000,
    );
  });

  it("each retention setting is read from its variable, in milliseconds", () => {
    const r = loadSettings({
      TALLY_COMMANDS_MAX_AGE_SECONDS: "86400",
      TALLY_EVENTS_MAX_AGE_SECONDS: "600",
      TALLY_AVAILABILITY_MAX_AGE_SECONDS: "700",
      TALLY_DLQ_MAX_AGE_SECONDS: "800",
      TALLY_DLQ_MAX_BYTES: "2097152",
      TALLY_POS_CLAIM_RETENTION_SECONDS: "900",
      TALLY_RESERVATION_RETENTION_SECONDS: "1000",
      TALLY_OUTCOMES_ARCHIVE_RETENTION_SECONDS: "0",
      TALLY_CATALOG_MAX_AGE_SECONDS: "1100",
      TALLY_CATALOG_HISTORY_RETENTION_SECONDS: "1200",
      TALLY_PRUNE_INTERVAL_MS: "1234",
      TALLY_PRUNE_BATCH: "10",
    }).retention;
    expect(r).toEqual({
      commandsMaxAgeMs: 86400_000,
      eventsMaxAgeMs: 600_000,
      availabilityMaxAgeMs: 700_000,
      dlqMaxAgeMs: 800_000,
      dlqMaxBytes: 2097152,
      posClaimRetentionMs: 900_000,
      reservationRetentionMs: 1000_000,
      outcomesArchiveRetentionMs: 0,
      catalogMaxAgeMs: 1100_000,
      catalogHistoryRetentionMs: 1200_000,
      pruneIntervalMs: 1234,
      pruneBatch: 10,
    });
    expect(() => loadSettings({ TALLY_DLQ_MAX_BYTES: "10" })).toThrow(/TALLY_DLQ_MAX_BYTES: expected an integer/);
  });

  it("streams are created with the configured limits, and an existing stream is updated to new ones at start", async () => {
    const t = topology(`${ctx.env}_limits`, 2);
    const nc = await connectNats(ctx.natsUrl, "retention-test");
    try {
      const info = async (name: string) => (await (await ensureTopologyFor()).jsm.streams.info(name)).config;
      let r = retention();
      const ensureTopologyFor = () => ensureTopology(nc, t, { duplicateWindowMs: DUPLICATE_WINDOW, leaseTtlMs: 5000, retention: r });
      const ns = (ms: number) => ms * 1_000_000;
      // The DLQ as an earlier release created it (kept forever, no byte limit, discard old): left so.
      await (await jetstreamManager(nc)).streams.add({
        name: t.dlqStream,
        subjects: [t.dlqSubjects],
        storage: StorageType.File,
        retention: RetentionPolicy.Limits,
        duplicate_window: ns(DUPLICATE_WINDOW),
        max_age: 0,
        discard: DiscardPolicy.Old,
      });
      expect((await info(t.commandsStream)).max_age).toBe(ns(DEFAULTS.TALLY_COMMANDS_MAX_AGE_SECONDS * 1000));
      expect((await info(t.eventsStream)).max_age).toBe(ns(DEFAULTS.TALLY_EVENTS_MAX_AGE_SECONDS * 1000));
      expect((await info(t.availabilityStream)).max_age).toBe(ns(DEFAULTS.TALLY_AVAILABILITY_MAX_AGE_SECONDS * 1000));
      const dlq = await info(t.dlqStream);
      // JetStream never drops a dead letter by age or size (silently): the pruner does, logging each.
      expect(dlq.max_age).toBe(0);
      expect(dlq.max_bytes).toBe(-1);
      r = retention({ commandsMaxAgeMs: 3 * DAY, eventsMaxAgeMs: 2 * DAY, availabilityMaxAgeMs: HOUR, dlqMaxBytes: 4 * 1024 * 1024 });
      expect((await info(t.commandsStream)).max_age).toBe(ns(3 * DAY));
      expect((await info(t.eventsStream)).max_age).toBe(ns(2 * DAY));
      expect((await info(t.availabilityStream)).max_age).toBe(ns(HOUR));
      expect((await info(t.dlqStream)).max_bytes).toBe(-1);
    } finally {
      await nc.close();
    }
  });

  it("the catalog stream is created with TALLY_CATALOG_MAX_AGE_SECONDS, and the publisher brings an existing one to a new value", async () => {
    const t = topology(`${ctx.env}_catlimits`, 2);
    const nc = await connectNats(ctx.natsUrl, "retention-test");
    try {
      const jsm = await jetstreamManager(nc);
      const maxAge = async () => (await jsm.streams.info(t.catalogStream)).config.max_age;
      const check = { replicas: 1, warn: () => {} };
      // A reader (SSE, webhooks) starting first creates it with the default, and leaves an existing one as it is.
      await ensureCatalogStream(jsm, t);
      expect(await maxAge()).toBe(DEFAULTS.TALLY_CATALOG_MAX_AGE_SECONDS * 1e9);
      await ensureCatalogStream(jsm, t, undefined, HOUR);
      expect(await maxAge()).toBe(DEFAULTS.TALLY_CATALOG_MAX_AGE_SECONDS * 1e9);
      // The publisher (with its replica check) sets the configured one.
      await ensureCatalogStream(jsm, t, check, 2 * DAY);
      expect(await maxAge()).toBe(2 * DAY * 1e6);
      expect(loadSettings({ TALLY_CATALOG_MAX_AGE_SECONDS: "172800" }).retention.catalogMaxAgeMs).toBe(2 * DAY);
    } finally {
      await nc.close();
    }
  });
});

describe("command outcomes: archived past the idempotency horizon", () => {
  it("outcomes inside the duplicate window stay; older ones move to the archive", async () => {
    const inside = make("receive", "RET-A", { qty: 5 });
    const outside = make("receive", "RET-A", { qty: 7 });
    await apply([inside, outside]);
    await age(inside.id, DUPLICATE_WINDOW - 10 * 60_000);
    await age(outside.id, DUPLICATE_WINDOW + 10 * 60_000);
    const { p } = pruner();
    const r = await round(p);
    expect(await where(inside.id)).toEqual({ live: true, archived: false });
    expect(await where(outside.id)).toEqual({ live: false, archived: true });
    expect(r.rows.command_outcomes).toBeGreaterThanOrEqual(1);
    expect(p.metrics.rows.command_outcomes).toBe(r.rows.command_outcomes);
  });

  it("a CDC source's slot position older than the duplicate window holds the horizon back; a halted source does not", async () => {
    const c = make("receive", "RET-B", { qty: 1 });
    await apply([c]);
    await age(c.id, 3 * HOUR);
    await h.sql`
      insert into cdc_sources (source, slot, publication, slot_bound_at, halted_at)
      values ('ret_erp', 'ret_slot', 'ret_pub', now() - interval '4 hours', null),
             ('ret_lost', 'ret_slot2', 'ret_pub2', now() - interval '30 days', now())`;
    try {
      const { p } = pruner();
      const r = await round(p);
      expect(r.heldBy).toBe("ret_erp");
      expect(await where(c.id)).toEqual({ live: true, archived: false });
      // The reader confirmed a newer position: the outcome is outside both now.
      await h.sql`update cdc_sources set slot_bound_at = now() - interval '1 hour' where source = 'ret_erp'`;
      const r2 = await round(p);
      expect(r2.heldBy).toBeNull();
      expect(await where(c.id)).toEqual({ live: false, archived: true });
    } finally {
      await h.sql`delete from cdc_sources where source in ('ret_erp', 'ret_lost')`;
    }
  });

  it("an outcome a reservation line still names stays until the reservation is pruned", async () => {
    const c = make("reserve", "RET-C", { qty: 1, reservationId: "r_ret_c-1" });
    await apply([make("receive", "RET-C", { qty: 3 }), c]);
    await age(c.id, 3 * HOUR);
    await h.sql`
      insert into reservations (id, principal, idempotency_key, request_hash, status, ttl_seconds, updated_at)
      values ('r_ret_c', 'test', 'ret-c', 'h', 'held', 60, now() - interval '30 days')`;
    await h.sql`
      insert into reservation_lines (reservation_id, line, sku, qty, location, command_id, state)
      values ('r_ret_c', 1, 'RET-C', 1, 'S01', ${c.id}, 'held')`;
    const { p } = pruner();
    await round(p);
    expect(await where(c.id)).toEqual({ live: true, archived: false });
    await h.sql`update reservations set status = 'released', updated_at = now() - interval '30 days' where id = 'r_ret_c'`;
    const r = await round(p);
    expect(r.rows.reservations).toBeGreaterThanOrEqual(1);
    expect(await where(c.id)).toEqual({ live: false, archived: true });
  });

  it("archived outcomes are deleted after TALLY_OUTCOMES_ARCHIVE_RETENTION_SECONDS, not before; 0 keeps them", async () => {
    const young = make("receive", "RET-D", { qty: 1 });
    const old = make("receive", "RET-D", { qty: 2 });
    await apply([young, old]);
    await age(young.id, 3 * HOUR);
    await age(old.id, 40 * DAY);
    await round(pruner({ outcomesArchiveRetentionMs: 0 }).p);
    expect(await where(old.id)).toEqual({ live: false, archived: true });
    const { p } = pruner({ outcomesArchiveRetentionMs: 30 * DAY });
    const r = await round(p);
    expect(r.rows.command_outcomes_archive).toBeGreaterThanOrEqual(1);
    expect(await where(old.id)).toEqual({ live: false, archived: false });
    expect(await where(young.id)).toEqual({ live: false, archived: true });
  });
});

describe("a duplicate replayed after its outcome left the horizon", () => {
  /** Re-publishes a command under a new Nats-Msg-Id (past the stream's de-duplication) and waits until its partition has read past it. */
  async function replay(command: ReturnType<typeof make>): Promise<void> {
    const ack = await h.nats.js.publish(h.topology.commandSubject(h.topology.partitionOf(command.sku)), encodeEnvelope([encodeCommand(command)]), {
      msgID: `replay:${command.id}:${Date.now()}`,
    });
    await eventually("the partition to pass the replay", async () => {
      const [row] = await h.sql<Array<{ last_seq: number }>>`
        select last_seq from partition_checkpoints where partition = ${h.topology.partitionOf(command.sku)}`;
      return Number(row?.last_seq ?? 0) >= ack.seq;
    });
  }

  const entries = async (id: string) => {
    const [{ n }] = await h.sql<[{ n: number }]>`select count(*)::int as n from ledger_entries where command_id = ${id}`;
    return n;
  };
  const onHand = async (sku: string) => {
    const [row] = await h.sql<Array<{ qty: string }>>`select qty::text from balances where sku = ${sku} and location = 'S01' and bucket = 'on_hand'`;
    return Number(row?.qty ?? 0);
  };

  it("is refused by the ledger's unique command id even with its outcome archived and the archive pruned: no second entry, and the partition goes on", async () => {
    const sale = make("receive", "RET-E", { qty: 10 });
    await apply([sale]);
    expect(await entries(sale.id)).toBe(1);
    await age(sale.id, 40 * DAY);
    await round(pruner({ outcomesArchiveRetentionMs: 30 * DAY }).p);
    expect(await where(sale.id)).toEqual({ live: false, archived: false });
    await replay(sale);
    expect(await entries(sale.id)).toBe(1);
    expect(await onHand("RET-E")).toBe(10);
    expect(await where(sale.id)).toEqual({ live: false, archived: false });
    // The partition is not stuck on it: the next command applies.
    const next = make("receive", "RET-E", { qty: 1 });
    await apply([next]);
    expect(await onHand("RET-E")).toBe(11);
  });

  it("a run of replays, several per message, none applied twice", async () => {
    const a = make("receive", "RET-F", { qty: 3 });
    const b = make("sell", "RET-F", { qty: 1 });
    await apply([a, b]);
    await age(a.id, 3 * HOUR);
    await age(b.id, 3 * HOUR);
    await round(pruner().p);
    expect(await where(a.id)).toEqual({ live: false, archived: true });
    await h.nats.js.publish(h.topology.commandSubject(h.topology.partitionOf("RET-F")), encodeEnvelope([encodeCommand(a), encodeCommand(b)]), {
      msgID: `replay:ab:${Date.now()}`,
    });
    const fresh = make("receive", "RET-F", { qty: 5 });
    await apply([fresh]);
    expect(await entries(a.id)).toBe(1);
    expect(await entries(b.id)).toBe(1);
    expect(await onHand("RET-F")).toBe(7);
  });
});

describe("POS claims, reservations and holds", () => {
  it("answered POS claims older than TALLY_POS_CLAIM_RETENTION_SECONDS go; younger and unanswered ones stay", async () => {
    await h.sql`
      insert into pos_transactions (store, terminal, transaction_id, payload_hash, result, recorded_at) values
        ('S01', 'T1', 'old', 'h', '{"status":"accepted"}', now() - interval '31 days'),
        ('S01', 'T1', 'young', 'h', '{"status":"accepted"}', now() - interval '29 days'),
        ('S01', 'T1', 'unanswered', 'h', null, now() - interval '60 days')`;
    const r = await round(pruner({ posClaimRetentionMs: 30 * DAY }).p);
    expect(r.rows.pos_transactions).toBe(1);
    const left = await h.sql<Array<{ transaction_id: string }>>`select transaction_id from pos_transactions where terminal = 'T1' order by 1`;
    expect(left.map((l) => l.transaction_id)).toEqual(["unanswered", "young"]);
  });

  it("finished reservations older than TALLY_RESERVATION_RETENTION_SECONDS go with their lines; younger and unfinished ones stay", async () => {
    const rows: Array<[string, string, number]> = [
      ["r_ret_old_released", "released", 8],
      ["r_ret_old_expired", "expired", 8],
      ["r_ret_old_rejected", "rejected", 8],
      ["r_ret_old_fulfilled", "fulfilled", 8],
      ["r_ret_young_released", "released", 6],
      ["r_ret_old_held", "held", 8],
      ["r_ret_old_committed", "committed", 8],
      ["r_ret_old_pending", "pending", 8],
    ];
    for (const [id, status, days] of rows) {
      await h.sql`
        insert into reservations (id, principal, idempotency_key, request_hash, status, ttl_seconds, updated_at)
        values (${id}, 'test', ${id}, 'h', ${status}, 60, now() - ${days} * interval '1 day')`;
      await h.sql`insert into reservation_lines (reservation_id, line, sku, qty, state) values (${id}, 1, 'RET-G', 1, 'pending')`;
    }
    const r = await round(pruner({ reservationRetentionMs: 7 * DAY }).p);
    expect(r.rows.reservations).toBe(4);
    const left = await h.sql<Array<{ id: string }>>`select id from reservations where id like 'r_ret_%' and id <> 'r_ret_c' order by 1`;
    expect(left.map((l) => l.id)).toEqual(["r_ret_old_committed", "r_ret_old_held", "r_ret_old_pending", "r_ret_young_released"]);
    const [{ orphans }] = await h.sql<[{ orphans: number }]>`
      select count(*)::int as orphans from reservation_lines l where not exists (select from reservations r where r.id = l.reservation_id)`;
    expect(orphans).toBe(0);
  });

  it("closed holds older than the reservation horizon go; open and younger ones stay", async () => {
    await h.sql`
      insert into holds (sku, hold_id, location, qty, open_qty, status, updated_at) values
        ('RET-H', 'closed-old', 'S01', 1, 0, 'released', now() - interval '8 days'),
        ('RET-H', 'closed-young', 'S01', 1, 0, 'fulfilled', now() - interval '6 days')`;
    const r = await round(pruner({ reservationRetentionMs: 7 * DAY }).p);
    expect(r.rows.holds).toBeGreaterThanOrEqual(1);
    const left = await h.sql<Array<{ hold_id: string }>>`select hold_id from holds where sku = 'RET-H' order by 1`;
    expect(left.map((l) => l.hold_id)).toEqual(["closed-young"]);
  });
});

describe("dead letters: expired by the pruner, each logged and counted", () => {
  const stored = async () => {
    const info = await h.nats.jsm.streams.info(h.topology.dlqStream);
    return info.state;
  };
  const storedAt = async (seq: number) => (await h.nats.jsm.streams.getMessage(h.topology.dlqStream, { seq }))!.time.getTime();

  it("a letter older than TALLY_DLQ_MAX_AGE_SECONDS is logged with its reason, counted and removed; a younger one stays", async () => {
    const sink = { js: h.nats.js, nc: h.nats.nc, sql: h.sql, topology: h.topology };
    await publishDeadLetter(sink, deadLetter("retention_test", "sku: RET-OLD is not an item", { sku: "RET-OLD" }, { n: 1 }));
    const first = (await stored()).last_seq;
    const tA = await storedAt(first);
    await eventually("the clock to move on", async () => Date.now() > tA + 5);
    await publishDeadLetter(sink, deadLetter("retention_test", "sku: RET-NEW is not an item", { sku: "RET-NEW" }, { n: 2 }));
    const second = (await stored()).last_seq;
    const tB = await storedAt(second);
    expect(tB).toBeGreaterThan(tA);
    // The horizon ends between them: B is exactly 1 ms younger than it, A older.
    const maxAge = 30 * DAY;
    const { p, lines } = pruner({ dlqMaxAgeMs: maxAge }, () => new Date(tB + maxAge - 1));
    const r = await round(p);
    expect(r.deadLettersExpired).toEqual({ age: 1, size: 0 });
    expect(p.metrics.deadLettersExpired.age).toBe(1);
    const state = await stored();
    expect(state.first_seq).toBe(second);
    const logged = lines.filter((l) => String(l.msg).startsWith("dead letter expired"));
    expect(logged).toHaveLength(1);
    expect(logged[0]).toMatchObject({
      level: 40,
      cause: "age",
      deadLetter: { seq: first, origin: "retention_test", reason: "sku: RET-OLD is not an item", payload: { sku: "RET-OLD" } },
    });
    // Counted in the process's metrics.
    const metrics = new ProcessMetrics({ nats: h.nats, topology: h.topology });
    metrics.add({ pruner: p });
    const text = await metrics.registry.metrics();
    expect(text).toMatch(/^tally_retention_dead_letters_expired_total\{cause="age"\} 1$/m);
    expect(text).toMatch(/^tally_retention_rows_pruned_total\{table="command_outcomes"\} \d+$/m);
    expect(text).toMatch(/^tally_retention_last_run_timestamp_seconds [1-9]/m);
  });

  it("over TALLY_DLQ_MAX_BYTES, the oldest letters are expired (logged, counted) until the DLQ is under it", async () => {
    const sink = { js: h.nats.js, nc: h.nats.nc, sql: h.sql, topology: h.topology };
    await publishDeadLetter(sink, deadLetter("retention_test", "too many: first", { n: 3 }, { n: 3 }));
    await publishDeadLetter(sink, deadLetter("retention_test", "too many: second", { n: 4 }, { n: 4 }));
    const before = await stored();
    expect(before.messages).toBeGreaterThanOrEqual(2);
    const { p, lines } = pruner({ dlqMaxBytes: before.bytes - 1 });
    const r = await round(p);
    expect(r.deadLettersExpired).toEqual({ age: 0, size: 1 });
    const after = await stored();
    expect(after.messages).toBe(before.messages - 1);
    expect(after.first_seq).toBeGreaterThan(before.first_seq);
    expect(lines.filter((l) => l.cause === "size")).toHaveLength(1);
  });
});

describe("catalog history", () => {
  /** Catalog versions far above any the test's catalog reaches, recorded `days` ago. */
  const V = 900_000_000;
  const version = (n: number, days: number, source = "ret_test") =>
    h.sql`insert into catalog_versions (version, source, source_ref, source_at, facts, created_at)
          values (${V + n}, ${source}, ${`v${n}`}, null, 1, now() - ${days} * interval '1 day')`;
  const channelVersions = (channel: string, ns: ReadonlyArray<number>) =>
    h.sql`insert into catalog_channel_versions (channel, version) select ${channel}, ${V} + n from unnest(${h.sql.array([...ns])}::int[]) as n`;
  const versionsOf = async (channel: string) =>
    (await h.sql<Array<{ n: number }>>`select (version - ${V})::int as n from catalog_channel_versions where channel = ${channel} order by 1`).map(
      (r) => r.n,
    );
  const versionsLeft = async (source = "ret_test") =>
    (await h.sql<Array<{ n: number }>>`select (version - ${V})::int as n from catalog_versions where source = ${source} order by 1`).map((r) => r.n);
  /** What GET /v1/catalog/versions reads of the two test channels (the lag view). */
  const lagView = async () =>
    (await catalogVersions(h.sql, { ret_web: 300, ret_pos: 300 })).channels
      .filter((c) => c.channel.startsWith("ret_"))
      .map(({ lagSeconds: _, ...c }) => c);

  it("catalog history past TALLY_CATALOG_HISTORY_RETENTION_SECONDS goes; what a channel has not acknowledged, its latest version and younger rows stay", async () => {
    // ret_web acknowledged 6; ret_pos never acknowledged.
    for (const [n, days] of [
      [1, 40],
      [2, 40],
      [3, 40],
      [4, 40],
      [5, 40],
      [6, 10],
      [7, 40],
      [8, 1],
      [9, 40],
    ] as const)
      await version(n, days);
    await channelVersions("ret_web", [1, 3, 5, 6, 7, 9]);
    await channelVersions("ret_pos", [2, 3]);
    await h.sql`insert into catalog_acks (channel, acked_version, acked_by) values ('ret_web', ${V + 6}, 'test')`;
    await h.sql`
      insert into catalog_due (due_at, sku, scheduled_by, done_version) values
        (now() - interval '40 days', 'RET-P', ${V + 1}, ${V + 2}),
        (now() - interval '10 days', 'RET-P', ${V + 1}, ${V + 6}),
        (now() + interval '5 days', 'RET-P', ${V + 8}, null),
        (now() - interval '41 days', 'RET-P', ${V + 1}, null)`;
    await h.sql`
      insert into catalog_prices (sku, price_list, valid_from, valid_to, amount) values
        ('RET-P', 'ret_list', now() - interval '100 days', now() - interval '40 days', 10),
        ('RET-P', 'ret_list', now() - interval '40 days', now() - interval '10 days', 11),
        ('RET-P', 'ret_list', now() - interval '10 days', null, 12),
        ('RET-P', 'ret_list', now() + interval '5 days', now() + interval '9 days', 9)`;
    const lagBefore = await lagView();
    const { p } = pruner({ catalogHistoryRetentionMs: 30 * DAY });
    await round(p);
    // Acknowledged and older than 30 days: 1, 3, 5. Kept: 6 (younger), 7 (not acknowledged), 9 (not acknowledged, the latest).
    expect(await versionsOf("ret_web")).toEqual([6, 7, 9]);
    expect(await versionsOf("ret_pos")).toEqual([2, 3]);
    // Versions no channel row names and older than 30 days: 1, 4, 5. Version 8 is younger.
    expect(await versionsLeft()).toEqual([2, 3, 6, 7, 8, 9]);
    // The lag view reads the same figures (latest, behind by, behind since) before and after.
    expect(await lagView()).toEqual(lagBefore);
    const due = await h.sql<Array<{ done: boolean; future: boolean }>>`
      select done_version is not null as done, due_at > now() as future from catalog_due where sku = 'RET-P' order by due_at`;
    // Done and due over 30 days ago: gone. A change not yet published stays, however old.
    expect(due).toEqual([
      { done: false, future: false },
      { done: true, future: false },
      { done: false, future: true },
    ]);
    const prices = await h.sql<Array<{ amount: string }>>`select amount::text from catalog_prices where sku = 'RET-P' order by valid_from`;
    expect(prices.map((r) => r.amount)).toEqual(["11", "12", "9"]);
    // Counted per table (the worker's own pruner may have taken some of them first).
    const metrics = new ProcessMetrics({ nats: h.nats, topology: h.topology });
    metrics.add({ pruner: p });
    const text = await metrics.registry.metrics();
    for (const table of ["catalog_channel_versions", "catalog_versions", "catalog_due", "catalog_prices", "dead_letter_payloads"])
      expect(text).toMatch(new RegExp(`^tally_retention_rows_pruned_total\\{table="${table}"\\} \\d+$`, "m"));

    // Acknowledging everything: all but the latest may go (6 is still inside the horizon).
    await h.sql`update catalog_acks set acked_version = ${V + 9} where channel = 'ret_web'`;
    await round(p);
    expect(await versionsOf("ret_web")).toEqual([6, 9]);
    await h.sql`update catalog_versions set created_at = now() - interval '31 days' where version = ${V + 6}`;
    await round(p);
    expect(await versionsOf("ret_web")).toEqual([9]);
    expect(await versionsLeft()).toEqual([2, 3, 8, 9]);
    expect((await lagView()).find((c) => c.channel === "ret_web")).toMatchObject({ latestVersion: V + 9, behindBy: 0, behindSince: null });
  });

  it("catalog versions a CDC source may still re-read stay: the outcomes horizon holds them back", async () => {
    await version(1, 40, "ret_erp_cat");
    await h.sql`
      insert into cdc_sources (source, slot, publication, slot_bound_at, halted_at)
      values ('ret_erp_cat', 'ret_slot_cat', 'ret_pub_cat', now() - interval '50 days', null)`;
    try {
      await round(pruner({ catalogHistoryRetentionMs: 30 * DAY }).p);
      expect(await versionsLeft("ret_erp_cat")).toEqual([1]);
      await h.sql`update cdc_sources set slot_bound_at = now() - interval '1 hour' where source = 'ret_erp_cat'`;
      await round(pruner({ catalogHistoryRetentionMs: 30 * DAY }).p);
      expect(await versionsLeft("ret_erp_cat")).toEqual([]);
    } finally {
      await h.sql`delete from cdc_sources where source = 'ret_erp_cat'`;
    }
  });
});

describe("dead-letter payloads", () => {
  it("a dead-letter payload no letter names goes once last published longer ago than TALLY_DLQ_MAX_AGE_SECONDS and a day; a younger one stays", async () => {
    await h.sql`
      insert into dead_letter_payloads (key, origin, payload, created_at) values
        ('ret:orphan-old', 'retention_test', '\\x00', now() - interval '31 days 1 hour'),
        ('ret:orphan-young', 'retention_test', '\\x00', now() - interval '30 days 23 hours')`;
    const { p } = pruner({ dlqMaxAgeMs: 30 * DAY });
    await round(p);
    const left = await h.sql<Array<{ key: string }>>`select key from dead_letter_payloads where key like 'ret:orphan-%' order by 1`;
    expect(left.map((l) => l.key)).toEqual(["ret:orphan-young"]);
  });

  it("an expired letter takes its payload, unless a later letter of the same key named it since", async () => {
    const letter = (key: string) =>
      JSON.stringify({
        ...deadLetter("retention_test", `stored payload ${key}`, null, { key }),
        payloadStored: { in: "postgres", table: "dead_letter_payloads", key, bytes: 1, json: true },
      });
    await h.sql`
      insert into dead_letter_payloads (key, origin, payload) values
        ('ret:payload-gone', 'retention_test', '\\x31'),
        ('ret:payload-again', 'retention_test', '\\x31')`;
    for (const key of ["ret:payload-gone", "ret:payload-again"])
      await h.nats.js.publish(h.topology.dlqSubject("retention_test"), letter(key), { msgID: `${key}:${Date.now()}` });
    // The second key was published again later (its row written again).
    await h.sql`update dead_letter_payloads set created_at = now() + interval '3 hours' where key = 'ret:payload-again'`;
    const last = (await h.nats.jsm.streams.info(h.topology.dlqStream)).state.last_seq;
    const storedAt = (await h.nats.jsm.streams.getMessage(h.topology.dlqStream, { seq: last }))!.time.getTime();
    const { p, lines } = pruner({ dlqMaxAgeMs: 30 * DAY }, () => new Date(storedAt + 30 * DAY + 1000));
    const r = await round(p);
    expect(r.deadLettersExpired.age).toBeGreaterThanOrEqual(2);
    expect((await h.nats.jsm.streams.info(h.topology.dlqStream)).state.messages).toBe(0);
    expect(lines.filter((l) => String(l.msg).startsWith("dead letter expired"))).toHaveLength(r.deadLettersExpired.age);
    const left = await h.sql<Array<{ key: string }>>`select key from dead_letter_payloads where key like 'ret:payload-%' order by 1`;
    expect(left.map((l) => l.key)).toEqual(["ret:payload-again"]);
  });
});

describe("ledger partitions", () => {
  const exists = async (name: string) => {
    const [{ found }] = await h.sql<[{ found: boolean }]>`select to_regclass(${name}) is not null as found`;
    return found;
  };
  const partitionOf = (d: Date) => `ledger_entries_${d.getUTCFullYear()}_${String(d.getUTCMonth() + 1).padStart(2, "0")}`;

  it("a prune round creates the partitions of the months ahead, without a restart; the worker's own start made only this month's and the next two", async () => {
    const now = new Date();
    // Five months from now: beyond what the worker made at start (this month and the next two).
    const later = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 5, 15));
    const months = [0, 1, 2].map((i) => partitionOf(new Date(Date.UTC(later.getUTCFullYear(), later.getUTCMonth() + i, 1))));
    for (const m of months) expect(await exists(m), m).toBe(false);
    const r = await round(pruner({}, () => later).p);
    expect(r.ledgerPartitions).toBe(3);
    for (const m of months) expect(await exists(m), m).toBe(true);
    // Its bounds are that UTC month's.
    const [{ bound }] = await h.sql<[{ bound: string }]>`
      select pg_get_expr(c.relpartbound, c.oid) as bound from pg_class c where c.relname = ${months[0]!}`;
    expect(bound).toContain(`${later.getUTCFullYear()}-${String(later.getUTCMonth() + 1).padStart(2, "0")}-01`);
  });
});
