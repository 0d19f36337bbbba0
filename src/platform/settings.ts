import { availableParallelism } from "node:os";
import { Config, type ConfigError, ConfigProvider, Effect, Either, Option } from "effect";

/** Process settings, decoded from environment variables once at start. */
export interface Settings {
  /** `TALLY_ENV`: names every stream, subject, bucket, slot and publication. */
  readonly env: string;
  readonly databaseUrl: string | undefined;
  /** `TALLY_NATS_URL`: one server, or a comma-separated list of a cluster's servers. */
  readonly natsUrl: string;
  /** `TALLY_NATS_REPLICAS`: replicas of every stream and KV bucket Tally creates (1 on one server; 3 in a cluster). */
  readonly natsReplicas: number;
  readonly partitions: number;
  readonly duplicateWindowMs: number;
  readonly leaseTtlMs: number;
  readonly httpPort: number;
  readonly configFile: string;
  /** Most live SKU actors a worker keeps in memory before passivating the least recently used. */
  readonly maxActors: number;
  /** Most commands applied in one ledger transaction. */
  readonly batchMax: number;
  /** `TALLY_APPLY_CONCURRENCY`: how many of a worker's partitions decide at once (their batches then commit together) (default: CPU count). */
  readonly applyConcurrency: number;
  /** `TALLY_HTTP_HOST`: the address the api role listens on (default 0.0.0.0). */
  readonly httpHost: string;
  /** `TALLY_METRICS_PORT` / `TALLY_METRICS_HOST`: where a process without the api role serves `/metrics` (0: any free port). */
  readonly metricsPort: number;
  readonly metricsHost: string;
  /** `TALLY_API_TOKENS`: inline JSON list of hashed API tokens (see src/http/auth.ts). */
  readonly apiTokens: string | undefined;
  /** `TALLY_API_TOKENS_FILE`: a JSON file with the same list. */
  readonly apiTokensFile: string | undefined;
  /** `TALLY_API_RATE_LIMIT`: write requests per minute per API token (default 600). */
  readonly apiRateLimit: number;
  /** `TALLY_SHUTDOWN_TIMEOUT_MS`: how long `tally start` may take to stop after SIGTERM/SIGINT (default 10 000). */
  readonly shutdownTimeoutMs: number;
  /**
   * `TALLY_REQUEST_TIMEOUT_MS`: how long a request may wait on Postgres or NATS before it is answered
   * 503 with Retry-After (default 2000); a reservation waits this long on top of its decision.
   */
  readonly requestTimeoutMs: number;
  /**
   * `TALLY_RESERVATION_SHED_LAG_MS`: when a partition's holds take longer than this to be decided (or one has
   * waited this long), new reservations there are answered 503 `overloaded` with Retry-After at once, nothing
   * written or published (default 3000; 0: never shed).
   */
  readonly reservationShedLagMs: number;
  /**
   * `TALLY_WORKER_PROCESS`: `separate` (default) runs the worker role of `tally start --roles …,api,worker` in a
   * child process, so request bodies never hold the loop that renews its leases; `inline` keeps one process.
   */
  readonly workerProcess: "separate" | "inline";
  /** `TALLY_ANCHOR_INTERVAL_MS`: how often the relay role publishes the hash-chain heads that changed (default 60000). */
  readonly anchorIntervalMs: number;
  /** How this process proves who it is to NATS and checks the server (`TALLY_NATS_*`). */
  readonly natsAccess: NatsAccess;
  /** `TALLY_CORS_ORIGINS`: the web origins (`https://shop.example`) whose pages may call the API; none = no CORS. */
  readonly corsOrigins: ReadonlyArray<string>;
  /** `TALLY_STREAM_TOKEN_SECRET`: signs the short-lived stream tokens browsers use (same on every API replica); unset = none are minted. */
  readonly streamTokenSecret: string | undefined;
  /** How long each growing stream, bucket and table keeps what it holds (`TALLY_*_MAX_AGE_*`, `*_RETENTION_*`, `TALLY_PRUNE_*`). */
  readonly retention: RetentionSettings;
}

