import { afterAll, beforeAll, describe, expect, it } from "vitest";
import postgres from "postgres";
import type { Command } from "../src/contract/command.ts";
import { verifyLedger } from "../ledger/index.ts";
import { publishCommands } from "../src/wire/publisher.ts";
import type { TestContext } from "./support/context.ts";
import { startNats, type NatsServer } from "./support/nats.ts";
import { startPostgres, type PostgresServer } from "./support/postgres.ts";
import { decodedCommands, eventually, harness, startInProcess, type Harness } from "./support/tally.ts";
import { expectationOf, generateCommands, type RawCommand } from "./support/workload.ts";

// This file owns its servers: it kills them.
let pg: PostgresServer;
let nats: NatsServer;
const OPTS = { partitions: 4, leaseTtlMs: 1500 };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

beforeAll(async () => {
  [pg, nats] = await Promise.all([startPostgres(), startNats()]);
});
afterAll(async () => {
  await Promise.allSettled([pg?.destroy(), nats?.destroy()]);
});

async function freshContext(name: string): Promise<TestContext> {
  const admin = postgres(pg.url(), { max: 1, onnotice: () => {} });
  await admin.unsafe(`create database ${name}`);
  await admin.end();
  return { env: name, databaseUrl: pg.url(name), natsUrl: nats.url, adminUrl: pg.url() };
}

async function expectExact(h: Harness, raw: ReadonlyArray<RawCommand>): Promise<void> {
  const expected = expectationOf(raw);
  const outcomes = await h.sql<Array<{ command_id: string; status: string; reason: string | null }>>`
    select command_id, status, reason from command_outcomes`;
  expect(new Set(outcomes.filter((o) => o.status === "applied").map((o) => o.command_id))).toEqual(expected.applied);
  expect(new Map(outcomes.filter((o) => o.status === "rejected").map((o) => [o.command_id, o.reason]))).toEqual(expected.rejected);
  const [{ entries }] = await h.sql<[{ entries: number }]>`select count(*)::int as entries from ledger_entries`;
  expect(entries).toBe(expected.entries);
  const balances = await h.sql<Array<{ sku: string; location: string; bucket: string; qty: number }>>`
    select sku, location, bucket, qty from balances`;
  const actual = new Map(balances.map((b) => [`${b.sku}|${b.location}|${b.bucket}`, b.qty]));
  for (const [key, l] of expected.locations)
    for (const bucket of ["on_hand", "reserved", "in_transit", "damaged"] as const)
      expect(actual.get(`${key}|${bucket}`) ?? 0, `${key} ${bucket}`).toBe(l[bucket]);
  expect((await verifyLedger(h.sql)).problem).toBeNull();
}

/**
 * Publishes `commands` in paced rounds, calling `fault` once, a third of the way through. With
 * `during`, publishing goes on while the fault lasts, so the workers have work when it hits.
 */
async function streamWithFault(h: Harness, commands: ReadonlyArray<Command>, fault: () => Promise<void>, during = false): Promise<void> {
  const rounds = 15;
  const per = Math.ceil(commands.length / rounds);
  let faulting: Promise<void> | null = null;
  for (let r = 0; r < rounds; r++) {
    if (r === 5) {
      faulting = fault();
      if (!during) await faulting;
    }
    await publishCommands(h.nats.js, h.topology, commands.slice(r * per, (r + 1) * per), { envelopeSize: 20 });
    await sleep(100);
  }
  await faulting;
}

const outcomeCount = async (h: Harness) => (await h.sql<[{ n: number }]>`select count(*)::int as n from command_outcomes`)[0].n;

describe("outages", () => {
  it("Postgres killed (-9) and restarted mid-stream: workers retry from the checkpoint; the ledger is exact", async () => {
    const ctx = await freshContext("outage_pg");
    const h = await harness(ctx, OPTS);
    const tally = await startInProcess(ctx, ["worker", "relay"], OPTS);
    try {
      const raw = generateCommands(3000, 100, 21, "pg");
      const commands = decodedCommands(raw);
      await streamWithFault(
        h,
        commands,
        async () => {
          await eventually("some progress before the crash", async () => (await outcomeCount(h)) > 0);
          await pg.kill();
          await sleep(1500); // commands keep arriving: the worker fails and backs off meanwhile
          await pg.start();
        },
        true,
      );
      await eventually("every command to have an outcome", async () => (await outcomeCount(h)) === commands.length, 120_000);
      expect(tally.worker!.metrics.retries).toBeGreaterThan(0);
      await expectExact(h, raw);
    } finally {
      await tally.close();
      await h.close();
    }
  });

  it("nats-server killed (-9) and restarted mid-stream: publishers and workers recover; the ledger is exact", async () => {
    const ctx = await freshContext("outage_nats");
    const h = await harness(ctx, OPTS);
    const tally = await startInProcess(ctx, ["worker", "relay"], OPTS);
    try {
      const raw = generateCommands(3000, 100, 22, "nt");
      const commands = decodedCommands(raw);
      await streamWithFault(h, commands, async () => {
        await eventually("some progress before the crash", async () => (await outcomeCount(h)) > 0);
        await nats.kill();
        await sleep(1000);
        await nats.start();
      });
      await eventually("every command to have an outcome", async () => (await outcomeCount(h)) === commands.length, 120_000);
      await expectExact(h, raw);
      await eventually("the outbox to drain after the outage", async () => {
        const [{ n }] = await h.sql<[{ n: number }]>`select count(*)::int as n from outbox`;
        return n === 0;
      });
    } finally {
      await tally.close();
      await h.close();
    }
  });

  it("a partition that cannot advance raises an alert and never skips ahead", async () => {
    const ctx = await freshContext("outage_alert");
    const h = await harness(ctx, OPTS);
    const tally = await startInProcess(ctx, ["worker"], OPTS);
    const alerts: Array<{ kind: string; partition: number }> = [];
    const sub = h.nats.nc.subscribe(h.topology.eventSubject("alert"), {
      callback: (_err, m) => {
        alerts.push(m.json());
      },
    });
    try {
      const raw = generateCommands(400, 40, 23, "al");
      await eventually("the worker to hold its partitions", async () => tally.worker!.held().length === OPTS.partitions);
      await pg.kill();
      await publishCommands(h.nats.js, h.topology, decodedCommands(raw));
      // The alert comes at the fifth failed attempt in a row; with Postgres down an attempt takes
      // seconds (postgres.js waits on its connection attempts), so this can take over a minute.
      await eventually("an alert", async () => alerts.length > 0, 150_000);
      expect(alerts[0]).toMatchObject({ kind: "partition_stuck" });
      await pg.start();
      await eventually("every command to have an outcome", async () => (await outcomeCount(h)) === raw.length, 120_000);
      await expectExact(h, raw);
    } finally {
      sub.unsubscribe();
      await tally.close();
      await h.close();
    }
  }, 360_000);
});
