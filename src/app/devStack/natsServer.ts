import { accessSync, constants, rmSync } from "node:fs";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { delimiter, join, resolve } from "node:path";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect, type ConnectionOptions } from "@nats-io/transport-node";
import { freePort } from "./ports.ts";
import { cleanupOnExit, ServerProcess } from "./serverProcess.ts";

/** A JetStream-enabled nats-server we started: throwaway (temp store) or on a persistent store folder. */
export interface NatsServer {
  readonly port: number;
  /** JetStream store folder; it survives `kill()`/`restart()`, so streams do too. */
  readonly storeDir: string;
  /** `nats://127.0.0.1:<port>` */
  readonly url: string;
  /** The nats-server process's pid while it runs (to signal it: a test freezing it with SIGSTOP, the bench's CPU figures). */
  readonly pid: number | undefined;
  /** SIGKILLs the server and waits until it has exited. */
  kill(): Promise<void>;
  /** Graceful shutdown (SIGINT), waits until exited. */
  stop(): Promise<void>;
  /** Starts again on the same port and store; resolves when JetStream answers. */
  start(): Promise<void>;
  /** `kill()` then `start()`. */
  restart(): Promise<void>;
  /** Stops the server and deletes its temp folder; a caller-supplied `dataDir` is kept. */
  destroy(): Promise<void>;
}

/** Options for {@link startNats}. */
export interface StartNatsOptions {
  /** A persistent JetStream store folder (`-sd`), created if missing, never deleted. Default: a temp folder. */
  readonly dataDir?: string;
  /** Listen on this port (default: a free one). */
  readonly port?: number;
  /** Server log file (appended to); default `nats-server.log` in the temp folder or the store folder. */
  readonly logPath?: string;
  /**
   * A server configuration file (`-c`), e.g. one with users and permissions. The port, address,
   * store folder and server name given on the command line override its own.
   */
  readonly configFile?: string;
  /** Environment variables for the server process (a configuration file may refer to them as `$NAME`). */
  readonly env?: Readonly<Record<string, string>>;
  /** Credentials and TLS options the readiness probe connects with (a server with users refuses anonymous probes). */
  readonly probeOptions?: Partial<ConnectionOptions>;
  /** Default true; false starts a server without JetStream (an operator-mode server whose account has none, say). */
  readonly jetStream?: boolean;
}

/**
 * `nats-server` on PATH, else in /usr/sbin or /usr/local/bin. Throws an error
 * named `NatsServerNotFound` when there is none.
 */
export function findNatsServer(): string {
  const dirs = [...(process.env["PATH"] ?? "").split(delimiter), "/usr/sbin", "/usr/local/bin"];
  for (const dir of dirs) {
    if (dir === "") continue;
    try {
      accessSync(join(dir, "nats-server"), constants.X_OK);
      return join(dir, "nats-server");
    } catch {
      // Not here.
    }
  }
  const error = new Error("cannot find nats-server (looked on PATH, /usr/sbin and /usr/local/bin)");
  error.name = "NatsServerNotFound";
  throw error;
}

/** Rejects until this server (by name: not another that won a race for the port) accepts a connection and its JetStream API answers. */
async function probe(url: string, name: string, options: Partial<ConnectionOptions> = {}, jetStream = true): Promise<void> {
  const nc = await connect({ ...options, servers: url, reconnect: false, timeout: 2_000 });
  try {
    if (nc.info?.server_name !== name) throw new Error(`port answered by nats-server ${nc.info?.server_name}, not ${name}`);
    // jetstreamManager() asks for account info, which fails until JetStream is up.
    if (jetStream) await jetstreamManager(nc, { timeout: 2_000 });
  } finally {
    await nc.close();
  }
}

/**
 * Starts `nats-server -js` on a loopback port. Without `dataDir`, the store is a fresh temp folder
 * that `destroy()` deletes; with it, that folder is the store and is kept. Resolves once JetStream
 * answers.
 */
export async function startNats(opts: StartNatsOptions = {}): Promise<NatsServer> {
  const persistent = opts.dataDir !== undefined;
  const root = persistent ? resolve(opts.dataDir!) : await mkdtemp(join(tmpdir(), "tally-nats-"));
  const removeRoot = async (): Promise<void> => {
    if (!persistent) await rm(root, { recursive: true, force: true });
  };
  const forget = persistent ? () => true : cleanupOnExit(() => rmSync(root, { recursive: true, force: true }));
  const storeDir = persistent ? root : join(root, "jetstream");
  try {
    await mkdir(storeDir, { recursive: true });
    const port = opts.port ?? (await freePort());
    const url = `nats://127.0.0.1:${port}`;
    const serverName = `tally-${process.pid}-${port}-${Math.random().toString(36).slice(2, 8)}`;
    const server = new ServerProcess({
      name: `nats-server on port ${port}`,
      command: findNatsServer(),
      args: [
        ...(opts.configFile !== undefined ? ["-c", opts.configFile] : []),
        ...(opts.jetStream === false ? [] : ["-js", "-sd", storeDir]),
        ...["-a", "127.0.0.1", "-p", String(port), "-n", serverName],
      ],
      ...(opts.env !== undefined ? { env: opts.env } : {}),
      cwd: root,
      logPath: opts.logPath ?? join(root, "nats-server.log"),
      stopSignal: "SIGINT",
      probe: () => probe(url, serverName, opts.probeOptions, opts.jetStream !== false),
    });
    await server.start();

    return {
      port,
      storeDir,
      url,
      get pid() {
        return server.pid;
      },
      ...server.controls(),
      destroy: async () => {
        await server.stop();
        await removeRoot();
        forget();
      },
    };
  } catch (error) {
    await removeRoot();
    forget();
    throw error;
  }
}
