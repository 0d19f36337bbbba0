/**
 * Where `tally dev` sends its logs: every line (JSON, as in production) into `<dir>/logs/<role>.log`,
 * one file per role of the process (`worker`, `relay`, `cdc`, `api`, `demo`; `tally` for lines of no
 * role), so they can be grepped or read with jq; warnings and errors also reach the terminal, one
 * short line each, above the live status line.
 */
import { createWriteStream, mkdirSync, type WriteStream } from "node:fs";
import { once } from "node:events";
import path from "node:path";
import { createLogger, type Logger } from "../../platform/index.ts";
import type { DevTerminal } from "./devTerminal.ts";

const LEVELS: Readonly<Record<number, string>> = { 10: "TRACE", 20: "DEBUG", 30: "INFO", 40: "WARN", 50: "ERROR", 60: "FATAL" };
const WARN = 40;

/** The logger of a dev stack and the files it writes. */
export interface DevLogs {
  readonly log: Logger;
  /** The folder of the log files. */
  readonly dir: string;
  /** Flushes and closes the files. */
  close(): Promise<void>;
}

/** Opens `dir` (created if missing) for the log files of a dev stack at `level`. */
export function openDevLogs(dir: string, level: string, terminal: DevTerminal): DevLogs {
  mkdirSync(dir, { recursive: true });
  const files = new Map<string, WriteStream>();
  const fileOf = (role: string): WriteStream => {
    let file = files.get(role);
    if (file === undefined) {
      file = createWriteStream(path.join(dir, `${role}.log`), { flags: "a" });
      // A full disk must not take the stack down: the terminal says so once per file.
      file.once("error", (error) => terminal.note(`tally dev: cannot write ${role}.log: ${error.message}`));
      files.set(role, file);
    }
    return file;
  };
  const destination = {
    write(line: string): void {
      let record: Record<string, unknown> = {};
      try {
        record = JSON.parse(line) as Record<string, unknown>;
      } catch {
        // Not JSON (never from pino): kept in the general file as it is.
      }
      const role = typeof record.role === "string" && /^[a-z]+$/.test(record.role) ? record.role : "tally";
      fileOf(role).write(line.endsWith("\n") ? line : `${line}\n`);
      if (typeof record.level === "number" && record.level >= WARN) terminal.note(terminalLine(record));
    },
  };
  return {
    log: createLogger("tally", level, destination),
    dir,
    async close() {
      const open = [...files.values()];
      files.clear();
      await Promise.all(
        open.map(async (file) => {
          file.end();
          if (!file.closed) await once(file, "close").catch(() => undefined); // an errored file is closed already
        }),
      );
    },
  };
}

const OMITTED = new Set(["level", "time", "pid", "hostname", "name", "msg", "role", "err", "error"]);

/** One line for the terminal: time, level, role, message, the error's message and the other fields as key=value. */
export function terminalLine(record: Readonly<Record<string, unknown>>): string {
  const time = typeof record.time === "number" ? new Date(record.time).toTimeString().slice(0, 8) : "--:--:--";
  const level = LEVELS[record.level as number] ?? String(record.level);
  const role = typeof record.role === "string" ? `${record.role}: ` : "";
  const err = (record.err ?? record.error) as { message?: unknown } | undefined;
  const cause = err && typeof err.message === "string" ? ` — ${err.message.split("\n")[0]}` : "";
  const fields = Object.entries(record)
    .filter(([key, value]) => !OMITTED.has(key) && value !== undefined)
    .map(([key, value]) => `${key}=${typeof value === "string" ? value : JSON.stringify(value)}`)
    .join(" ");
  const line = `${time} ${level} ${role}${String(record.msg ?? "")}${cause}${fields ? `  ${fields}` : ""}`;
  return line.length > 400 ? `${line.slice(0, 399)}…` : line;
}