/**
 * Retention: the JetStream limits of the growing streams (set at start, existing streams updated), and the
 * horizons of the pruning job of the worker role (src/app/pruner.ts). Milliseconds and bytes.
 */
export interface RetentionSettings {
  /** `TALLY_COMMANDS_MAX_AGE_SECONDS`: the commands stream's max age; never shorter than the duplicate window. */
  readonly commandsMaxAgeMs: number;
  /** `TALLY_EVENTS_MAX_AGE_SECONDS`: the events stream's max age. */
  readonly eventsMaxAgeMs: number;
  /** `TALLY_AVAILABILITY_MAX_AGE_SECONDS`: the availability change stream's max age (the KV bucket keeps each key's latest value). */
  readonly availabilityMaxAgeMs: number;
  /** `TALLY_DLQ_MAX_AGE_SECONDS`: dead letters older than this are expired by the pruner (each logged and counted). */
  readonly dlqMaxAgeMs: number;
  /** `TALLY_DLQ_MAX_BYTES`: above this the pruner expires the oldest dead letters (each logged and counted). */
  readonly dlqMaxBytes: number;
  /** `TALLY_POS_CLAIM_RETENTION_SECONDS`: how long a POS transaction's claim (its resend idempotency record) is kept. */
  readonly posClaimRetentionMs: number;
  /** `TALLY_RESERVATION_RETENTION_SECONDS`: how long a finished reservation (and its Idempotency-Key) is kept. */
  readonly reservationRetentionMs: number;
  /** `TALLY_OUTCOMES_ARCHIVE_RETENTION_SECONDS`: how long archived command outcomes are kept (0: forever). */
  readonly outcomesArchiveRetentionMs: number;
  /** `TALLY_CATALOG_MAX_AGE_SECONDS`: the catalog stream's max age (the catalog KV bucket keeps each key's latest projection). */
  readonly catalogMaxAgeMs: number;
  /**
   * `TALLY_CATALOG_HISTORY_RETENTION_SECONDS`: how long catalog history is kept — catalog versions and a
   * channel's acknowledged versions (never one a channel has not acknowledged, nor its latest), done
   * scheduled price changes, prices that ended.
   */
  readonly catalogHistoryRetentionMs: number;
  /** `TALLY_PRUNE_INTERVAL_MS`: how often the worker role's pruner runs. */
  readonly pruneIntervalMs: number;
  /** `TALLY_PRUNE_BATCH`: most rows one pruning statement touches (each batch is its own short transaction). */
  readonly pruneBatch: number;
}

/**
 * NATS credentials and TLS files. At most one way to authenticate is set (user and password, a
 * token, an NKey seed file or a `.creds` file); user and password may also come from the URL.
 */
export interface NatsAccess {
  /** `TALLY_NATS_USER` (or the user in `nats://user:pass@host`). */
  readonly user?: string;
  /** `TALLY_NATS_PASSWORD` (or the password in the URL). */
  readonly password?: string;
  /** `TALLY_NATS_TOKEN`. */
  readonly token?: string;
  /** `TALLY_NATS_NKEY_SEED_FILE`: a file holding an NKey user seed (`SU…`). */
  readonly nkeySeedFile?: string;
  /** `TALLY_NATS_CREDS_FILE`: a `.creds` file (user JWT and seed) for servers in operator (JWT) mode. */
  readonly credsFile?: string;
  /** `TALLY_NATS_CA_FILE`: CA certificate(s) the server's certificate must chain to; setting it requires TLS. */
  readonly caFile?: string;
  /** `TALLY_NATS_CERT_FILE` and `TALLY_NATS_KEY_FILE`: a client certificate, for servers that verify clients. */
  readonly certFile?: string;
  readonly keyFile?: string;
}

/** A setting that could not be decoded: the message names it. */
export class SettingsError extends Error {
  override readonly name = "SettingsError";
}

/**
 * The one place each setting's default is written, by environment variable. The worker, the CLI's
 * usage text and README.md's settings table take them from here (test/readmeSettings.test.ts checks the README).
 */
