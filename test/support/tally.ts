import { spawn, type ChildProcess } from "node:child_process";
import { AckPolicy, DeliverPolicy } from "@nats-io/jetstream";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { connectPostgres, type Sql } from "../../src/platform/db.ts";
import { connectNats, ensureTopology, type NatsHandles } from "../../src/wire/nats.ts";
import { loadSettings, type Settings } from "../../src/platform/settings.ts";
import { migrate } from "../../ledger/index.ts";
import { decodeCommand, type Command } from "../../src/contract/command.ts";
import { topology, type Topology } from "../../src/wire/topology.ts";
import { startTally, type Role } from "../../src/app/roles.ts";
import { publishCommands } from "../../src/wire/publisher.ts";
import { createLogger } from "../../src/platform/log.ts";
import { decodeTallyConfig, type TallyConfig } from "../../src/platform/configFile.ts";
import type { TestContext } from "./context.ts";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const BIN = path.join(ROOT, "bin/tally.js");

/** The channels the integration tests use. */
export const TEST_CHANNELS: TallyConfig = decodeTallyConfig({
  channels: {
    web: { locations: ["DC1", "S01"], buffer: 2 },
    store_s01: { locations: ["S01"], buffer: 0 },
  },
  sources: {},
});

export interface TestEnvOptions {
  readonly partitions?: number;
  readonly leaseTtlMs?: number;
  readonly maxActors?: number;
  readonly applyConcurrency?: number;
  /** TALLY_STREAM_TOKEN_SECRET: unset, the API mints no stream tokens (503). */
  readonly streamTokenSecret?: string;
}

/** The environment variables a Tally process of this test file runs with. */
export function tallyEnv(ctx: TestContext, opts: TestEnvOptions = {}): Record<string, string> {
  return {
    TALLY_ENV: ctx.env,
    TALLY_DATABASE_URL: ctx.databaseUrl,
    TALLY_NATS_URL: ctx.natsUrl,
    TALLY_PARTITIONS: String(opts.partitions ?? 4),
    TALLY_LEASE_TTL_MS: String(opts.leaseTtlMs ?? 5000),
    ...(opts.maxActors !== undefined ? { TALLY_MAX_ACTORS: String(opts.maxActors) } : {}),
    ...(opts.applyConcurrency !== undefined ? { TALLY_APPLY_CONCURRENCY: String(opts.applyConcurrency) } : {}),
    ...(opts.streamTokenSecret !== undefined ? { TALLY_STREAM_TOKEN_SECRET: opts.streamTokenSecret } : {}),
    TALLY_LOG_LEVEL: process.env.TALLY_LOG_LEVEL ?? "warn",
    // A process without the api role serves /metrics: on any free port, so tests running side by side never collide.
    TALLY_METRICS_PORT: "0",
    TALLY_METRICS_HOST: "127.0.0.1",
  };
}

export function testSettings(ctx: TestContext, opts: TestEnvOptions = {}): Settings {
  return loadSettings(tallyEnv(ctx, opts));
}

/** Connections for a test to inspect and drive one environment, migrated and with its NATS topology. */
export interface Harness {
  readonly settings: Settings;
  readonly topology: Topology;
  readonly sql: Sql;
  readonly nats: NatsHandles;
  close(): Promise<void>;
}

export async function harness(ctx: TestContext, opts: TestEnvOptions = {}): Promise<Harness> {
  const settings = testSettings(ctx, opts);
  const sql = connectPostgres(ctx.databaseUrl, { max: 4, application: "test" });
  await migrate(sql, ctx.env);
  const nc = await connectNats(ctx.natsUrl, "test");
  const t = topology(settings.env, settings.partitions);
  const nats = await ensureTopology(nc, t, { duplicateWindowMs: settings.duplicateWindowMs, leaseTtlMs: settings.leaseTtlMs });
  return {
    settings,
    topology: t,
    sql,
    nats,
    close: async () => {
      await nc.close();
      await sql.end({ timeout: 5 });
    },
  };
}

/** Tally roles running in this process. */
export function startInProcess(ctx: TestContext, roles: ReadonlyArray<Role>, opts: TestEnvOptions = {}, config = TEST_CHANNELS) {
  return startTally(testSettings(ctx, opts), config, roles, createLogger("test-tally", process.env.TALLY_LOG_LEVEL ?? "warn"));
}

/** A `tally` CLI child process. */
export function spawnTally(args: ReadonlyArray<string>, env: Record<string, string>): ChildProcess & { output: () => string } {
  const child = spawn(process.execPath, [BIN, ...args], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ["pipe", "pipe", "pipe"],
  });
  let out = "";
  child.stdout!.on("data", (d: Buffer) => (out += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (out += d.toString()));
  return Object.assign(child, { output: () => out });
}

/** Runs the CLI to completion: exit code and combined output. */
export async function runTally(
  args: ReadonlyArray<string>,
  env: Record<string, string>,
  stdin?: string,
): Promise<{ code: number | null; output: string; stdout: string }> {
  const child = spawnTally(args, env);
  let stdout = "";
  child.stdout!.on("data", (d: Buffer) => (stdout += d.toString()));
  if (stdin !== undefined) child.stdin!.end(stdin);
  else child.stdin!.end();
  const code = await new Promise<number | null>((resolve) => child.on("exit", (c) => resolve(c)));
  return { code, output: child.output(), stdout };
}

