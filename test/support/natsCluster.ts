import { rmSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { jetstreamManager, type JetStreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { cleanupOnExit, findNatsServer, ServerProcess } from "../../src/app/devStack/index.ts";
import { freePort } from "./ports.ts";
import { natsPasswords, shippedNatsConfig, type NatsUser } from "./securedNats.ts";

/** One nats-server of a {@link NatsCluster}: its client and route ports and its own JetStream store. */
export interface NatsClusterNode {
  /** `server_name` (what `streams.info(...).cluster.leader` names). */
  readonly name: string;
  readonly port: number;
  readonly clusterPort: number;
  /** `nats://127.0.0.1:<port>` */
  readonly url: string;
  /** This node's JetStream store folder; kept across `kill()`/`start()`. */
  readonly storeDir: string;
  readonly logPath: string;
  readonly isRunning: boolean;
  /** SIGKILL (kill -9) and wait until the process is gone. */
  kill(): Promise<void>;
  /** Starts again on the same ports, configuration and store; resolves once it accepts clients and its JetStream answers. */
  start(): Promise<void>;
}

/** A JetStream cluster of nats-servers on loopback, each running the shipped per-role configuration. */
export interface NatsCluster {
  readonly nodes: ReadonlyArray<NatsClusterNode>;
  /** Every node's client URL, comma-separated (what TALLY_NATS_URL takes). */
  readonly url: string;
  /** The folder of the configurations, stores and logs. */
  readonly dir: string;
  /** `tally_<user>` and its password. */
  credentials(user: NatsUser): { user: string; password: string };
  /** TALLY_NATS_URL (every node) / USER / PASSWORD and TALLY_NATS_REPLICAS (the cluster size) for a Tally process connecting as `user`. */
  env(user: NatsUser): Record<string, string>;
  /** A client connected as the admin user to every node (reconnects forever); closed by `close()`. */
  admin(): Promise<{ nc: NatsConnection; jsm: JetStreamManager }>;
  node(name: string): NatsClusterNode;
  /** The node that leads `stream` now (`streams.info(stream).cluster.leader`), waiting for an election in progress. */
  streamLeader(stream: string, timeoutMs?: number): Promise<NatsClusterNode>;
  /** Waits until every one of `streams` has a leader and every replica is current (a restarted node has caught up). */
  waitCurrent(streams: ReadonlyArray<string>, timeoutMs?: number): Promise<void>;
  /** Every node's log lines that match `pattern` (permission violations, say). */
  logLines(pattern: RegExp): Promise<Array<string>>;
  close(): Promise<void>;
}

export interface NatsClusterOptions {
  /** Number of nodes (default 3). */
  readonly size?: number;
  /** Appended to every node's configuration. */
  readonly extra?: string;
}

/**
 * Starts a JetStream cluster of `size` (default 3) nats-servers 2.9+ on loopback: each runs the
 * shipped `deploy/nats/tally.conf` for `env` (users, passwords and per-role permissions), with its
 * own `listen` port, `server_name`, `jetstream { store_dir }` in a temp folder, and a
 * `cluster { name, listen, routes }` block naming every node. Resolves once the JetStream meta
 * group has a leader (the cluster answers JetStream API requests).
 */
export async function startNatsCluster(env: string, opts: NatsClusterOptions = {}): Promise<NatsCluster> {
  const size = opts.size ?? 3;
  const dir = await mkdtemp(join(tmpdir(), "tally-nats-cluster-"));
  const forget = cleanupOnExit(() => rmSync(dir, { recursive: true, force: true }));
  const shipped = await shippedNatsConfig(env);
  const { passwords, serverEnv } = natsPasswords();
  const credentials = (u: NatsUser) => ({ user: `tally_${u}`, password: passwords[u] });
  const adminOptions = { user: credentials("admin").user, pass: credentials("admin").password };
  const clusterName = `tally_${env}`;
  const ports: Array<{ port: number; clusterPort: number }> = [];
  for (let i = 0; i < size; i++) ports.push({ port: await freePort(), clusterPort: await freePort() });
  const routes = ports.map((p) => `nats-route://127.0.0.1:${p.clusterPort}`);

  const nodes: Array<NatsClusterNode & { readonly process: ServerProcess }> = [];
  try {
    for (let i = 0; i < size; i++) {
      const { port, clusterPort } = ports[i]!;
      const name = `${clusterName}_n${i + 1}`;
      const nodeDir = join(dir, `n${i + 1}`);
      const storeDir = join(nodeDir, "jetstream");
      await mkdir(storeDir, { recursive: true });
      const config = shipped
        .replace(/\nlisten: .*/, `\nlisten: 127.0.0.1:${port}`)
        .replace(/\nserver_name: .*/, `\nserver_name: ${name}`)
        .replace(/\n(\s*)store_dir: .*/, `\n$1store_dir: ${JSON.stringify(storeDir)}`);
      const configFile = join(nodeDir, "tally.conf");
      await writeFile(
        configFile,
        `${config}\ncluster {\n  name: ${clusterName}\n  listen: 127.0.0.1:${clusterPort}\n  routes: [\n${routes.map((r) => `    ${r}`).join("\n")}\n  ]\n}\n${opts.extra ?? ""}\n`,
      );
      const url = `nats://127.0.0.1:${port}`;
      const logPath = join(nodeDir, "nats-server.log");
      // Ready when it accepts clients as itself; JetStream needs a quorum of the cluster, which a
      // lone first node does not have, so the cluster as a whole is waited for below.
      const process = new ServerProcess({
        name: `nats-server ${name} on port ${port}`,
        command: findNatsServer(),
        args: ["-c", configFile],
        env: serverEnv,
        cwd: nodeDir,
        logPath,
        stopSignal: "SIGINT",
        probe: () => probeNode(url, name, adminOptions, false),
      });
      nodes.push({
        name,
        port,
        clusterPort,
        url,
        storeDir,
        logPath,
        process,
        get isRunning() {
          return process.isRunning;
        },
        kill: () => process.kill(),
        start: async () => {
          await process.start();
          await until(`${name}'s JetStream to answer`, () => probeNode(url, name, adminOptions, true), 30_000);
        },
      });
    }
    await Promise.all(nodes.map((n) => n.process.start()));
    for (const n of nodes) await until(`${n.name}'s JetStream to answer`, () => probeNode(n.url, n.name, adminOptions, true), 30_000);
  } catch (error) {
    await Promise.allSettled(nodes.map((n) => n.process.kill()));
    await rm(dir, { recursive: true, force: true });
    forget();
    throw error;
  }

  const url = nodes.map((n) => n.url).join(",");
  let adminClient: Promise<{ nc: NatsConnection; jsm: JetStreamManager }> | undefined;
  const admin = () =>
    (adminClient ??= (async () => {
      const nc = await connect({
        servers: nodes.map((n) => n.url),
        ...adminOptions,
        maxReconnectAttempts: -1,
        reconnectTimeWait: 100,
        name: "test-cluster-admin",
      });
      return { nc, jsm: await jetstreamManager(nc) };
    })());
  const node = (name: string) => {
    const n = nodes.find((x) => x.name === name);
    if (n === undefined) throw new Error(`no node named ${name} (nodes: ${nodes.map((x) => x.name).join(", ")})`);
    return n;
  };
  const clusterInfo = async (stream: string) => (await (await admin()).jsm.streams.info(stream)).cluster;

  return {
    nodes,
    url,
    dir,
    credentials,
    env: (u) => ({
      TALLY_NATS_URL: url,
      TALLY_NATS_USER: credentials(u).user,
      TALLY_NATS_PASSWORD: credentials(u).password,
      TALLY_NATS_REPLICAS: String(size),
    }),
    admin,
    node,
    streamLeader: async (stream, timeoutMs = 30_000) => {
      let leader: string | undefined;
      await until(
        `a leader of ${stream}`,
        async () => {
          leader = (await clusterInfo(stream))?.leader;
          if (leader === undefined || leader === "") throw new Error(`${stream} has no leader`);
          if (!node(leader).isRunning) throw new Error(`${stream} still names ${leader}, which is down`);
        },
        timeoutMs,
      );
      return node(leader!);
    },
    waitCurrent: async (streams, timeoutMs = 60_000) => {
      for (const stream of streams)
        await until(
          `every replica of ${stream} to be current`,
          async () => {
            const c = await clusterInfo(stream);
            if (!c?.leader) throw new Error(`${stream} has no leader`);
            const behind = (c.replicas ?? []).filter((r) => !r.current || r.offline);
            if (behind.length > 0) throw new Error(`${stream}: ${behind.map((r) => r.name).join(", ")} not current`);
          },
          timeoutMs,
        );
    },
    logLines: async (pattern) => {
      const lines: Array<string> = [];
      for (const n of nodes) {
        const text = await readFile(n.logPath, "utf8").catch(() => "");
        lines.push(...text.split("\n").filter((l) => pattern.test(l)));
      }
      return lines;
    },
    close: async () => {
      if (adminClient) await (await adminClient).nc.close().catch(() => {});
      await Promise.allSettled(nodes.map((n) => n.process.kill()));
      await rm(dir, { recursive: true, force: true });
      forget();
    },
  };
}

/** Resolves once `url` is answered by the server named `name` (and, with `jetStream`, its JetStream API answers). */
async function probeNode(url: string, name: string, options: { user: string; pass: string }, jetStream: boolean): Promise<void> {
  const nc = await connect({ ...options, servers: url, reconnect: false, timeout: 2_000 });
  try {
    if (nc.info?.server_name !== name) throw new Error(`port answered by nats-server ${nc.info?.server_name}, not ${name}`);
    if (jetStream) await (await jetstreamManager(nc, { timeout: 2_000 })).getAccountInfo();
  } finally {
    await nc.close();
  }
}

async function until(what: string, attempt: () => Promise<void>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      await attempt();
      return;
    } catch (error) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${String(error)}`, { cause: error });
    }
    await sleep(100);
  }
}
