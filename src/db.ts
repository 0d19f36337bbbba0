import postgres from "postgres";
import type { Sql } from "postgres";

export type { Sql };

/**
 * Opens a postgres.js pool. int8 columns come back as numbers: every quantity and sequence
 * Tally stores stays far below 2^53 (quantities are capped at 1e12 by the command schema).
 */
export function connectPostgres(url: string, opts: { max?: number; application?: string } = {}): Sql {
  return postgres(url, {
    max: opts.max ?? 10,
    onnotice: () => {},
    connection: { application_name: opts.application ?? "tally" },
    types: {
      bigint: {
        to: 20,
        from: [20],
        serialize: (x: number | bigint | string) => String(x),
        parse: (x: string) => Number(x),
      },
    },
  });
}

/** SQLSTATEs and socket errors worth retrying: the database is restarting, unreachable or asked us to retry. */
export function isTransientDbError(error: unknown): boolean {
  const e = error as { code?: string; errno?: string } | undefined;
  const code = e?.code ?? "";
  return (
    code === "40001" || // serialization_failure
    code === "40P01" || // deadlock_detected
    code === "57P01" || // admin_shutdown
    code === "57P02" || // crash_shutdown
    code === "57P03" || // cannot_connect_now
    code.startsWith("08") || // connection exceptions
    code === "53300" || // too_many_connections
    code === "ECONNREFUSED" ||
    code === "ECONNRESET" ||
    code === "EPIPE" ||
    code === "ETIMEDOUT" ||
    code === "CONNECTION_CLOSED" ||
    code === "CONNECTION_ENDED" ||
    code === "CONNECTION_DESTROYED" ||
    code === "CONNECT_TIMEOUT"
  );
}

/** The constraints a command decided before trips: a duplicate, not a fault of the data. */
const DUPLICATE_CONSTRAINTS = new Set(["command_outcomes_pkey", "ledger_entries_command_leg"]);

/**
 * A failure no retry can cure, caused by the data written: a data exception (SQLSTATE class 22:
 * a date out of range, a NUL in text, a number too large), an integrity violation (class 23) other
 * than the duplicate of a command decided before, or a program limit (54: a row too large for its
 * index). The rows must change, not the timing.
 */
export function isPermanentDataError(error: unknown): boolean {
  const e = error as { code?: string; constraint_name?: string } | undefined;
  const code = typeof e?.code === "string" ? e.code : "";
  if (code.startsWith("22") || code.startsWith("54")) return true;
  return code.startsWith("23") && !DUPLICATE_CONSTRAINTS.has(e?.constraint_name ?? "");
}

/** An error's message with its SQLSTATE, for a dead letter or an alert. */
export function describeError(error: unknown): string {
  const e = error as { message?: string; code?: string } | undefined;
  const message = e?.message ?? String(error);
  return typeof e?.code === "string" && /^[0-9A-Z]{5}$/.test(e.code) ? `${message} (SQLSTATE ${e.code})` : message;
}