export const DEFAULTS = {
  TALLY_ENV: "dev",
  TALLY_NATS_URL: "nats://127.0.0.1:4222",
  TALLY_NATS_REPLICAS: 1,
  TALLY_PARTITIONS: 16,
  TALLY_DUPLICATE_WINDOW_SECONDS: 2 * 3600,
  TALLY_LEASE_TTL_MS: 10_000,
  TALLY_HTTP_PORT: 8080,
  TALLY_CONFIG: "tally.config.ts",
  TALLY_MAX_ACTORS: 100_000,
  TALLY_BATCH_MAX: 2000,
  TALLY_HTTP_HOST: "0.0.0.0",
  TALLY_API_RATE_LIMIT: 600,
  TALLY_SHUTDOWN_TIMEOUT_MS: 10_000,
  TALLY_REQUEST_TIMEOUT_MS: 2000,
  TALLY_RESERVATION_SHED_LAG_MS: 3000,
  TALLY_WORKER_PROCESS: "separate",
  TALLY_ANCHOR_INTERVAL_MS: 60_000,
  TALLY_METRICS_PORT: 9464,
  TALLY_METRICS_HOST: "0.0.0.0",
  TALLY_COMMANDS_MAX_AGE_SECONDS: 7 * 24 * 3600,
  TALLY_EVENTS_MAX_AGE_SECONDS: 30 * 24 * 3600,
  TALLY_AVAILABILITY_MAX_AGE_SECONDS: 24 * 3600,
  TALLY_DLQ_MAX_AGE_SECONDS: 30 * 24 * 3600,
  TALLY_DLQ_MAX_BYTES: 1024 * 1024 * 1024,
  TALLY_POS_CLAIM_RETENTION_SECONDS: 30 * 24 * 3600,
  TALLY_RESERVATION_RETENTION_SECONDS: 7 * 24 * 3600,
  TALLY_OUTCOMES_ARCHIVE_RETENTION_SECONDS: 90 * 24 * 3600,
  TALLY_CATALOG_MAX_AGE_SECONDS: 7 * 24 * 3600,
  TALLY_CATALOG_HISTORY_RETENTION_SECONDS: 30 * 24 * 3600,
  TALLY_PRUNE_INTERVAL_MS: 5 * 60_000,
  TALLY_PRUNE_BATCH: 1000,
} as const;

/** Defaults computed at start, as the usage text and the README name them. */
export const COMPUTED_DEFAULTS = {
  TALLY_APPLY_CONCURRENCY: "CPU count",
} as const;

/** Settings without a default (optional, or required where used). */
export const WITHOUT_DEFAULT = [
  "TALLY_DATABASE_URL",
  "TALLY_API_TOKENS",
  "TALLY_API_TOKENS_FILE",
  "TALLY_NATS_USER",
  "TALLY_NATS_PASSWORD",
  "TALLY_NATS_TOKEN",
  "TALLY_NATS_NKEY_SEED_FILE",
  "TALLY_NATS_CREDS_FILE",
  "TALLY_NATS_CA_FILE",
  "TALLY_NATS_CERT_FILE",
  "TALLY_NATS_KEY_FILE",
  "TALLY_CORS_ORIGINS",
  "TALLY_STREAM_TOKEN_SECRET",
] as const;

/** A web origin as browsers send it: scheme, host, optional port, nothing else. */
const ORIGIN = /^https?:\/\/[A-Za-z0-9.-]+(:[0-9]{1,5})?$|^https?:\/\/\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$/;

const envName = Config.string("TALLY_ENV").pipe(
  Config.withDefault(DEFAULTS.TALLY_ENV),
  Config.validate({
    message: "TALLY_ENV: expected lowercase letters, digits and _ (e.g. dev, prod_eu)",
    validation: (s) => /^[a-z0-9_]+$/.test(s) && s.length <= 40,
  }),
);

const url = (name: string, schemes: ReadonlyArray<string>) =>
  Config.string(name).pipe(
    Config.validate({
      message: `${name}: expected a URL starting with ${schemes.join(" or ")}`,
      validation: (s) => schemes.some((p) => s.startsWith(p)),
    }),
  );

