import { spawn, type ChildProcess } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { chmod, mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import postgres from "postgres";
import { BIN, ROOT } from "./tally.ts";

/** The environment of a `tally dev` child: no server URLs, so it starts its own. */
export function devEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, TALLY_ENV: "dev", TALLY_LOG_LEVEL: "warn" };
  delete env["TALLY_DATABASE_URL"];
  delete env["TALLY_NATS_URL"];
  return env;
}

export interface DevProcess {
  readonly child: ChildProcess;
  readonly databaseUrl: string;
  readonly natsUrl: string;
  readonly apiUrl: string;
  readonly token: string;
  stdout(): string;
  output(): string;
}

const started: Array<ChildProcess> = [];

/** Spawns `tally dev --dir <dir> …` and resolves once its banner is printed. */
export async function startDev(dir: string, ...args: Array<string>): Promise<DevProcess> {
  return startDevWith(dir, {}, ...args);
}

/** `startDev` with more environment variables (e.g. `TALLY_LOG_LEVEL`). */
export async function startDevWith(dir: string, env: Record<string, string>, ...args: Array<string>): Promise<DevProcess> {
  const child = spawn(process.execPath, [BIN, "dev", "--dir", dir, ...args], {
    cwd: ROOT,
    env: { ...devEnv(), ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  started.push(child);
  let stdout = "";
  let output = "";
  child.stdout!.on("data", (d: Buffer) => {
    stdout += d.toString();
    output += d.toString();
  });
  child.stderr!.on("data", (d: Buffer) => (output += d.toString()));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no banner after 90 s:\n${output}`)), 90_000);
    const onData = () => {
      if (!stdout.includes("Ctrl-C stops")) return;
      clearTimeout(timer);
      child.stdout!.off("data", onData);
      child.off("exit", onExit);
      resolve();
    };
    const onExit = (code: number | null) => {
      clearTimeout(timer);
      reject(new Error(`tally dev exited (${code}) before its banner:\n${output}`));
    };
    child.stdout!.on("data", onData);
    child.once("exit", onExit);
  });
  const databaseUrl = /^ {2}postgres {2}(postgres:\/\/\S+)/m.exec(stdout)?.[1];
  const natsUrl = /^ {2}nats {6}(nats:\/\/\S+)/m.exec(stdout)?.[1];
  const apiUrl = /^ {2}api {7}(http:\/\/\S+)/m.exec(stdout)?.[1];
  const token = /^ {2}token {5}(tly_\S+)/m.exec(stdout)?.[1];
  if (databaseUrl === undefined || natsUrl === undefined || apiUrl === undefined || token === undefined)
    throw new Error(`no URLs in the banner:\n${stdout}`);
  return { child, databaseUrl, natsUrl, apiUrl, token, stdout: () => stdout, output: () => output };
}

/** SIGINTs `tally dev` and returns its exit code; fails if it takes more than 20 s. */
export async function stopDev(dev: DevProcess): Promise<number | null> {
  if (dev.child.exitCode !== null) return dev.child.exitCode;
  const exited = new Promise<number | null>((resolve) => dev.child.once("exit", (code) => resolve(code)));
  dev.child.kill("SIGINT");
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<"timeout">((resolve) => (timer = setTimeout(() => resolve("timeout"), 20_000)));
  const result = await Promise.race([exited, timeout]);
  clearTimeout(timer);
  if (result === "timeout") throw new Error(`tally dev did not exit within 20 s of SIGINT:\n${dev.output()}`);
  return result;
}

/** Live postgres / nats-server processes whose command line mentions `dir`. */
export function serversMentioning(dir: string): Array<string> {
  const found: Array<string> = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    let argv: Array<string>;
    let state: string | undefined;
    try {
      argv = readFileSync(`/proc/${entry}/cmdline`, "utf8").split("\0");
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      state = stat.slice(stat.lastIndexOf(")") + 2).split(" ")[0];
    } catch {
      continue;
    }
    const name = path.basename(argv[0] ?? "");
    if ((name === "postgres" || name === "nats-server") && state !== "Z" && argv.some((a) => a.includes(dir)))
      found.push(`${entry} ${argv.join(" ")}`);
  }
  return found;
}

/** A scratch folder the `postgres` user can reach (mkdtemp makes it 0700, and we run as root). */
export async function scratchDir(): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), "tally-dev-test-"));
  await chmod(dir, 0o755);
  return dir;
}

/** SIGINTs every `tally dev` a test started that still runs (then SIGKILL): for afterEach. */
export async function stopStartedDevs(): Promise<void> {
  for (const child of started.splice(0)) {
    if (child.exitCode !== null || child.signalCode !== null) continue;
    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.kill("SIGINT");
    await Promise.race([exited, new Promise((r) => setTimeout(r, 20_000))]);
    if (child.exitCode === null) child.kill("SIGKILL");
  }
}

/** Writes a goods receipt into the demo ERP of a running `tally dev` (its URL is in the banner). */
export async function demoReceipt(dev: DevProcess, itemNo: string, qty: number, uom: "EA" | "CASE" | "KG"): Promise<void> {
  const erpUrl = /captured by CDC\): psql (\S+) \//.exec(dev.stdout())?.[1];
  if (erpUrl === undefined) throw new Error(`no demo ERP URL in the banner:\n${dev.stdout()}`);
  const erp = postgres(erpUrl, { max: 1, onnotice: () => {} });
  try {
    await erp`insert into goods_receipts (item_no, location, qty, uom) values (${itemNo}, 'DC1', ${qty}, ${uom})`;
  } finally {
    await erp.end();
  }
}
