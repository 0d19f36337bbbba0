import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, openSync, readdirSync, readFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";

/** Raised when a server does not come up (it exited, or never became ready). */
export class ServerStartError extends Error {
  override name = "ServerStartError";
}

/** How a server process is launched and how we know it is ready. */
export interface ServerProcessOptions {
  /** Short label used in error messages, e.g. `postgres`. */
  readonly name: string;
  readonly command: string;
  readonly args: readonly string[];
  readonly cwd: string;
  /** stdout and stderr of the process are appended to this file. */
  readonly logPath: string;
  /** Run the process as this user/group (needed for Postgres when we are root). */
  readonly uid?: number;
  readonly gid?: number;
  /** Extra environment variables for the process. */
  readonly env?: Readonly<Record<string, string>>;
  /** Signal for a graceful shutdown. */
  readonly stopSignal: NodeJS.Signals;
  /** Resolves when the server accepts work; rejects while it does not (yet). */
  readonly probe: () => Promise<void>;
  readonly readyTimeoutMs?: number;
}

type Exit = { readonly code: number | null; readonly signal: NodeJS.Signals | null } | { readonly error: Error };

interface Running {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly exited: Promise<Exit>;
  done: boolean;
}

const READY_TIMEOUT_MS = 30_000;
const EXIT_TIMEOUT_MS = 30_000;

/** Processes still alive; killed synchronously if the Node process exits. */
const live = new Set<ServerProcess>();
/** Cleanups of servers not yet destroyed; run (after the kills) if the Node process exits. */
const exitCleanups = new Set<() => void>();
let exitHandlerInstalled = false;

function installExitHandler(): void {
  if (exitHandlerInstalled) return;
  exitHandlerInstalled = true;
  process.on("exit", () => {
    for (const server of live) server.killSync();
    for (const cleanup of exitCleanups) {
      try {
        cleanup();
      } catch {
        // Best effort: leftovers in the temp dir are harmless.
      }
    }
  });
}

/**
 * Registers a synchronous cleanup (e.g. deleting a scratch folder) to run if
 * the Node process exits before the harness cleaned up itself. Returns the
 * function that unregisters it.
 */
export function cleanupOnExit(cleanup: () => void): () => void {
  installExitHandler();
  exitCleanups.add(cleanup);
  return () => exitCleanups.delete(cleanup);
}

/** What a dev server's handle (Postgres, NATS) does to its process. */
export interface ServerControls {
  kill(): Promise<void>;
  stop(): Promise<void>;
  start(): Promise<void>;
  restart(): Promise<void>;
}

/**
 * One long-running server binary (postgres, nats-server) that tests and `tally dev` can start,
 * SIGKILL, stop gracefully and start again.
 *
 * The process is spawned `detached` so it leads its own process group; killing
 * kills that group *and* every descendant found through /proc, because
 * Postgres backends call setsid() and so leave the postmaster's group.
 */
export class ServerProcess {
  #running: Running | undefined;

  constructor(private readonly options: ServerProcessOptions) {}

  /** The OS pid of the main process, while it runs. */
  get pid(): number | undefined {
    return this.#running?.done === false ? this.#running.pid : undefined;
  }

  get isRunning(): boolean {
    return this.#running !== undefined && !this.#running.done;
  }

  /** Spawns the process (no-op if running) and resolves once `probe` succeeds. */
  async start(): Promise<void> {
    if (this.isRunning) return;
    const { name, command, args, cwd, logPath, uid, gid, probe } = this.options;
    const running = this.#spawn(command, args, cwd, logPath, uid, gid);
    this.#running = running;

    const deadline = Date.now() + (this.options.readyTimeoutMs ?? READY_TIMEOUT_MS);
    let lastError: unknown;
    for (;;) {
      if (running.done) {
        const exit = await running.exited;
        const how = "error" in exit ? exit.error.message : `code ${exit.code}, signal ${exit.signal}`;
        throw new ServerStartError(`${name} exited during startup (${how})\n${await this.logTail()}`, {
          cause: "error" in exit ? exit.error : lastError,
        });
      }
      try {
        await probe();
        return;
      } catch (error) {
        // Not up yet: probe again until the deadline; the last error is reported then.
        lastError = error;
      }
      if (Date.now() > deadline) {
        await this.kill();
        throw new ServerStartError(
          `${name} not ready after ${this.options.readyTimeoutMs ?? READY_TIMEOUT_MS} ms: ${String(lastError)}\n${await this.logTail()}`,
          { cause: lastError },
        );
      }
      await sleep(100);
    }
  }

  /** SIGKILLs the process group and all descendants, and waits until they are gone. */
  async kill(): Promise<void> {
    const running = this.#running;
    if (running === undefined || running.done) return;
    const descendants = this.killSync();
    await withTimeout(running.exited, EXIT_TIMEOUT_MS, `${this.options.name} (pid ${running.pid}) did not exit after SIGKILL`);
    await waitUntilGone(descendants, EXIT_TIMEOUT_MS);
  }

  /** Sends the graceful stop signal and waits; falls back to `kill()` on timeout. */
  async stop(): Promise<void> {
    const running = this.#running;
    if (running === undefined || running.done) return;
    try {
      process.kill(running.pid, this.options.stopSignal);
    } catch {
      // Already gone; `exited` resolves shortly.
    }
    const result = await Promise.race([running.exited, sleep(EXIT_TIMEOUT_MS, "timeout" as const, { ref: false })]);
    if (result === "timeout") await this.kill();
  }

  /** `kill()` then `start()`: a crash and a start on the same port and data. */
  async restart(): Promise<void> {
    await this.kill();
    await this.start();
  }