/** One URL or a comma-separated list of them (a cluster's servers), each with one of `schemes`. */
const urlList = (name: string, schemes: ReadonlyArray<string>) =>
  Config.string(name).pipe(
    Config.validate({
      message: `${name}: expected a URL starting with ${schemes.join(" or ")}, or a comma-separated list of them (one per server of a cluster)`,
      validation: (s) => s.split(",").every((u) => schemes.some((p) => u.trim().startsWith(p))),
    }),
  );

const intIn = (name: string, min: number, max: number, fallback: number) =>
  Config.integer(name).pipe(
    Config.withDefault(fallback),
    Config.validate({
      message: `${name}: expected an integer from ${min} to ${max}`,
      validation: (n) => n >= min && n <= max,
    }),
  );

const YEAR_SECONDS = 366 * 24 * 3600;

const retentionConfig = Config.all({
  commandsMaxAgeSeconds: intIn("TALLY_COMMANDS_MAX_AGE_SECONDS", 1, YEAR_SECONDS, DEFAULTS.TALLY_COMMANDS_MAX_AGE_SECONDS),
  eventsMaxAgeSeconds: intIn("TALLY_EVENTS_MAX_AGE_SECONDS", 60, 10 * YEAR_SECONDS, DEFAULTS.TALLY_EVENTS_MAX_AGE_SECONDS),
  availabilityMaxAgeSeconds: intIn("TALLY_AVAILABILITY_MAX_AGE_SECONDS", 60, YEAR_SECONDS, DEFAULTS.TALLY_AVAILABILITY_MAX_AGE_SECONDS),
  dlqMaxAgeSeconds: intIn("TALLY_DLQ_MAX_AGE_SECONDS", 60, 10 * YEAR_SECONDS, DEFAULTS.TALLY_DLQ_MAX_AGE_SECONDS),
  dlqMaxBytes: intIn("TALLY_DLQ_MAX_BYTES", 1024 * 1024, Number.MAX_SAFE_INTEGER, DEFAULTS.TALLY_DLQ_MAX_BYTES),
  posClaimRetentionSeconds: intIn("TALLY_POS_CLAIM_RETENTION_SECONDS", 60, 10 * YEAR_SECONDS, DEFAULTS.TALLY_POS_CLAIM_RETENTION_SECONDS),
  reservationRetentionSeconds: intIn("TALLY_RESERVATION_RETENTION_SECONDS", 60, 10 * YEAR_SECONDS, DEFAULTS.TALLY_RESERVATION_RETENTION_SECONDS),
  outcomesArchiveRetentionSeconds: intIn(
    "TALLY_OUTCOMES_ARCHIVE_RETENTION_SECONDS",
    0,
    100 * YEAR_SECONDS,
    DEFAULTS.TALLY_OUTCOMES_ARCHIVE_RETENTION_SECONDS,
  ),
  catalogMaxAgeSeconds: intIn("TALLY_CATALOG_MAX_AGE_SECONDS", 60, 10 * YEAR_SECONDS, DEFAULTS.TALLY_CATALOG_MAX_AGE_SECONDS),
  catalogHistoryRetentionSeconds: intIn(
    "TALLY_CATALOG_HISTORY_RETENTION_SECONDS",
    60,
    100 * YEAR_SECONDS,
    DEFAULTS.TALLY_CATALOG_HISTORY_RETENTION_SECONDS,
  ),
  pruneIntervalMs: intIn("TALLY_PRUNE_INTERVAL_MS", 100, 24 * 3600 * 1000, DEFAULTS.TALLY_PRUNE_INTERVAL_MS),
  pruneBatch: intIn("TALLY_PRUNE_BATCH", 1, 100_000, DEFAULTS.TALLY_PRUNE_BATCH),
});

