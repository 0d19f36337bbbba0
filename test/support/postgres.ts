import { execFile, execFileSync } from 'node:child_process';
import { accessSync, constants, readFileSync, readdirSync, rmSync } from 'node:fs';
import { chown, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { promisify } from 'node:util';
import postgres from 'postgres';
import { freePort } from './ports.ts';
import { cleanupOnExit, ServerProcess, ServerStartError } from './serverProcess.ts';

const execFileAsync = promisify(execFile);

/** A throwaway Postgres server owned by the test run. */
export interface PostgresServer {
  readonly port: number;
  readonly dataDir: string;
  /** `postgres://postgres@127.0.0.1:<port>/<database ?? 'postgres'>` (trust auth, no password). */
  url(database?: string): string;
  /** SIGKILLs the postmaster and every backend, and waits until they have exited. */
  kill(): Promise<void>;
  /** Fast shutdown (SIGINT), waits until exited. */
  stop(): Promise<void>;
  /** Starts again on the same port and data dir; resolves when it accepts connections. */
  start(): Promise<void>;
  /** `kill()` then `start()`: a crash followed by crash recovery. */
  restart(): Promise<void>;
  /** Stops the server and deletes its folder. */
  destroy(): Promise<void>;
}

/** Options for {@link startPostgres}. */
export interface StartPostgresOptions {
  /** Extra `-c name=value` server settings; they override the harness defaults. */
  readonly settings?: Record<string, string>;
}

/** Settings every test server runs with: logical decoding on, durability off (tests need speed, not fsync). */
const DEFAULT_SETTINGS: Readonly<Record<string, string>> = {
  listen_addresses: '127.0.0.1',
  wal_level: 'logical',
  max_wal_senders: '20',
  max_replication_slots: '20',
  fsync: 'off',
  synchronous_commit: 'on',
  full_page_writes: 'off',
  max_connections: '200',
  shared_buffers: '128MB',
};

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * Locates a Postgres server binary (`initdb`, `postgres`, ...): first on PATH,
 * then in `pg_config --bindir`, then in the newest `/usr/lib/postgresql/<version>/bin`.
 */
export function findPostgresBin(name: string): string {
  for (const dir of (process.env['PATH'] ?? '').split(delimiter)) {
    if (dir !== '' && isExecutable(join(dir, name))) return join(dir, name);
  }
  try {
    const bindir = execFileSync('pg_config', ['--bindir'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    if (bindir !== '' && isExecutable(join(bindir, name))) return join(bindir, name);
  } catch {
    // No pg_config on PATH.
  }
  let versions: string[] = [];
  try {
    versions = readdirSync('/usr/lib/postgresql');
  } catch {
    // Not a Debian-style install.
  }
  versions.sort((a, b) => Number(b) - Number(a) || b.localeCompare(a));
  for (const version of versions) {
    const candidate = join('/usr/lib/postgresql', version, 'bin', name);
    if (isExecutable(candidate)) return candidate;
  }
  const error = new Error(`cannot find the Postgres binary '${name}' (looked on PATH, in pg_config --bindir and /usr/lib/postgresql/*/bin)`);
  error.name = 'PostgresBinaryNotFound';
  throw error;
}

/**
 * initdb and postgres refuse to run as root. When we are root, run them as the
 * `postgres` user (or `nobody`), returning that user's ids; otherwise undefined.
 */
function unprivilegedUser(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  for (const user of ['postgres', 'nobody']) {
    try {
      const uid = Number(execFileSync('id', ['-u', user], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim());
      const gid = Number(execFileSync('id', ['-g', user], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim());
      if (Number.isInteger(uid) && Number.isInteger(gid)) return { uid, gid };
    } catch {
      // No such user; try the next one.
    }
  }
  const error = new Error('running as root, but neither a postgres nor a nobody user exists to run Postgres as');
  error.name = 'PostgresUserNotFound';
  throw error;
}

/**
 * A postmaster that was SIGKILLed leaves its small System V shared memory
 * segment behind (a restart would reclaim it). Before deleting a data dir
 * whose server is not running, remove that segment so runs do not leak them.
 * The segment id is on line 7 of postmaster.pid (`<key> <id>`); a clean
 * shutdown deletes the file, so then there is nothing to do.
 */
function releaseSharedMemory(dataDir: string): void {
  let lockFile: string;
  try {
    lockFile = readFileSync(join(dataDir, 'postmaster.pid'), 'utf8');
  } catch {
    return;
  }
  const shmid = lockFile.split('\n')[6]?.trim().split(/\s+/)[1];
  if (shmid === undefined || !/^\d+$/.test(shmid)) return;
  try {
    execFileSync('ipcrm', ['-m', shmid], { stdio: 'ignore' });
  } catch {
    // Already gone, or no ipcrm: nothing more we can do.
  }
}

/** One `select 1` over a fresh connection; rejects until the server accepts queries. */
async function probe(url: string): Promise<void> {
  const sql = postgres(url, { max: 1, connect_timeout: 2, idle_timeout: 1, onnotice: () => {} });
  try {
    await sql`select 1`;
  } finally {
    await sql.end({ timeout: 0 });
  }
}

/**
 * initdb's a fresh cluster in a temp folder and starts `postgres` on a free
 * loopback port with `wal_level=logical` (see {@link DEFAULT_SETTINGS}).
 * Resolves once it accepts connections; call `destroy()` when done.
 */
export async function startPostgres(opts: StartPostgresOptions = {}): Promise<PostgresServer> {
  const root = await mkdtemp(join(tmpdir(), 'tally-pg-'));
  const forget = cleanupOnExit(() => {
    releaseSharedMemory(dataDir);
    rmSync(root, { recursive: true, force: true });
  });
  const dataDir = join(root, 'data');
  const socketDir = join(root, 'sock');
  const logPath = join(root, 'postgres.log');
  const user = unprivilegedUser();
  try {
    await mkdir(socketDir, { mode: 0o700 });
    if (user !== undefined) {
      await chown(root, user.uid, user.gid);
      await chown(socketDir, user.uid, user.gid);
    }
    try {
      await execFileAsync(
        findPostgresBin('initdb'),
        ['-D', dataDir, '--auth=trust', '-U', 'postgres', '--no-sync', '-E', 'UTF8', '--locale=C'],
        { cwd: root, ...user },
      );
    } catch (error) {
      const output = error instanceof Error && 'stderr' in error ? String(error.stderr) : '';
      throw new ServerStartError(`initdb failed in ${dataDir}\n${output}`, { cause: error });
    }

    const port = await freePort();
    const settings = { ...DEFAULT_SETTINGS, ...opts.settings };
    const args = ['-D', dataDir, '-p', String(port), '-k', socketDir];
    for (const [name, value] of Object.entries(settings)) args.push('-c', `${name}=${value}`);

    const url = (database = 'postgres'): string => `postgres://postgres@127.0.0.1:${port}/${encodeURIComponent(database)}`;
    const server = new ServerProcess({
      name: `postgres on port ${port}`,
      command: findPostgresBin('postgres'),
      args,
      cwd: root,
      logPath,
      ...user,
      stopSignal: 'SIGINT',
      probe: () => probe(url()),
    });
    await server.start();

    return {
      port,
      dataDir,
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
        releaseSharedMemory(dataDir);
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