  /** The kill/stop/start/restart of a dev server's handle, bound to this process. */
  controls(): ServerControls {
    return { kill: () => this.kill(), stop: () => this.stop(), start: () => this.start(), restart: () => this.restart() };
  }

  /**
   * Synchronous SIGKILL of the process and its descendants (safe in an 'exit'
   * handler). Returns the descendant pids so callers can wait for them.
   */
  killSync(): number[] {
    const running = this.#running;
    if (running === undefined || running.done) return [];
    const { pid } = running;
    // Freeze the leader first so it cannot fork new children while we look.
    trySignal(pid, "SIGSTOP");
    const descendants = descendantsOf(pid);
    for (const child of descendants) trySignal(child, "SIGKILL");
    trySignal(-pid, "SIGKILL");
    trySignal(pid, "SIGKILL");
    return descendants;
  }

  /** The last lines of the process log, for error messages. */
  async logTail(lines = 40): Promise<string> {
    try {
      const text = await readFile(this.options.logPath, "utf8");
      return `--- last lines of ${this.options.logPath} ---\n${text.trimEnd().split("\n").slice(-lines).join("\n")}`;
    } catch (error) {
      return `(no log at ${this.options.logPath}: ${String(error)})`;
    }
  }

  #spawn(command: string, args: readonly string[], cwd: string, logPath: string, uid: number | undefined, gid: number | undefined): Running {
    const logFd = openSync(logPath, "a");
    let child: ChildProcess;
    try {
      child = spawn(command, args, {
        cwd,
        detached: true,
        stdio: ["ignore", logFd, logFd],
        ...(uid === undefined ? {} : { uid }),
        ...(gid === undefined ? {} : { gid }),
        ...(this.options.env ? { env: { ...process.env, ...this.options.env } } : {}),
      });
    } finally {
      closeSync(logFd); // the child holds its own copy
    }
    const exited = new Promise<Exit>((resolve) => {
      child.once("exit", (code, signal) => resolve({ code, signal }));
      child.once("error", (error) => resolve({ error }));
    });
    const running: Running = { child, pid: child.pid ?? -1, exited, done: child.pid === undefined };
    void exited.then(() => {
      running.done = true;
      live.delete(this);
    });
    if (!running.done) {
      installExitHandler();
      live.add(this);
    }
    return running;
  }
}

function trySignal(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // ESRCH: already gone.
  }
}

/** Parses /proc/<pid>/stat; the command name may contain spaces and parens. */
function procStat(pid: number): { ppid: number; state: string } | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return { state: fields[0] ?? "?", ppid: Number(fields[1]) };
  } catch {
    // Probe: the process is gone (or there is no /proc).
    return undefined;
  }
}

/** All transitive children of `root`, found through /proc (empty where /proc is missing). */
function descendantsOf(root: number): number[] {
  let entries: string[];
  try {
    entries = readdirSync("/proc");
  } catch {
    // Probe: no /proc here, so no descendants can be found.
    return [];
  }
  const children = new Map<number, number[]>();
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    const stat = procStat(Number(entry));
    if (stat === undefined) continue;
    const siblings = children.get(stat.ppid) ?? [];
    siblings.push(Number(entry));
    children.set(stat.ppid, siblings);
  }
  const result: number[] = [];
  const queue = [root];
  for (let pid = queue.shift(); pid !== undefined; pid = queue.shift()) {
    for (const child of children.get(pid) ?? []) {
      result.push(child);
      queue.push(child);
    }
  }
  return result;
}

/**
 * Waits until none of `pids` is alive. Zombies count as gone: once the killed
 * leader is gone they are re-parented to PID 1, which in a container may never
 * reap them, but they no longer hold ports or shared memory.
 */
async function waitUntilGone(pids: readonly number[], timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const alive = pids.filter((pid) => {
      const stat = procStat(pid);
      return stat !== undefined && stat.state !== "Z" && stat.state !== "X";
    });
    if (alive.length === 0) return;
    if (Date.now() > deadline) throw new Error(`processes still alive after SIGKILL: ${alive.join(", ")}`);
    await sleep(20);
  }
}

async function withTimeout<T>(promise: Promise<T>, ms: number, message: string): Promise<T> {
  const timeout = sleep(ms, undefined, { ref: false }).then(() => {
    throw new Error(message);
  });
  return Promise.race([promise, timeout]);
}

/**
 * Live processes named like one of `commands` (e.g. `postgres`, `nats-server`) whose
 * command line names `dir` or a path inside it: servers still using a data folder.
 * Empty where /proc is missing.
 */
export function serversUsing(dir: string, commands: readonly string[] = ["postgres", "nats-server"]): Array<{ pid: number; command: string }> {
  let entries: string[];
  try {
    entries = readdirSync("/proc");
  } catch {
    // Probe: no /proc here, so no servers can be found.
    return [];
  }
  const found: Array<{ pid: number; command: string }> = [];
  for (const entry of entries) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    let argv: string[];
    try {
      argv = readFileSync(`/proc/${entry}/cmdline`, "utf8").split("\0");
    } catch {
      // The process exited meanwhile: skip it.
      continue;
    }
    const command = (argv[0] ?? "").split("/").pop() ?? "";
    if (!commands.includes(command)) continue;
    if (!argv.slice(1).some((arg) => arg === dir || arg.startsWith(`${dir}/`))) continue;
    const stat = procStat(Number(entry));
    if (stat === undefined || stat.state === "Z" || stat.state === "X") continue;
    found.push({ pid: Number(entry), command });
  }
  return found;
}