const settingsConfig = Config.all({
  env: envName,
  databaseUrl: Config.option(url("TALLY_DATABASE_URL", ["postgres://", "postgresql://"])),
  natsUrl: urlList("TALLY_NATS_URL", ["nats://", "tls://", "ws://", "wss://"]).pipe(Config.withDefault(DEFAULTS.TALLY_NATS_URL)),
  natsReplicas: intIn("TALLY_NATS_REPLICAS", 1, 5, DEFAULTS.TALLY_NATS_REPLICAS),
  partitions: intIn("TALLY_PARTITIONS", 1, 1024, DEFAULTS.TALLY_PARTITIONS),
  duplicateWindowSeconds: intIn("TALLY_DUPLICATE_WINDOW_SECONDS", 1, 7 * 24 * 3600, DEFAULTS.TALLY_DUPLICATE_WINDOW_SECONDS),
  leaseTtlMs: intIn("TALLY_LEASE_TTL_MS", 1000, 600_000, DEFAULTS.TALLY_LEASE_TTL_MS),
  httpPort: intIn("TALLY_HTTP_PORT", 0, 65535, DEFAULTS.TALLY_HTTP_PORT),
  configFile: Config.string("TALLY_CONFIG").pipe(Config.withDefault(DEFAULTS.TALLY_CONFIG)),
  maxActors: intIn("TALLY_MAX_ACTORS", 10, 100_000_000, DEFAULTS.TALLY_MAX_ACTORS),
  batchMax: intIn("TALLY_BATCH_MAX", 1, 100_000, DEFAULTS.TALLY_BATCH_MAX),
  applyConcurrency: intIn("TALLY_APPLY_CONCURRENCY", 1, 1024, availableParallelism()),
  httpHost: Config.string("TALLY_HTTP_HOST").pipe(Config.withDefault(DEFAULTS.TALLY_HTTP_HOST)),
  metricsPort: intIn("TALLY_METRICS_PORT", 0, 65535, DEFAULTS.TALLY_METRICS_PORT),
  metricsHost: Config.string("TALLY_METRICS_HOST").pipe(Config.withDefault(DEFAULTS.TALLY_METRICS_HOST)),
  apiTokens: Config.option(Config.string("TALLY_API_TOKENS")),
  apiTokensFile: Config.option(Config.string("TALLY_API_TOKENS_FILE")),
  apiRateLimit: intIn("TALLY_API_RATE_LIMIT", 1, 1_000_000, DEFAULTS.TALLY_API_RATE_LIMIT),
  shutdownTimeoutMs: intIn("TALLY_SHUTDOWN_TIMEOUT_MS", 100, 600_000, DEFAULTS.TALLY_SHUTDOWN_TIMEOUT_MS),
  requestTimeoutMs: intIn("TALLY_REQUEST_TIMEOUT_MS", 100, 600_000, DEFAULTS.TALLY_REQUEST_TIMEOUT_MS),
  reservationShedLagMs: intIn("TALLY_RESERVATION_SHED_LAG_MS", 0, 600_000, DEFAULTS.TALLY_RESERVATION_SHED_LAG_MS),
  workerProcess: Config.literal("separate", "inline")("TALLY_WORKER_PROCESS").pipe(Config.withDefault(DEFAULTS.TALLY_WORKER_PROCESS)),
  anchorIntervalMs: intIn("TALLY_ANCHOR_INTERVAL_MS", 100, 24 * 3600 * 1000, DEFAULTS.TALLY_ANCHOR_INTERVAL_MS),
  natsUser: Config.option(Config.string("TALLY_NATS_USER")),
  natsPassword: Config.option(Config.string("TALLY_NATS_PASSWORD")),
  natsToken: Config.option(Config.string("TALLY_NATS_TOKEN")),
  natsNkeySeedFile: Config.option(Config.string("TALLY_NATS_NKEY_SEED_FILE")),
  natsCredsFile: Config.option(Config.string("TALLY_NATS_CREDS_FILE")),
  natsCaFile: Config.option(Config.string("TALLY_NATS_CA_FILE")),
  natsCertFile: Config.option(Config.string("TALLY_NATS_CERT_FILE")),
  natsKeyFile: Config.option(Config.string("TALLY_NATS_KEY_FILE")),
  corsOrigins: Config.option(
    Config.string("TALLY_CORS_ORIGINS").pipe(
      Config.validate({
        message:
          "TALLY_CORS_ORIGINS: expected comma-separated origins like https://shop.example or http://localhost:3000 (scheme, host, optional port; no path)",
        validation: (s) => s.split(",").every((o) => ORIGIN.test(o.trim())),
      }),
    ),
  ),
  retention: retentionConfig,
  streamTokenSecret: Config.option(
    Config.string("TALLY_STREAM_TOKEN_SECRET").pipe(
      Config.validate({
        message: "TALLY_STREAM_TOKEN_SECRET: expected at least 32 characters (e.g. openssl rand -hex 32)",
        validation: (s) => s.length >= 32,
      }),
    ),
  ),
});

