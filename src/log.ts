import { pino, type Logger } from "pino";

export type { Logger };

/** Structured JSON logs on stderr; `TALLY_LOG_LEVEL` (default info, `silent` in tests). */
export function createLogger(name: string, level = process.env.TALLY_LOG_LEVEL ?? "info"): Logger {
  return pino({ name, level, base: { pid: process.pid } }, pino.destination(2));
}
