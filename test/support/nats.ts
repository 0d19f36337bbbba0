import { accessSync, constants, rmSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { freePort } from './ports.ts';
import { cleanupOnExit, ServerProcess } from './serverProcess.ts';

/** A throwaway JetStream-enabled nats-server owned by the test run. */
export interface NatsServer {
  readonly port: number;
  /** JetStream store folder; it survives `kill()`/`restart()`, so streams do too. */
  readonly storeDir: string;
  /** `nats://127.0.0.1:<port>` */
  readonly url: string;
  /** SIGKILLs the server and waits until it has exited. */
  kill(): Promise<void>;
  /** Graceful shutdown (SIGINT), waits until exited. */
  stop(): Promise<void>;
  /** Starts again on the same port and store; resolves when JetStream answers. */
  start(): Promise<void>;
  /** `kill()` then `start()`. */
  restart(): Promise<void>;
  /** Stops the server and deletes its folder. */
  destroy(): Promise<void>;
}

/** `nats-server` on PATH, else in /usr/sbin or /usr/local/bin. */
function findNatsServer(): string {
  const dirs = [...(process.env['PATH'] ?? '').split(delimiter), '/usr/sbin', '/usr/local/bin'];
  for (const dir of dirs) {
    if (dir === '') continue;
    try {
      accessSync(join(dir, 'nats-server'), constants.X_OK);
      return join(dir, 'nats-server');
    } catch {
      // Not here.
    }
  }
  const error = new Error('cannot find nats-server (looked on PATH, /usr/sbin and /usr/local/bin)');
  error.name = 'NatsServerNotFound';
  throw error;
}

/** Rejects until the server accepts a connection and its JetStream API answers. */
async function probe(url: string): Promise<void> {
  const nc = await connect({ servers: url, reconnect: false, timeout: 2_000 });
  try {
    // jetstreamManager() asks for account info, which fails until JetStream is up.
    await jetstreamManager(nc, { timeout: 2_000 });
  } finally {
    await nc.close();
  }
}

/**
 * Starts `nats-server -js` on a free loopback port with a fresh store folder.
 * Resolves once JetStream answers; call `destroy()` when done.
 */
export async function startNats(): Promise<NatsServer> {
  const root = await mkdtemp(join(tmpdir(), 'tally-nats-'));
  const forget = cleanupOnExit(() => rmSync(root, { recursive: true, force: true }));
  const storeDir = join(root, 'jetstream');
  try {
    await mkdir(storeDir);
    const port = await freePort();
    const url = `nats://127.0.0.1:${port}`;
    const server = new ServerProcess({
      name: `nats-server on port ${port}`,
      command: findNatsServer(),
      args: ['-js', '-a', '127.0.0.1', '-p', String(port), '-sd', storeDir],
      cwd: root,
      logPath: join(root, 'nats-server.log'),
      stopSignal: 'SIGINT',
      probe: () => probe(url),
    });
    await server.start();

    return {
      port,
      storeDir,
      url,
      kill: () => server.kill(),
      stop: () => server.stop(),
      start: () => server.start(),
      restart: async () => {
        await server.kill();
        await server.start();
      },
      destroy: async () => {
        await server.stop();
        await rm(root, { recursive: true, force: true });
        forget();
      },
    };
  } catch (error) {
    await rm(root, { recursive: true, force: true });
    forget();
    throw error;
  }
}
