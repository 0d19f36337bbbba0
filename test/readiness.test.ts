import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DiscardPolicy } from "@nats-io/jetstream";
import { encodeEnvelope } from "../src/wire/envelope.ts";
import type { Command } from "../src/contract/command.ts";
import { ensureTopology } from "../src/wire/nats.ts";
import { publishCommands } from "../src/wire/publisher.ts";
import { buildApp } from "../src/http/server.ts";
import { createLogger } from "../src/platform/log.ts";
import { testContext } from "./support/context.ts";
import { demoSources } from "./support/cdc.ts";
import { eventually, harness, startInProcess } from "./support/tally.ts";
import { startApi, type ApiFixture } from "./apiSupport.ts";

// /readyz must say what is wrong: no partition held, a stuck partition, the commands stream gone or full.
let withWorker: ApiFixture;
let apiOnly: ApiFixture;

beforeAll(async () => {
  [withWorker, apiOnly] = await Promise.all([
    testContext().then((ctx) => startApi(ctx, {}, ["worker"])),
    testContext().then((ctx) => startApi(ctx, {}, [])),
  ]);
}, 60_000);
afterAll(async () => {
  await Promise.allSettled([withWorker?.close(), apiOnly?.close()]);
});

type Readiness = { ready: boolean; checks: Record<string, { ok: boolean; detail?: string; [k: string]: unknown }> };
const readyz = async (api: ApiFixture): Promise<{ status: number; body: Readiness }> => {
  const r = await api.call({ method: "GET", url: "/readyz" });
  return { status: r.statusCode, body: r.json() };
};
const until = (api: ApiFixture, what: string, check: (r: { status: number; body: Readiness }) => boolean) =>
  eventually(what, async () => check(await readyz(api)), 60_000);

describe("/readyz for the worker role", () => {
  it("is ready when every partition is held and none is stuck", async () => {
    // The answer that was ready is the one checked (under load a later one may exceed a check's 2 s bound).
    let ready: Readiness | null = null;
    await until(withWorker, "ready", (r) => {
      // Ready means every partition is held by some worker; this worker (the only one) also says it holds all 4 once its
      // last claim has landed locally, a moment after the lease bucket shows it.
      if (r.status !== 200 || r.body.checks.leases?.held !== 4) return false;
      ready = r.body;
      return true;
    });
    const body = ready! as Readiness;
    expect(body.checks.leases).toMatchObject({ ok: true, held: 4, heldByAnyWorker: 4 });
    expect(body.checks.stuck).toMatchObject({ ok: true });
    expect(body.checks.jetstream).toMatchObject({ ok: true });
  });

  it("is not ready while a partition is stuck, naming it and its error; ready again once an operator skips the message (GET /v1/partitions/stuck, POST /v1/partitions/:p/skip)", async () => {
    const { sql, h } = withWorker;
    await sql.unsafe(`
      create function test_refuse() returns trigger language plpgsql as $$
      begin raise exception 'refused by the readiness test'; end $$;
      create trigger test_refuse before insert on ledger_entries for each row execute function test_refuse();`);
    try {
      const command = {
        id: "ready:stuck:1",
        type: "receive",
        sku: "READY-SKU",
        location: "S01",
        qty: 1,
        source: { system: "erp", ref: "r" },
        occurredAt: "2026-11-26T10:00:00Z",
      };
      const partition = h.topology.partitionOf(command.sku);
      // Messages of another partition first: stream sequences interleave, so the stuck message is not the checkpoint + 1.
      const other = (partition + 1) % 4;
      for (let i = 0; i < 3; i++) await h.nats.js.publish(h.topology.commandSubject(other), encodeEnvelope([]), { msgID: `ready:other:${i}` });
      const { seq } = await h.nats.js.publish(h.topology.commandSubject(partition), encodeEnvelope([command]), { msgID: command.id });
      await until(withWorker, "not ready with the partition stuck", (r) => r.status === 503 && r.body.checks.stuck?.ok === false);
      const { body } = await readyz(withWorker);
      expect(body.ready).toBe(false);
      expect(body.checks.stuck!.partitions).toBe(String(partition));
      expect(body.checks.stuck!.detail).toMatch(
        new RegExp(`^partition ${partition} stuck at message ${seq} after \\d+ attempts: refused by the readiness test \\(SQLSTATE P0001\\)`),
      );
      expect(body.checks.leases).toMatchObject({ ok: false });
      expect(body.checks.leases!.detail).toContain(`stuck here: ${partition}`);

      // An operator sees it over HTTP too, and skips the message: the partition advances, ready again.
      const stuck = await withWorker.call({ method: "GET", url: "/v1/partitions/stuck", as: "admin" });
      expect(stuck.statusCode).toBe(200);
      const [row] = stuck.json().stuck;
      expect(row).toMatchObject({
        partition,
        streamSeq: seq,
        attempts: expect.any(Number),
        error: expect.stringContaining("refused by the readiness test"),
      });
      const notStuck = await withWorker.call({ method: "POST", url: `/v1/partitions/${other}/skip`, as: "admin", payload: {} });
      expect(notStuck.statusCode).toBe(409);
      const skip = await withWorker.call({ method: "POST", url: `/v1/partitions/${partition}/skip`, as: "admin", payload: {} });
      expect(skip.statusCode).toBe(202);
      expect(skip.json()).toEqual({ partition, seq: row.streamSeq, requested: true });
      await until(withWorker, "ready again", (r) => r.status === 200);
      const [{ n }] = await sql<[{ n: number }]>`select count(*)::int as n from command_outcomes where command_id = ${command.id}`;
      expect(n).toBe(0);
    } finally {
      await sql.unsafe(`drop trigger test_refuse on ledger_entries; drop function test_refuse();`);
    }
  }, 120_000);

  it("is not ready when no worker holds the partitions (0 of 4)", async () => {
    await withWorker.tally!.worker!.stop();
    await until(withWorker, "not ready without leases", (r) => r.status === 503);
    const { body } = await readyz(withWorker);
    expect(body.checks.leases).toMatchObject({ ok: false, held: 0, heldByAnyWorker: 0 });
    expect(body.checks.leases!.detail).toBe("0 of 4 partitions held by this worker, 0 by some worker");
  });
});

