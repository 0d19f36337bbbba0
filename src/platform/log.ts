import { pino, type Logger } from "pino";
import { maskSecrets } from "./redact.ts";

export type { Logger };

/**
 * Structured JSON logs on stderr; `TALLY_LOG_LEVEL` (default info, `silent` in tests). Every line
 * is masked on its way out: a URL with a password (in an error, a webhook target) never reaches a log.
 */
export function createLogger(
  name: string,
  level = process.env.TALLY_LOG_LEVEL ?? "info",
  destination: pino.DestinationStream = pino.destination(2),
): Logger {
  return pino({ name, level, base: { pid: process.pid }, hooks: { streamWrite: maskSecrets } }, destination);
}