/** Decodes the settings from `env` (default `process.env`); throws a SettingsError naming the bad setting. */
export function loadSettings(env: Record<string, string | undefined> = process.env): Settings {
  const map = new Map<string, string>();
  for (const [k, v] of Object.entries(env)) if (v !== undefined && v !== "") map.set(k, v);
  const result = Effect.runSync(Effect.either(settingsConfig).pipe(Effect.withConfigProvider(ConfigProvider.fromMap(map))));
  if (Either.isLeft(result)) throw new SettingsError(formatConfigError(result.left));
  const s = result.right;
  return {
    env: s.env,
    databaseUrl: Option.getOrUndefined(s.databaseUrl),
    natsUrl: s.natsUrl,
    natsReplicas: s.natsReplicas,
    partitions: s.partitions,
    duplicateWindowMs: s.duplicateWindowSeconds * 1000,
    leaseTtlMs: s.leaseTtlMs,
    httpPort: s.httpPort,
    configFile: s.configFile,
    maxActors: s.maxActors,
    batchMax: s.batchMax,
    applyConcurrency: s.applyConcurrency,
    httpHost: s.httpHost,
    metricsPort: s.metricsPort,
    metricsHost: s.metricsHost,
    apiTokens: Option.getOrUndefined(s.apiTokens),
    apiTokensFile: Option.getOrUndefined(s.apiTokensFile),
    apiRateLimit: s.apiRateLimit,
    shutdownTimeoutMs: s.shutdownTimeoutMs,
    requestTimeoutMs: s.requestTimeoutMs,
    reservationShedLagMs: s.reservationShedLagMs,
    workerProcess: s.workerProcess,
    anchorIntervalMs: s.anchorIntervalMs,
    natsAccess: natsAccess(s),
    corsOrigins: Option.match(s.corsOrigins, {
      onNone: () => [],
      onSome: (text) => text.split(",").map((o) => o.trim().toLowerCase()),
    }),
    streamTokenSecret: Option.getOrUndefined(s.streamTokenSecret),
    retention: retention(s),
  };
}

/** The retention settings in milliseconds, refusing a commands stream that would forget a command before its duplicate window ends. */
function retention(s: Decoded): RetentionSettings {
  const r = s.retention;
  if (r.commandsMaxAgeSeconds < s.duplicateWindowSeconds)
    throw new SettingsError(
      `invalid settings: TALLY_COMMANDS_MAX_AGE_SECONDS: ${r.commandsMaxAgeSeconds} is shorter than TALLY_DUPLICATE_WINDOW_SECONDS (${s.duplicateWindowSeconds}); the commands stream must keep a command at least as long as it de-duplicates it`,
    );
  return {
    commandsMaxAgeMs: r.commandsMaxAgeSeconds * 1000,
    eventsMaxAgeMs: r.eventsMaxAgeSeconds * 1000,
    availabilityMaxAgeMs: r.availabilityMaxAgeSeconds * 1000,
    dlqMaxAgeMs: r.dlqMaxAgeSeconds * 1000,
    dlqMaxBytes: r.dlqMaxBytes,
    posClaimRetentionMs: r.posClaimRetentionSeconds * 1000,
    reservationRetentionMs: r.reservationRetentionSeconds * 1000,
    outcomesArchiveRetentionMs: r.outcomesArchiveRetentionSeconds * 1000,
    catalogMaxAgeMs: r.catalogMaxAgeSeconds * 1000,
    catalogHistoryRetentionMs: r.catalogHistoryRetentionSeconds * 1000,
    pruneIntervalMs: r.pruneIntervalMs,
    pruneBatch: r.pruneBatch,
  };
}