describe("/readyz for every role: JetStream", () => {
  it("is not ready while the commands stream is missing (a wiped store), ready once it exists again", async () => {
    const { h } = apiOnly;
    await until(apiOnly, "ready", (r) => r.status === 200);
    await h.nats.jsm.streams.delete(h.topology.commandsStream);
    const { status, body } = await readyz(apiOnly);
    expect(status).toBe(503);
    expect(body.checks.jetstream).toEqual({
      ok: false,
      detail: `the commands stream ${h.topology.commandsStream} is missing (was the NATS store lost?)`,
    });
    await ensureTopology(h.nats.nc, h.topology, { duplicateWindowMs: h.settings.duplicateWindowMs, leaseTtlMs: h.settings.leaseTtlMs });
    expect((await readyz(apiOnly)).status).toBe(200);
  });

  it("is not ready when the commands stream is full", async () => {
    const { h } = apiOnly;
    const info = await h.nats.jsm.streams.info(h.topology.commandsStream);
    await h.nats.jsm.streams.update(h.topology.commandsStream, { ...info.config, max_bytes: 4096, discard: DiscardPolicy.New });
    try {
      expect((await readyz(apiOnly)).status).toBe(200);
      for (let i = 0; ; i++) {
        const ok = await h.nats.js.publish(h.topology.commandSubject(0), "x".repeat(500), { msgID: `fill-${i}` }).then(
          () => true,
          () => false,
        );
        if (!ok) break; // refused: full
      }
      const { status, body } = await readyz(apiOnly);
      expect(status).toBe(503);
      expect(body.checks.jetstream!.detail).toMatch(/^the commands stream is full: \d+ of 4096 bytes$/);
    } finally {
      await h.nats.jsm.streams.delete(h.topology.commandsStream);
      await ensureTopology(h.nats.nc, h.topology, { duplicateWindowMs: h.settings.duplicateWindowMs, leaseTtlMs: h.settings.leaseTtlMs });
    }
  });

  it("is not ready after JetStream refused a command publish for want of room (as when the server's own store is full), until one succeeds", async () => {
    const { h } = apiOnly;
    const command = (i: number) =>
      ({
        id: `ready:full:${i}`,
        type: "receive",
        sku: "FULL-SKU",
        location: "S01",
        qty: 1,
        source: { system: "erp", ref: "r" },
        occurredAt: "2026-11-26T10:00:00Z",
      }) as unknown as Command;
    await publishCommands(h.nats.js, h.topology, [command(1)]);
    expect((await readyz(apiOnly)).status).toBe(200);
    const info = await h.nats.jsm.streams.info(h.topology.commandsStream);
    // A message limit, which no byte figure shows: the refusal itself is what readiness must notice.
    await h.nats.jsm.streams.update(h.topology.commandsStream, { ...info.config, max_msgs: info.state.messages, discard: DiscardPolicy.New });
    await expect(publishCommands(h.nats.js, h.topology, [command(2)], { attempts: 1 })).rejects.toThrow(/maximum messages exceeded/i);
    const { status, body } = await readyz(apiOnly);
    expect(status).toBe(503);
    expect(body.checks.jetstream!.detail).toMatch(/^JetStream refused a command publish \d+ s ago for want of room: .*maximum messages exceeded/i);
    await h.nats.jsm.streams.update(h.topology.commandsStream, { ...info.config, max_msgs: -1 });
    await publishCommands(h.nats.js, h.topology, [command(3)]);
    expect((await readyz(apiOnly)).status).toBe(200);
  });
});

describe("/readyz for the cdc role", () => {
  it("is not ready while a source's replication stream is not open, naming the source", async () => {
    const ctx = await testContext();
    const h = await harness(ctx);
    const demo = await demoSources(ctx);
    // The shop's database cannot be reached: its reader never streams; the ERP's does.
    const shopUrl = process.env.TALLY_SOURCE_SHOP_URL;
    process.env.TALLY_SOURCE_SHOP_URL = "postgres://postgres@127.0.0.1:1/unreachable";
    const tally = await startInProcess(ctx, ["cdc"], {}, demo.config);
    process.env.TALLY_SOURCE_SHOP_URL = shopUrl;
    const app = await buildApp({
      settings: h.settings,
      config: demo.config,
      topology: h.topology,
      sql: h.sql,
      nats: h.nats,
      log: createLogger("test-api", "silent"),
      tokens: [],
      readers: tally.readers,
      options: { background: false },
    });
    try {
      await eventually("the ERP source to stream", async () => tally.readers.find((r) => r.name === "erp")?.streaming === true, 60_000);
      const r = await app.inject({ method: "GET", url: "/readyz" });
      expect(r.statusCode).toBe(503);
      expect(r.json().checks.cdc).toEqual({ ok: false, detail: "not streaming (snapshotting, reconnecting or stopped): shop" });
      expect(r.json().checks.leases).toBeUndefined();
    } finally {
      await app.close();
      await tally.close();
      await demo.close();
      await h.close();
    }
  }, 120_000);
});
