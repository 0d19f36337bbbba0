// Three worker processes on a 3-node NATS cluster (every stream and bucket at three replicas), each
// connected to the list of servers as the shipped worker user: the partitions spread evenly, a new
// worker takes its share within one lease TTL, a stopped one hands its share over, the ledger stays exact.
import type { NatsConnection } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { migrate, verifyLedger } from "../ledger/index.ts";
import { connectPostgres, type Sql } from "../src/platform/db.ts";
import { loadSettings } from "../src/platform/settings.ts";
import { connectNats, ensureTopology, topologyOptions, type NatsHandles } from "../src/wire/nats.ts";
import { publishCommands } from "../src/wire/publisher.ts";
import { topology, type Topology } from "../src/wire/topology.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { startNatsCluster, type NatsCluster } from "./support/natsCluster.ts";
import { commandMaker, eventually, outcomeCounts, spawnTally, tallyEnv } from "./support/tally.ts";

let ctx: TestContext;
let cluster: NatsCluster;
const OPTS = { partitions: 6, leaseTtlMs: 5000 };
type Child = ReturnType<typeof spawnTally>;
/** The environment on the cluster: its topology, created at three replicas by the admin user (leases read as admin, commands published as the CDC user). */
let h: { sql: Sql; topology: Topology; nats: NatsHandles; cdc: NatsHandles };
const clients: Array<NatsConnection> = [];

beforeAll(async () => {
  ctx = await testContext();
  cluster = await startNatsCluster(ctx.env);
  const sql = connectPostgres(ctx.databaseUrl, { max: 4, application: "test-worker-spread" });
  await migrate(sql, ctx.env);
  const t = topology(ctx.env, OPTS.partitions);
  const as = async (user: "admin" | "cdc") => {
    const { user: u, password } = cluster.credentials(user);
    const nc = await connectNats(cluster.url, `test-${user}`, { user: u, password });
    clients.push(nc);
    return ensureTopology(nc, t, topologyOptions(loadSettings({ ...tallyEnv(ctx, OPTS), ...cluster.env(user) })));
  };
  const nats = await as("admin");
  h = { sql, topology: t, nats, cdc: await as("cdc") };
}, 60_000);
afterAll(async () => {
  for (const nc of clients) await nc.close().catch(() => {});
  await h?.sql.end({ timeout: 5 });
  await cluster?.close();
});

/** Who holds each partition's lease now (owner → partitions). */
async function owners(): Promise<Map<string, Array<number>>> {
  const out = new Map<string, Array<number>>();
  for (let p = 0; p < OPTS.partitions; p++) {
    const e = await h.nats.leases.get(h.topology.partitionLeaseKey(p));
    if (e?.operation !== "PUT" || e.length === 0) continue;
    const { owner } = e.json<{ owner: string }>();
    out.set(owner, [...(out.get(owner) ?? []), p]);
  }
  return out;
}

let lastSeen = "";

/** Every partition held, by exactly `workers` owners, each holding its fair share (ceil(P/W) at most). */
async function evenlySpread(workers: number): Promise<boolean> {
  const o = await owners();
  const held = [...o.values()].reduce((n, ps) => n + ps.length, 0);
  lastSeen = JSON.stringify([...o]);
  return held === OPTS.partitions && o.size === workers && [...o.values()].every((ps) => ps.length <= Math.ceil(OPTS.partitions / workers));
}

describe("three worker processes on a 3-node NATS cluster", () => {
  it("spread the partitions evenly, a new one takes its share, a stopped one hands its share over, and the ledger stays exact", async () => {
    // The commands and the leases are replicated on all three nodes.
    for (const stream of [h.topology.commandsStream, h.topology.leasesBucketStream])
      expect((await h.nats.jsm.streams.info(stream)).config.num_replicas, stream).toBe(3);
    const env = { ...tallyEnv(ctx, OPTS), ...cluster.env("worker"), TALLY_LOG_LEVEL: "error" };
    const workers: Array<Child> = [];
    const make = commandMaker("spread");
    const ids: Array<string> = [];
    let publishing = true;
    // Order-dependent rounds per SKU (a receipt, a hold on it, its shipment) throughout every handover.
    const load = (async () => {
      for (let r = 1; publishing; r++) {
        const commands = Array.from({ length: 12 }, (_, i) => `SP-${i}`).flatMap((sku) => [
          make("receive", sku, { qty: 3 }),
          make("reserve", sku, { qty: 3, reservationId: `${sku}-h${r}` }),
          make("fulfill", sku, { qty: 3, reservationId: `${sku}-h${r}` }),
        ]);
        ids.push(...commands.map((c) => c.id));
        await publishCommands(h.cdc.js, h.topology, commands, { envelopeSize: 5 });
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    })();
    try {
      workers.push(spawnTally(["start", "--roles", "worker"], env), spawnTally(["start", "--roles", "worker"], env));
      await eventually("two workers with 3 partitions each", () => evenlySpread(2), 120_000).catch((e: Error) => {
        throw new Error(`${e.message}; leases: ${lastSeen}; outputs: ${workers.map((w) => w.output().slice(-2000)).join(" | ")}`);
      });
      // A third joins: the others hand over what is beyond their fair share, and it takes 2.
      workers.push(spawnTally(["start", "--roles", "worker"], env));
      await eventually("three workers with 2 partitions each", () => evenlySpread(3), 60_000);
      // One stops (SIGTERM: it finishes its batch in flight, then releases): the other two take its share.
      const stopped = workers.shift()!;
      stopped.kill("SIGTERM");
      await new Promise((resolve) => stopped.once("exit", resolve));
      await eventually("two workers with 3 partitions each again", () => evenlySpread(2), 60_000);
      publishing = false;
      await load;
      await eventually("every command applied", async () => (await outcomeCounts(h.sql, ids)).n === ids.length, 60_000);
      expect((await outcomeCounts(h.sql, ids)).distinct).toBe(ids.length);
      const rejected = await h.sql`select command_id from command_outcomes where status = 'rejected' and command_id like 'spread:%'`;
      expect(rejected).toHaveLength(0);
      const balances = await h.sql`select sku, bucket, qty from balances where sku like 'SP-%' and qty <> 0`;
      expect(balances).toHaveLength(0);
      expect((await verifyLedger(h.sql)).problem).toBeNull();
      // The shipped worker user's permissions refused the workers nothing.
      expect(await cluster.logLines(/violation/i)).toEqual([]);
    } finally {
      publishing = false;
      await load.catch(() => {});
      for (const w of workers) {
        if (w.exitCode === null) {
          w.kill("SIGTERM");
          await new Promise((resolve) => w.once("exit", resolve));
        }
      }
    }
  }, 240_000);
});
