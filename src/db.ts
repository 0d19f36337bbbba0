import postgres from "postgres";
import type { Sql } from "postgres";

export type { Sql };

/**
 * Opens a postgres.js pool. int8 columns come back as numbers within ±(2^53 − 1) (sequences, ids,
 * counts and nearly every quantity) and as bigints beyond, never rounded: a balance is a running
 * sum of quantities of up to 1e12 each and may pass 2^53. Code that reads balances or ledger
 * quantities takes `number | bigint` (or converts with `BigInt`).
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
        parse: parseInt8,
      },
    },
  });
}

/** An int8 as a number when that is exact, else as a bigint. */
export function parseInt8(text: string): number | bigint {
  const n = Number(text);
  return Number.isSafeInteger(n) ? n : BigInt(text);
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
