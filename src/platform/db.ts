import { readFileSync } from "node:fs";
import { isIP } from "node:net";
import { checkServerIdentity, type ConnectionOptions as TlsOptions } from "node:tls";
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
  const { url: plain, ssl } = postgresTls(url);
  return postgres(plain, {
    ...(ssl !== undefined ? { ssl } : {}),
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
  // NATS errors carry numeric codes: a string is what the checks below compare.
  const code = String(e?.code ?? "");
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

/** A Postgres URL's TLS parameters could not be used (a certificate file cannot be read, an unknown sslmode). */
export class DatabaseTlsError extends Error {
  override readonly name = "DatabaseTlsError";
}

const SSL_PARAMS = ["sslmode", "sslrootcert", "sslcert", "sslkey"] as const;

/**
 * Reads libpq's TLS parameters from a Postgres URL — `sslmode` (disable, allow, prefer, require,
 * verify-ca, verify-full), `sslrootcert` (the CA file), `sslcert`/`sslkey` (a client certificate) —
 * and turns them into the postgres.js `ssl` option, leaving the URL without them (postgres.js would
 * otherwise send the file names to the server as settings). As in libpq, `require` with a
 * `sslrootcert` verifies the chain like `verify-ca`.
 */
export function postgresTls(url: string): { url: string; ssl: boolean | "prefer" | "require" | TlsOptions | undefined } {
  if (!/[?&]ssl(mode|rootcert|cert|key)=/.test(url)) return { url, ssl: undefined };
  const parsed = new URL(url);
  const param = (k: (typeof SSL_PARAMS)[number]) => parsed.searchParams.get(k) ?? undefined;
  const mode = param("sslmode") ?? (param("sslrootcert") !== undefined ? "verify-full" : "prefer");
  const rootcert = param("sslrootcert");
  const cert = param("sslcert");
  const key = param("sslkey");
  for (const k of SSL_PARAMS) parsed.searchParams.delete(k);
  const read = (what: string, file: string) => {
    try {
      return readFileSync(file, "utf8");
    } catch (error) {
      throw new DatabaseTlsError(`database URL ${what}: cannot read ${file} (${(error as Error).message})`, { cause: error });
    }
  };
  const files: TlsOptions = {
    ...(rootcert !== undefined && rootcert !== "system" ? { ca: read("sslrootcert", rootcert) } : {}),
    ...(cert !== undefined ? { cert: read("sslcert", cert) } : {}),
    ...(key !== undefined ? { key: read("sslkey", key) } : {}),
  };
  const host = parsed.hostname.replace(/^\[|\]$/g, "");
  const verifyChain: TlsOptions = { ...files, rejectUnauthorized: true };
  let ssl: boolean | "prefer" | "require" | TlsOptions;
  switch (mode) {
    case "disable":
      ssl = false;
      break;
    case "allow":
    case "prefer":
      ssl = Object.keys(files).length > 0 && files.ca === undefined ? { ...files, rejectUnauthorized: false } : "prefer";
      break;
    case "require":
      ssl =
        files.ca !== undefined
          ? { ...verifyChain, checkServerIdentity: () => undefined }
          : cert !== undefined
            ? { ...files, rejectUnauthorized: false }
            : "require";
      break;
    case "verify-ca":
      ssl = { ...verifyChain, checkServerIdentity: () => undefined };
      break;
    case "verify-full":
      // The URL's host name (or IP address) must be in the certificate's subjectAltName.
      ssl = {
        ...verifyChain,
        ...(isIP(host) === 0 ? { servername: host } : {}),
        checkServerIdentity: (_: string, c) => checkServerIdentity(host, c),
      };
      break;
    default:
      throw new DatabaseTlsError(
        `database URL sslmode: expected disable, allow, prefer, require, verify-ca or verify-full, not ${JSON.stringify(mode)}`,
      );
  }
  return { url: parsed.toString(), ssl };
}