type Decoded = Config.Config.Success<typeof settingsConfig>;

/** The NATS credentials of the settings and the URL, refusing two ways to authenticate at once. */
function natsAccess(s: Decoded): NatsAccess {
  const fromUrl = urlCredentials(s.natsUrl);
  const user = Option.getOrUndefined(s.natsUser) ?? fromUrl.user;
  const password = Option.getOrUndefined(s.natsPassword) ?? fromUrl.password;
  const token = Option.getOrUndefined(s.natsToken) ?? fromUrl.token;
  const nkeySeedFile = Option.getOrUndefined(s.natsNkeySeedFile);
  const credsFile = Option.getOrUndefined(s.natsCredsFile);
  const ways = [
    user !== undefined ? "TALLY_NATS_USER" : undefined,
    token !== undefined ? "TALLY_NATS_TOKEN" : undefined,
    nkeySeedFile !== undefined ? "TALLY_NATS_NKEY_SEED_FILE" : undefined,
    credsFile !== undefined ? "TALLY_NATS_CREDS_FILE" : undefined,
  ].filter((w) => w !== undefined);
  if (ways.length > 1) throw new SettingsError(`invalid settings: ${ways.join(", ")}: set one way to authenticate to NATS, not ${ways.length}`);
  if (password !== undefined && user === undefined) throw new SettingsError("invalid settings: TALLY_NATS_PASSWORD: is set without TALLY_NATS_USER");
  const certFile = Option.getOrUndefined(s.natsCertFile);
  const keyFile = Option.getOrUndefined(s.natsKeyFile);
  if ((certFile === undefined) !== (keyFile === undefined))
    throw new SettingsError("invalid settings: TALLY_NATS_CERT_FILE, TALLY_NATS_KEY_FILE: set both or neither");
  const entries = { user, password, token, nkeySeedFile, credsFile, caFile: Option.getOrUndefined(s.natsCaFile), certFile, keyFile };
  return Object.fromEntries(Object.entries(entries).filter(([, v]) => v !== undefined)) as NatsAccess;
}

/**
 * The credentials in the first of the comma-separated NATS URLs that has them: `user:pass@`, or a
 * token alone (`nats://token@host`, as other NATS clients read it).
 */
export function urlCredentials(urls: string): { user?: string; password?: string; token?: string } {
  for (const u of urls.split(",")) {
    const m = /^[a-z]+:\/\/([^@/]*)@/i.exec(u.trim());
    if (m === null) continue;
    const [user, ...rest] = m[1]!.split(":");
    if (rest.length === 0) return user ? { token: decodeURIComponent(user) } : {};
    const password = rest.join(":");
    return {
      ...(user ? { user: decodeURIComponent(user) } : {}),
      password: decodeURIComponent(password),
    };
  }
  return {};
}

/** `TALLY_DATABASE_URL`, or a SettingsError saying it is needed. */
export function requireDatabaseUrl(settings: Settings): string {
  if (settings.databaseUrl === undefined) throw new SettingsError("TALLY_DATABASE_URL: is not set (e.g. postgres://user@host:5432/tally)");
  return settings.databaseUrl;
}

function formatConfigError(error: ConfigError.ConfigError): string {
  const lines: Array<string> = [];
  const walk = (e: ConfigError.ConfigError): void => {
    switch (e._op) {
      case "And":
      case "Or":
        walk(e.left);
        walk(e.right);
        return;
      case "InvalidData":
      case "MissingData":
      case "SourceUnavailable":
      case "Unsupported": {
        // Config.validate messages already name their setting; decode errors carry it in the path.
        const name = e.path.join(".");
        lines.push(name === "" || e.message.startsWith(`${name}:`) ? e.message : `${name}: ${e.message}`);
        return;
      }
      default: {
        const never: never = e;
        lines.push(String(never));
      }
    }
  };
  walk(error);
  return `invalid settings: ${lines.join("; ")}`;
}
