// A replicated NATS cluster: three nats-servers on loopback running the shipped per-role
// configuration, every stream and bucket at three replicas (TALLY_NATS_REPLICAS=3), Tally's roles as
// processes (two workers, the relay, the API), each with its own NATS user and the list of servers.
// NATS nodes and a worker are killed with SIGKILL while commands and POS sales flow; the ledger must
// come out exact. How long the apply path stalls at each kill is measured and printed, not asserted.
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import type { NatsConnection } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { migrate, verifyLedger } from "../ledger/index.ts";
import { decodeCommand, type Command } from "../src/contract/command.ts";
import { connectPostgres, type Sql } from "../src/platform/db.ts";
import { loadSettings } from "../src/platform/settings.ts";
import { connectNats, ensureTopology, ReplicasError, topologyOptions, type NatsHandles, type UnderReplicated } from "../src/wire/nats.ts";
import { publishCommands } from "../src/wire/publisher.ts";
import { topology, type Topology } from "../src/wire/topology.ts";
import { TOKENS, auth, defineItems } from "./apiSupport.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { startNatsCluster, type NatsCluster, type NatsClusterNode } from "./support/natsCluster.ts";
import { freePort } from "./support/ports.ts";
import { eventually, spawnTally, tallyEnv } from "./support/tally.ts";
import { expectationOf, expectedAvailable, generateCommands, type RawCommand } from "./support/workload.ts";

let ctx: TestContext;
let cluster: NatsCluster;
let sql: Sql;
const clients: Array<NatsConnection> = [];
const OPTS = { partitions: 4, leaseTtlMs: 3000 };

