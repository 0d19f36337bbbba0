import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { Kvm, type KV } from "@nats-io/kv";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { readFile } from "node:fs/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodeCommand, type Command } from "../src/contract/command.ts";
import { migrate } from "../ledger/index.ts";
import { startTally, type Role } from "../src/app/roles.ts";
import { loadSettings } from "../src/platform/settings.ts";
import { connectPostgres, type Sql } from "../src/platform/db.ts";
import { sha256Hex } from "../src/http/auth.ts";
import { createLogger } from "../src/platform/log.ts";
import { connectNats } from "../src/wire/nats.ts";
import { publishCommands } from "../src/wire/publisher.ts";
import { topology } from "../src/wire/topology.ts";
import { demoSources, type DemoSources } from "./support/cdc.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { channelUserTemplate, shippedNatsConfig, startSecuredNats, type NatsUser, type SecuredNats } from "./support/securedNats.ts";
import { eventually, tallyEnv } from "./support/tally.ts";

let ctx: TestContext;
let nats: SecuredNats;
let demo: DemoSources;
let sql: Sql;
const running: Array<{ close(): Promise<void> }> = [];
const clients: Array<NatsConnection> = [];
let apiUrl: string;

const READER_TOKEN = "secret-reader";

/** Starts `roles` in this process, connected to NATS as `user` (the URL form for CDC: nats://user:pass@host). */
async function startAs(user: NatsUser, roles: ReadonlyArray<Role>, urlCredentials = false) {
  const env = nats.env(user);
  const { user: u, password } = nats.credentials(user);
  const settings = loadSettings({
    ...tallyEnv(ctx),
    ...(urlCredentials ? { TALLY_NATS_URL: `nats://${u}:${password}@127.0.0.1:${nats.server.port}` } : env),
    TALLY_HTTP_PORT: "0",
    TALLY_HTTP_HOST: "127.0.0.1",
    TALLY_API_TOKENS: JSON.stringify([{ id: "reader", sha256: sha256Hex(READER_TOKEN), scopes: ["availability:read"] }]),
  });
  const t = await startTally(settings, demo.config, roles, createLogger(`test-${user}`, process.env.TALLY_LOG_LEVEL ?? "warn"));
  running.push(t);
  return t;
}

async function connectAs(user: NatsUser | { channel: string }): Promise<NatsConnection> {
  const { user: u, password } = typeof user === "string" ? nats.credentials(user) : nats.channelCredentials(user.channel);
  const nc = await connectNats(nats.server.url, `test-${u}`, { user: u, password });
  clients.push(nc);
  return nc;
}

const command = (id: string, sku: string, qty: number): Command => {
  const d = decodeCommand({
    id,
    type: "receive",
    sku,
    location: "DC1",
    qty,
    source: { system: "test", ref: id },
    occurredAt: "2026-11-30T10:00:00Z",
  });
  if (d._tag === "Left") throw d.left;
  return d.right;
};

async function outcome(id: string): Promise<string | undefined> {
  const [row] = await sql<Array<{ status: string }>>`select status from command_outcomes where command_id = ${id}`;
  return row?.status;
}

async function availabilityKv(nc: NatsConnection): Promise<KV> {
  return new Kvm(jetstream(nc)).open(`tally_${ctx.env}_availability`);
}

beforeAll(async () => {
  ctx = await testContext();
  sql = connectPostgres(ctx.databaseUrl, { max: 2, application: "test-nats-auth" });
  await migrate(sql, ctx.env);
  demo = await demoSources(ctx);
  // Channel web's user, added from the shipped template as an operator would.
  nats = await startSecuredNats(ctx.env, { channels: ["web"] });
  // Each role as its own user, in the order a deployment brings them up.
  await startAs("worker", ["worker"]);
  await startAs("relay", ["relay"]);
  const api = await startAs("api", ["api"]);
  const address = api.api!.server.address();
  apiUrl = typeof address === "object" && address !== null ? `http://127.0.0.1:${address.port}` : String(address);
  await startAs("cdc", ["cdc"], true);
}, 120_000);