/** Polls `check` until it returns true (or throws after `timeoutMs`, with `what` in the message). */
export async function eventually(what: string, check: () => Promise<boolean>, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Every message currently stored in `stream` on `subject` (a filter; wildcards allowed), oldest first. */
export async function readStream(
  h: Harness,
  stream: string,
  subject: string,
): Promise<Array<{ subject: string; seq: number; data: unknown; msgId: string | undefined }>> {
  // A plain ephemeral consumer: nats-server 2.9 has no filter_subjects (which ordered consumers use).
  const info = await h.nats.jsm.consumers.add(stream, {
    filter_subject: subject,
    ack_policy: AckPolicy.None,
    deliver_policy: DeliverPolicy.All,
    inactive_threshold: 30_000_000_000,
  });
  const consumer = await h.nats.js.consumers.get(stream, info.name);
  const out: Array<{ subject: string; seq: number; data: unknown; msgId: string | undefined }> = [];
  for (;;) {
    const batch = await consumer.fetch({ max_messages: 500, expires: 1000 });
    let n = 0;
    for await (const m of batch) {
      n++;
      out.push({ subject: m.subject, seq: m.seq, data: m.json(), msgId: m.headers?.get("Nats-Msg-Id") });
    }
    if (n === 0) break;
  }
  return out;
}

/** How many outcomes the ledger holds for these command ids, and for how many distinct ones (a duplicate shows as n > distinct). */
export async function outcomeCounts(sql: Sql, ids: ReadonlyArray<string>): Promise<{ n: number; distinct: number }> {
  const [counts] = await sql<[{ n: number; distinct: number }]>`
    select count(*)::int as n, count(distinct command_id)::int as distinct
      from command_outcomes where command_id = any(${sql.array([...ids])}::text[])`;
  return counts;
}

/** Raw commands through the canonical decoder; a test's own commands must decode. */
export const decodedCommands = (raw: ReadonlyArray<unknown>): Array<Command> =>
  raw.map((c) => {
    const d = decodeCommand(c);
    if (d._tag === "Left") throw d.left;
    return d.right;
  });

/**
 * Pulls from another client's consumer `name` on `stream` and never acknowledges: to the server
 * those messages are delivered, exactly like deliveries lost with a dropped connection. Takes up to
 * `max` messages, `batch` per pull, while `more()` holds; stops early when the consumer is gone (its
 * owner replaced it). Resolves with the number taken.
 */
export async function stealDeliveries(
  nats: NatsHandles,
  stream: string,
  name: string,
  opts: { max: number; batch: number; more: () => boolean },
): Promise<number> {
  const consumer = await nats.js.consumers.get(stream, name);
  let stolen = 0;
  while (stolen < opts.max && opts.more()) {
    try {
      for await (const _ of await consumer.fetch({ max_messages: opts.batch, expires: 1000 })) stolen++;
    } catch (error) {
      // Only the end of that consumer ends the theft; anything else is the test's own fault.
      if (
        await nats.jsm.consumers.info(stream, name).then(
          () => true,
          () => false,
        )
      )
        throw error;
      break;
    }
  }
  return stolen;
}

/** A maker of test commands at S01 with ids `<prefix>:<n>` and times a second apart; `fields` adds to or overrides them. */
export function commandMaker(prefix: string): (type: string, sku: string, fields: Record<string, unknown>) => Command {
  let n = 0;
  return (type, sku, fields) => {
    n++;
    return decodedCommands([
      {
        id: `${prefix}:${n}`,
        type,
        sku,
        location: "S01",
        source: { system: "test", ref: `ref-${n}` },
        occurredAt: new Date(Date.UTC(2026, 10, 26, 9, 0, n)).toISOString(),
        ...fields,
      },
    ])[0]!;
  };
}

/** Waits until the commands are applied (an outcome each) and the outbox is relayed. */
export async function settle(h: Harness, ids: ReadonlyArray<string>): Promise<void> {
  await eventually("the commands to be applied and relayed", async () => {
    const { n: done } = await outcomeCounts(h.sql, ids);
    const [{ pending }] = await h.sql<[{ pending: number }]>`select count(*)::int as pending from outbox`;
    return done === ids.length && pending === 0;
  });
}

/** Publishes canonical commands and waits until each is decided (an outcome each; the outbox aside: no relay needed). */
export async function publishAndDecide(h: Harness, commands: ReadonlyArray<Command>, what: string, timeoutMs?: number): Promise<void> {
  await publishCommands(h.nats.js, h.topology, commands);
  const ids = commands.map((c) => c.id);
  await eventually(what, async () => (await outcomeCounts(h.sql, ids)).n === ids.length, timeoutMs);
}

/** Publishes canonical commands through the normal path and waits until they are applied and relayed. */
export async function publishAndSettle(h: Harness, commands: ReadonlyArray<Command>): Promise<void> {
  await publishCommands(h.nats.js, h.topology, commands);
  await settle(
    h,
    commands.map((c) => c.id),
  );
}