const T0 = Date.now();
const step = (what: string) => process.stderr.write(`[natsCluster +${((Date.now() - T0) / 1000).toFixed(1)}s] ${what}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

beforeAll(async () => {
  ctx = await testContext();
  cluster = await startNatsCluster(ctx.env);
  sql = connectPostgres(ctx.databaseUrl, { max: 4, application: "test-nats-cluster" });
  await migrate(sql, ctx.env);
}, 60_000);

afterAll(async () => {
  for (const nc of clients) await nc.close().catch(() => {});
  await sql?.end({ timeout: 5 });
  await cluster?.close();
});

/** The environment's topology as `user` sees it, with `replicas`. */
async function topologyAs(
  user: "admin" | "cdc",
  env: string,
  replicas: number,
  warnings: Array<UnderReplicated> = [],
): Promise<NatsHandles & { t: Topology }> {
  const { user: u, password } = cluster.credentials(user);
  const nc = await connectNats(cluster.url, `test-${user}`, { user: u, password });
  clients.push(nc);
  const t = topology(env, OPTS.partitions);
  const settings = { ...loadSettings(tallyEnv(ctx, OPTS)), natsReplicas: replicas };
  const nats = await ensureTopology(
    nc,
    t,
    topologyOptions(settings, (_message, detail) => warnings.push(detail)),
  );
  return { ...nats, t };
}

const streamsOf = (t: Topology) => [
  t.commandsStream,
  t.dlqStream,
  t.eventsStream,
  t.availabilityStream,
  t.anchorsStream,
  t.leasesBucketStream,
  `KV_${t.availabilityBucket}`,
];

describe("Tally on a 3-node NATS cluster", () => {
  it("creates every stream and KV bucket with TALLY_NATS_REPLICAS replicas, and raises a stream found with fewer in place, reporting it", async () => {
    const env = `${ctx.env}r`;
    // An environment first set up with one replica (as before the setting existed)...
    const { jsm, t } = await topologyAs("admin", env, 1);
    for (const s of streamsOf(t)) expect((await jsm.streams.info(s)).config.num_replicas, s).toBe(1);
    // ...started with 3: each stream and bucket is raised to 3, and each raise is reported.
    const warnings: Array<UnderReplicated> = [];
    await topologyAs("admin", env, 3, warnings);
    expect(warnings.map((w) => w.stream).sort()).toEqual(streamsOf(t).sort());
    expect(warnings.every((w) => w.raised && w.replicas === 1 && w.configured === 3)).toBe(true);
    for (const s of streamsOf(t)) expect((await jsm.streams.info(s)).config.num_replicas, s).toBe(3);
    await cluster.waitCurrent(streamsOf(t));
    // Nothing left to raise: the next start is quiet; a lower setting never lowers them.
    const again: Array<UnderReplicated> = [];
    await topologyAs("admin", env, 3, again);
    await topologyAs("admin", env, 1, again);
    expect(again).toEqual([]);
    for (const s of streamsOf(t)) expect((await jsm.streams.info(s)).config.num_replicas, s).toBe(3);
  }, 60_000);

  it("on one server (not clustered), TALLY_NATS_REPLICAS=3 refuses to create a stream, naming the setting; a stream it finds with one replica is reported with the fix", async () => {
    const nc = await connectNats(ctx.natsUrl, "test-single");
    clients.push(nc);
    const settings = { ...loadSettings(tallyEnv(ctx, OPTS)), natsReplicas: 3 };
    const fresh = topology(`${ctx.env}s`, OPTS.partitions);
    await expect(ensureTopology(nc, fresh, topologyOptions(settings))).rejects.toThrow(
      new RegExp(`TALLY_NATS_REPLICAS=3: cannot create NATS stream ${fresh.commandsStream} with 3 replicas`),
    );
    await expect(ensureTopology(nc, fresh, topologyOptions(settings))).rejects.toBeInstanceOf(ReplicasError);
    // Set up with one replica, then started with 3: each stream is reported, and keeps working.
    const t = topology(`${ctx.env}o`, OPTS.partitions);
    await ensureTopology(nc, t, topologyOptions({ ...settings, natsReplicas: 1 }));
    const warnings: Array<{ message: string; detail: UnderReplicated }> = [];
    const nats = await ensureTopology(
      nc,
      t,
      topologyOptions(settings, (message, detail) => warnings.push({ message, detail })),
    );
    expect(warnings.map((w) => w.detail.stream).sort()).toEqual(streamsOf(t).sort());
    const commands = warnings.find((w) => w.detail.stream === t.commandsStream)!;
    expect(commands.detail).toMatchObject({ replicas: 1, configured: 3, raised: false });
    expect(commands.message).toContain(`NATS stream ${t.commandsStream} has 1 replica(s), fewer than TALLY_NATS_REPLICAS=3`);
    expect(commands.message).toContain(`nats stream edit ${t.commandsStream} --replicas 3`);
    expect((await nats.jsm.streams.info(t.commandsStream)).config.num_replicas).toBe(1);
  });

  it("two worker processes, the relay and the API, each as its shipped user: NATS nodes, the commands stream's leader and a worker killed -9 mid-stream; the ledger is exact, no duplicate legs, availability equals the balances, no acknowledged POS sale lost", async () => {
    const admin = await topologyAs("admin", ctx.env, 3);
    const { t } = admin;
    const cdc = await topologyAs("cdc", ctx.env, 3);
    const POS_SKUS = Array.from({ length: 5 }, (_, i) => `POS-${i}`);
    await defineItems(
      sql,
      POS_SKUS.map((sku, i) => ({ sku, kind: "stock", baseUnit: "EA", identifiers: [{ system: "barcode", id: `90000000001${i}` }] })),
    );
    const envOf = (user: "worker" | "relay" | "api") => ({ ...tallyEnv(ctx, OPTS), ...cluster.env(user), TALLY_LOG_LEVEL: "error" });
    const workerEnv = { ...envOf("worker"), TALLY_LOG_LEVEL: "warn" };
    // Every role is a process, each connected as its own user of the shipped configuration: the workers
    // (one is killed -9), the relay and the API. The relay and the API project the test's two channels.
    const spawnWorker = () => spawnTally(["start", "--roles", "worker"], workerEnv);
    const workers = [spawnWorker(), spawnWorker()];
    const killedWorkers: Array<ReturnType<typeof spawnWorker>> = [];
    const configDir = await mkdtemp(path.join(tmpdir(), "tally-cluster-"));
    await writeFile(path.join(configDir, "package.json"), '{ "type": "module" }\n'); // so that tsx imports the .ts config
    await writeFile(
      path.join(configDir, "test.config.ts"),
      `export default ${JSON.stringify({ channels: { web: { locations: ["DC1", "S01"], buffer: 2 }, store_s01: { locations: ["S01"] } } })};\n`,
    );
    const TALLY_CONFIG = path.join(configDir, "test.config.ts");
    const relay = spawnTally(["start", "--roles", "relay"], { ...envOf("relay"), TALLY_CONFIG });
    const port = await freePort();
    const api = spawnTally(["start", "--roles", "api"], {
      ...envOf("api"),
      TALLY_CONFIG,
      TALLY_HTTP_PORT: String(port),
      TALLY_HTTP_HOST: "127.0.0.1",
      TALLY_API_TOKENS: JSON.stringify(TOKENS),
    });
    const base = `http://127.0.0.1:${port}`;
    /** SIGTERM, then SIGKILL if it has not exited within its shutdown bound and some slack. */
    const stop = async (p: ReturnType<typeof spawnTally>) => {
      if (p.exitCode !== null || p.signalCode !== null) return;
      const exited = new Promise((r) => p.once("exit", r));
      p.kill("SIGTERM");
      const late = setTimeout(() => p.kill("SIGKILL"), 20_000);
      await exited;
      clearTimeout(late);
    };

    // The apply path's progress, sampled: outcomes in the ledger over time.
    const samples: Array<{ at: number; n: number; offered: number }> = [];
    // Commands published and POS sales acknowledged so far: a stretch without progress while fewer
    // outcomes than these exist is a stall (not a pause in the load).
    let offered = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        const [{ n }] = await sql<[{ n: number }]>`select count(*)::int as n from command_outcomes`;
        samples.push({ at: Date.now(), n, offered });
        await sleep(50);
      }
    })();

    const raw = generateCommands(3000, 120, 16, "c");
    const commands: Array<Command> = raw.map((c) => {
      const d = decodeCommand(c);
      if (d._tag === "Left") throw d.left;
      return d.right;
    });
    // Commands at a steady pace (as the CDC user) until the faults are over, then the rest at once.
    let paced = true;
    const publishGaps: Array<{ at: number; ms: number }> = [];
    const publisher = (async () => {
      for (let i = 0; i < commands.length; i += 15) {
        const started = Date.now();
        // As the CDC relay does: a publish JetStream did not confirm (a leader election outlasting the
        // publisher's own retries) is sent again, under the same message ids, until it is confirmed.
        for (;;) {
          const sent = await publishCommands(cdc.js, t, commands.slice(i, i + 15), { envelopeSize: 5 }).then(
            () => true,
            (error: unknown) => {
              step(`publish not confirmed (${String(error)}); sending again`);
              return false;
            },
          );
          if (sent) break;
          await sleep(500);
        }
        offered += commands.slice(i, i + 15).length;
        if (Date.now() - started > 500) publishGaps.push({ at: started, ms: Date.now() - started });
        // About 50 commands a second: the load lasts through all the kills.
        if (paced) await sleep(250);
      }
    })();

    // POS sales through the API; a request that fails is retried with the same transaction until accepted.
    const acked: Array<{ id: string; sku: string; qty: number }> = [];
    let selling = true;
    const seller = (async () => {
      for (let n = 0; selling; n++) {
        const sale = { id: `c${n}`, sku: POS_SKUS[n % POS_SKUS.length]!, qty: 1 + (n % 3) };
        const body = JSON.stringify({
          transactions: [
            {
              store: "S01",
              terminal: "T1",
              id: sale.id,
              occurredAt: "2026-11-30T10:00:00Z",
              lines: [{ type: "sale", barcode: `90000000001${n % POS_SKUS.length}`, qty: sale.qty }],
            },
          ],
        });
        while (selling) {
          const res = await fetch(`${base}/v1/pos/transactions`, {
            method: "POST",
            headers: { ...auth("pos"), "content-type": "application/json" },
            body,
          }).catch(() => null);
          if (res?.status === 200 && ((await res.json()) as { accepted: number }).accepted === 1) {
            acked.push(sale);
            offered++;
            break;
          }
          await res?.arrayBuffer().catch(() => {});
          await sleep(200);
        }
        await sleep(100);
      }
    })();

    const outcomes = async () => (await sql<[{ n: number }]>`select count(*)::int as n from command_outcomes`)[0].n;
    const kills: Array<{ what: string; at: number }> = [];
    const killNode = async (what: string, node: NatsClusterNode) => {
      kills.push({ what: `${what} (${node.name})`, at: Date.now() });
      step(`kill ${what} ${node.name}; outcomes ${await outcomes()}`);
      await node.kill();
      await sleep(3000);
      step(`restart ${node.name}; outcomes ${await outcomes()}`);
      await node.start();
      step(`${node.name} up; outcomes ${await outcomes()}`);
      await cluster.waitCurrent(streamsOf(t));
      step(`streams current; outcomes ${await outcomes()}`);
    };
    try {
      await eventually(
        "the API to answer",
        async () => {
          if (api.exitCode !== null) throw new Error(`the API exited: ${api.output().slice(-3000)}`);
          return (await fetch(`${base}/healthz`).catch(() => null))?.ok === true;
        },
        180_000,
      );
      step("api up");
      // Starting a tally process takes tens of seconds on a busy machine.
      await eventually("the workers to apply", async () => (await outcomes()) > 200, 180_000);
      step("workers apply");

      // 1. A NATS node that does not lead the commands stream.
      const leader = await cluster.streamLeader(t.commandsStream);
      await killNode("a NATS node", cluster.nodes.find((n) => n !== leader)!);
      let before = await outcomes();
      await eventually("progress after the node came back", async () => (await outcomes()) > before + 50, 60_000);

      // 2. The commands stream's leader.
      await killNode("the commands stream's leader", await cluster.streamLeader(t.commandsStream));
      before = await outcomes();
      await eventually("progress after the leader came back", async () => (await outcomes()) > before + 50, 60_000);

      // 3. A worker; its partitions move to the other after the lease TTL; then it is started again.
      kills.push({ what: "a worker process", at: Date.now() });
      killedWorkers.push(workers[0]!);
      workers[0]!.kill("SIGKILL");
      await new Promise((r) => workers[0]!.once("exit", r));
      await sleep(3000);
      workers[0] = spawnWorker();

      step(`worker restarted; outcomes ${await outcomes()}`);
      paced = false;
      await publisher;
      step(`published; outcomes ${await outcomes()}`);
      selling = false;
      await seller;

      // The expectation: the commands and every acknowledged sale (each exactly once).
      const sales: Array<RawCommand> = acked.map((s) => ({
        id: `pos:S01:T1:${s.id}:1`,
        type: "sell",
        sku: s.sku,
        location: "S01",
        qty: s.qty,
        source: { system: "pos", ref: s.id },
        occurredAt: "2026-11-30T10:00:00Z",
      }));
      const expected = expectationOf([...raw, ...sales]);
      const ids = [...raw.map((c) => c.id), ...sales.map((s) => s.id)];
      await eventually(
        "every command and sale to have an outcome, and the outbox to be relayed",
        async () => {
          const [{ n }] = await sql<
            [{ n: number }]
          >`select count(*)::int as n from command_outcomes where command_id = any(${sql.array(ids)}::text[])`;
          const [{ pending }] = await sql<[{ pending: number }]>`select count(*)::int as pending from outbox`;
          return n === ids.length && pending === 0;
        },
        90_000,
      );

      step("settled");
      const rows = await sql<
        Array<{ command_id: string; status: string; reason: string | null }>
      >`select command_id, status, reason from command_outcomes`;
      expect(new Set(rows.filter((o) => o.status === "applied").map((o) => o.command_id))).toEqual(expected.applied);
      expect(new Map(rows.filter((o) => o.status === "rejected").map((o) => [o.command_id, o.reason]))).toEqual(expected.rejected);
      const [{ entries, distinct }] = await sql<[{ entries: number; distinct: number }]>`
        select count(*)::int as entries, count(distinct (command_id, leg))::int as distinct from ledger_entries`;
      expect(distinct).toBe(entries);
      expect(entries).toBe(expected.entries);
      const balances = await sql<
        Array<{ sku: string; location: string; bucket: string; qty: number }>
      >`select sku, location, bucket, qty from balances`;
      const actual = new Map(balances.map((b) => [`${b.sku}|${b.location}|${b.bucket}`, b.qty]));
      for (const [key, l] of expected.locations)
        for (const bucket of ["on_hand", "reserved", "in_transit", "damaged"] as const)
          expect(actual.get(`${key}|${bucket}`) ?? 0, `${key} ${bucket}`).toBe(l[bucket]);
      for (const sku of POS_SKUS)
        expect(actual.get(`${sku}|S01|on_hand`), sku).toBe(-acked.filter((s) => s.sku === sku).reduce((sum, s) => sum + s.qty, 0));

      // The availability bucket (replicated, written by the relay through the kills) equals the balances.
      const web = { locations: ["DC1", "S01"], buffer: 2 };
      const skus = new Set([...expected.touched].map((k) => k.split("|")[0]!));
      for (const sku of skus)
        if (web.locations.some((loc) => expected.touched.has(`${sku}|${loc}`))) {
          const want = expectedAvailable(expected, sku, web.locations, web.buffer);
          await eventually(
            `KV web.${sku} = ${want}`,
            async () => (await admin.availability.get(`web.${sku}`))?.json<{ available: number }>().available === want,
            20_000,
          );
        }

      // What `tally ledger verify` runs (in this process: a CLI start costs tens of seconds here).
      expect((await verifyLedger(sql)).problem).toBeNull();

      // No role was refused anything it needed by the shipped permissions.
      expect(await cluster.logLines(/violation/i)).toEqual([]);
    } catch (error) {
      for (const [i, p] of workers.entries()) step(`worker ${i} output:\n${p.output().slice(-3000)}`);
      step(`relay output:\n${relay.output().slice(-3000)}`);
      step(`api output:\n${api.output().slice(-3000)}`);
      throw error;
    } finally {
      sampling = false;
      selling = false;
      paced = false;
      await sampler;
      for (const p of workers) if (p.exitCode === null) p.kill("SIGKILL");
      await Promise.all([stop(api), stop(relay)]);
      await rm(configDir, { recursive: true, force: true });
      await Promise.allSettled([publisher, seller]);
      // How long the apply path stalled at each kill: the longest stretch without a new outcome, while
      // commands were waiting, that began after it (within 15 s, before the next kill).
      const report = kills.map(({ what, at }, i) => {
        // Up to 15 s after the kill, or to the next kill.
        const until = Math.min(at + 15_000, kills[i + 1]?.at ?? Infinity);
        let longest = { ms: 0, from: 0 };
        let last = samples.find((s) => s.at >= at - 1000) ?? samples[0];
        for (const s of samples.filter((x) => x.at >= at - 1000 && x.at <= at + 30_000)) {
          if (last && s.n > last.n) {
            if (last.at < until && last.offered > last.n && s.at - last.at > longest.ms) longest = { ms: s.at - last.at, from: last.at - at };
            last = s;
          }
        }
        const publishes = publishGaps.filter((g) => g.at >= at - 1000 && g.at < until).map((g) => g.ms);
        return `${what}: apply path stalled ${longest.ms} ms (from ${(longest.from / 1000).toFixed(1)} s after the kill; the node or worker was back after 3 s); slowest command publish ${Math.max(0, ...publishes)} ms`;
      });
      // What the workers logged meanwhile (warnings and errors), by message.
      const said = new Map<string, number>();
      for (const w of [...workers, ...killedWorkers])
        for (const line of w.output().split("\n"))
          try {
            const msg = (JSON.parse(line) as { msg?: string }).msg;
            if (msg) said.set(msg, (said.get(msg) ?? 0) + 1);
          } catch {
            // Not a log line.
          }
      console.log(
        `NATS cluster fault test:\n  ${report.join("\n  ")}\n  POS sales acknowledged: ${acked.length}\n  worker log: ${JSON.stringify(Object.fromEntries(said))}`,
      );
    }
  }, 400_000);
});