afterAll(async () => {
  for (const nc of clients) await nc.close().catch(() => {});
  for (const t of running.reverse()) await t.close().catch(() => {});
  await demo?.close();
  await sql?.end({ timeout: 5 });
  await nats?.close();
});

describe("NATS with the shipped per-role configuration (deploy/nats/tally.conf)", () => {
  it("every role works as its own user: CDC snapshot → worker → relay → availability that a channel reader reads and watches, the API serves, POS over NATS", async () => {
    // The demo ERP's opening stock reaches the ledger through the cdc user's commands and the worker user.
    await eventually("the CDC snapshot to reach the availability bucket", async () => {
      const [{ n }] = await sql<[{ n: number }]>`select count(*)::int as n from ledger_entries where sku = 'SKU-0003'`;
      return n > 0;
    });
    const reader = await connectAs("reader");
    const kv = await availabilityKv(reader);
    await eventually("the relay user to write availability", async () => (await kv.get("web.SKU-0003")) !== null);
    const before = (await kv.get("web.SKU-0003"))!.json<{ available: number }>().available;

    // A channel reader watches the bucket and subscribes to availability subjects.
    const watch = await kv.watch({ key: "web.SKU-0003" });
    const seen: Array<number> = [];
    void (async () => {
      for await (const e of watch) if (e.operation === "PUT") seen.push(e.json<{ available: number }>().available);
    })();
    const sub = reader.subscribe(`tally.${ctx.env}.availability.web.SKU-0003`);
    const published: Array<number> = [];
    void (async () => {
      for await (const m of sub) published.push(m.json<{ available: number }>().available);
    })();
    await eventually("the watch to deliver the current value", async () => seen.includes(before));

    // A POS terminal (user tally_pos) sells 2 over NATS; the API user answers and publishes the command.
    let barcode: string | undefined;
    await eventually("the ERP item master to reach the crosswalk", async () => {
      [{ identifier: barcode } = { identifier: undefined }] = await sql<Array<{ identifier: string }>>`
        select identifier from item_identifiers where sku = 'SKU-0003' and system = 'barcode'`;
      return barcode !== undefined;
    });
    const pos = await connectAs("pos");
    const txn = { store: "S01", terminal: "T1", id: "auth-1", occurredAt: "2026-11-30T10:00:00Z", lines: [{ type: "sale", barcode, qty: 2 }] };
    const reply = await pos.request(`tally.${ctx.env}.pos.S01`, JSON.stringify(txn), { timeout: 15_000 });
    expect(reply.json()).toMatchObject({ accepted: 1 });
    await eventually(
      "the sale to reach the reader's watch and subscription",
      async () => seen.includes(before - 2) && published.includes(before - 2),
    );

    // The API (user tally_api) serves the same figure.
    const res = await fetch(`${apiUrl}/v1/availability/SKU-0003?channel=web`, { headers: { authorization: `Bearer ${READER_TOKEN}` } });
    expect(res.status).toBe(200);
    expect(((await res.json()) as { available: number }).available).toBe(before - 2);
    watch.stop();
    sub.unsubscribe();
  });

  it("refuses a client without credentials, or with a wrong password", async () => {
    await expect(connect({ servers: nats.server.url, reconnect: false, timeout: 5_000 })).rejects.toThrow(/authorization/i);
    await expect(connect({ servers: nats.server.url, user: "tally_api", pass: "wrong", reconnect: false, timeout: 5_000 })).rejects.toThrow(
      /authorization/i,
    );
  });

  it("a channel reader cannot publish a command, post POS or write the availability or lease buckets; its forged receive never reaches the ledger", async () => {
    const t = topology(ctx.env, 4);
    const reader = await connectAs("reader");
    const forged = command("forged:1", "SKU-0004", 1_000_000);
    await expect(publishCommands(jetstream(reader), t, [forged])).rejects.toThrow(/permission/i);
    reader.publish(t.commandSubject(t.partitionOf("SKU-0004")), JSON.stringify(forged));
    const posReply = reader.request(`tally.${ctx.env}.pos.S01`, "{}", { timeout: 3_000 });
    await expect(posReply).rejects.toThrow(/permission/i);

    const kv = await availabilityKv(reader);
    await eventually("availability of SKU-0004", async () => (await kv.get("web.SKU-0004")) !== null);
    const real = (await kv.get("web.SKU-0004"))!.string();
    await expect(kv.put("web.SKU-0004", JSON.stringify({ available: 424242 }))).rejects.toThrow(/permission/i);
    const leases = await new Kvm(jetstream(reader)).open(`tally_${ctx.env}_leases`);
    await expect(leases.get("partition.0")).rejects.toThrow(/permission/i);
    await expect(jetstream(reader).publish(`$KV.tally_${ctx.env}_leases.partition.0`, "{}")).rejects.toThrow(/permission/i);

    // A push consumer on the availability bucket delivering into a command subject: the server lets
    // the reader create it, but its deliveries never enter the commands stream.
    const admin = await connectAs("admin");
    const commandsBefore = (await jetstreamManager(admin).then((m) => m.streams.info(t.commandsStream))).state.messages;
    await (await jetstreamManager(reader, { checkAPI: false })).consumers.add(`KV_tally_${ctx.env}_availability`, {
      deliver_subject: t.commandSubject(t.partitionOf("SKU-0004")),
      ack_policy: AckPolicy.None,
      deliver_policy: DeliverPolicy.All,
    });

    // A real command published after the forged one, by the CDC user, to the same partition: once
    // the worker has applied it, everything before it in that partition has an outcome.
    const cdc = await connectAs("cdc");
    const legit = command("legit:1", "SKU-0004", 1);
    await publishCommands(jetstream(cdc), t, [legit]);
    await eventually("the legitimate command to be applied", async () => (await outcome(legit.id)) === "applied");
    expect(await outcome(forged.id)).toBeUndefined();
    expect((await jetstreamManager(admin).then((m) => m.streams.info(t.commandsStream))).state.messages).toBe(commandsBefore + 1);
    const [{ n }] = await sql<[{ n: number }]>`select count(*)::int as n from ledger_entries where command_id = ${forged.id}`;
    expect(n).toBe(0);
    await eventually("the relay to publish the legitimate receipt", async () => (await kv.get("web.SKU-0004"))!.string() !== real);
    expect((await kv.get("web.SKU-0004"))!.json<{ available: number }>().available).not.toBe(424242);
  });

  it("a channel's own user acknowledges its catalog version over NATS and reads like tally_reader; it cannot ack another channel, and tally_reader cannot ack at all", async () => {
    const acks = async () =>
      new Map(
        (
          await sql<Array<{ channel: string; acked_version: string; acked_by: string }>>`
        select channel, acked_version::text, acked_by from catalog_acks`
        ).map((r) => [r.channel, r]),
      );
    await eventually("a catalog version from the ERP", async () => {
      const [{ version }] = await sql<[{ version: string }]>`select version::text from catalog_head`;
      return Number(version) > 0;
    });
    const [{ version: head }] = await sql<[{ version: string }]>`select version::text from catalog_head`;
    const headVersion = Number(head);
    expect(await acks()).toEqual(new Map());

    const web = await connectAs({ channel: "web" });
    // The reads of a channel reader: both buckets' keys, and their subjects.
    await eventually("web's availability of SKU-0003", async () => (await availabilityKv(web).then((kv) => kv.get("web.SKU-0003"))) !== null);
    const catalog = await new Kvm(jetstream(web)).open(`tally_${ctx.env}_catalog`);
    await eventually("web's catalog of SKU-0003", async () => (await catalog.get("web.SKU-0003")) !== null);
    const reply = await web.request(`tally.${ctx.env}.catalog-ack.web`, JSON.stringify({ version: headVersion }), { timeout: 15_000 });
    expect(reply.json()).toMatchObject({ channel: "web", ackedVersion: headVersion });
    expect((await acks()).get("web")).toMatchObject({ acked_version: String(headVersion), acked_by: `nats:tally.${ctx.env}.catalog-ack.web` });

    // Web's user acking for store_s01, and the generic reader acking for anyone: refused by the server.
    await expect(web.request(`tally.${ctx.env}.catalog-ack.store_s01`, JSON.stringify({ version: headVersion }), { timeout: 5_000 })).rejects.toThrow(
      /permission/i,
    );
    const reader = await connectAs("reader");
    for (const channel of ["store_s01", "web"])
      await expect(
        reader.request(`tally.${ctx.env}.catalog-ack.${channel}`, JSON.stringify({ version: headVersion }), { timeout: 5_000 }),
      ).rejects.toThrow(/permission/i);
    // A fire-and-forget publish is dropped by the server too (no reply to wait for): once web's next
    // ack (a round trip through the same API queue group) is answered, nothing else was recorded.
    web.publish(`tally.${ctx.env}.catalog-ack.store_s01`, JSON.stringify({ version: headVersion }));
    reader.publish(`tally.${ctx.env}.catalog-ack.store_s02`, JSON.stringify({ version: headVersion }));
    await web.request(`tally.${ctx.env}.catalog-ack.web`, JSON.stringify({ version: headVersion }), { timeout: 15_000 });
    expect([...(await acks()).keys()]).toEqual(["web"]);

    const log = await readFile(nats.logPath, "utf8");
    const violations = log.split("\n").filter((l) => /violation/i.test(l) && l.includes("catalog-ack"));
    expect(violations.some((l) => l.includes("tally_channel_web") && l.includes("catalog-ack.store_s01"))).toBe(true);
    expect(violations.some((l) => l.includes("tally_reader"))).toBe(true);
  });

  it("the shipped channel user template reads exactly what tally_reader reads, and publishes only its own ack subject besides", async () => {
    const config = await shippedNatsConfig("prod");
    const subjects = (block: string) => {
      const perms = (key: string) => {
        const m = new RegExp(`${key}: \\[([^\\]]*)\\]`).exec(block);
        if (!m) throw new Error(`no ${key} list`);
        return m[1]!
          .split("\n")
          .filter((l) => !l.trim().startsWith("#"))
          .flatMap((l) => [...l.matchAll(/"([^"]+)"/g)].map((x) => x[1]!))
          .sort();
      };
      return { publish: perms("publish"), subscribe: perms("subscribe") };
    };
    const readerStart = config.indexOf("user: tally_reader,");
    const reader = subjects(config.slice(readerStart, config.indexOf("\n    }\n", readerStart)));
    const channel = subjects(channelUserTemplate(config));
    expect(reader.publish.filter((s) => s.includes("catalog-ack"))).toEqual([]);
    expect(channel.publish.filter((s) => s.includes("catalog-ack"))).toEqual(["tally.prod.catalog-ack.<channel>"]);
    expect(channel.publish.filter((s) => !s.includes("catalog-ack"))).toEqual(reader.publish);
    expect(channel.subscribe).toEqual(reader.subscribe);
  });

  it("no Tally role was refused anything it needed (the server logs every permission violation with its user)", async () => {
    const log = await readFile(nats.logPath, "utf8");
    const violations = log.split("\n").filter((l) => /violation/i.test(l));
    // The reader's refusals above are there: the server does log them.
    expect(violations.some((l) => l.includes("tally_reader"))).toBe(true);
    expect(violations.filter((l) => !/tally_reader|tally_pos|tally_channel_/.test(l))).toEqual([]);
  });
});
