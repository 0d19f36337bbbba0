import { readFileSync } from "node:fs";
import { connect, credsAuthenticator, nkeyAuthenticator, type ConnectionOptions, type NatsConnection } from "@nats-io/transport-node";
import {
  jetstream,
  jetstreamManager,
  type JetStreamClient,
  type JetStreamManager,
  type StreamConfig,
  RetentionPolicy,
  StorageType,
  DiscardPolicy,
} from "@nats-io/jetstream";
import { Kvm, type KV, type KvOptions } from "@nats-io/kv";
import { DEFAULTS, SettingsError, urlCredentials, type NatsAccess, type RetentionSettings } from "../platform/index.ts";
import type { PartitionLayout, Topology } from "./topology.ts";

const nanos = (ms: number): number => ms * 1_000_000;

/**
 * Connects to NATS with reconnects forever (callers see outages as failed publishes, not a dead
 * client), authenticating as `access` says (or as the URL's `user:pass@`).
 */
export async function connectNats(url: string, name = "tally", access: NatsAccess = {}): Promise<NatsConnection> {
  return connect({
    servers: url.split(",").map(withoutCredentials),
    name,
    // nats.js spends about half of each publish building async stack traces; measured +60% publish rate without.
    noAsyncTraces: true,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
    pingInterval: 5_000,
    ...natsConnectOptions(url, access),
  });
}

/** The nats.js options for one way to authenticate and for TLS; files are read now, so a missing one fails at start. */
export function natsConnectOptions(url: string, access: NatsAccess): Partial<ConnectionOptions> {
  const fromUrl = urlCredentials(url);
  const user = access.user ?? fromUrl.user;
  const pass = access.password ?? fromUrl.password;
  const token = access.token ?? fromUrl.token;
  const auth: Partial<ConnectionOptions> =
    access.credsFile !== undefined
      ? { authenticator: credsAuthenticator(readSetting("TALLY_NATS_CREDS_FILE", access.credsFile)) }
      : access.nkeySeedFile !== undefined
        ? {
            authenticator: nkeyAuthenticator(
              new TextEncoder().encode(readSetting("TALLY_NATS_NKEY_SEED_FILE", access.nkeySeedFile).toString("utf8").trim()),
            ),
          }
        : user !== undefined
          ? { user, ...(pass !== undefined ? { pass } : {}) }
          : token !== undefined
            ? { token }
            : {};
  const tls =
    access.caFile !== undefined || access.certFile !== undefined
      ? {
          tls: {
            ...(access.caFile !== undefined ? { ca: readSetting("TALLY_NATS_CA_FILE", access.caFile).toString("utf8") } : {}),
            ...(access.certFile !== undefined ? { cert: readSetting("TALLY_NATS_CERT_FILE", access.certFile).toString("utf8") } : {}),
            ...(access.keyFile !== undefined ? { key: readSetting("TALLY_NATS_KEY_FILE", access.keyFile).toString("utf8") } : {}),
          },
        }
      : url.split(",").some((u) => u.trim().startsWith("tls://"))
        ? { tls: {} }
        : {};
  return { ...auth, ...tls };
}

/** `nats://user:pass@host:4222` → `nats://host:4222`: nats.js ignores URL credentials, and they must not reach its logs. */
function withoutCredentials(url: string): string {
  return url.trim().replace(/^([a-z]+:\/\/)[^@/]*@/i, "$1");
}

function readSetting(setting: string, file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (error) {
    throw new SettingsError(`${setting}: cannot read ${file} (${(error as Error).message})`, { cause: error });
  }
}

export interface NatsHandles {
  readonly nc: NatsConnection;
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  readonly leases: KV;
  readonly availability: KV;
}

export interface TopologyOptions {
  readonly duplicateWindowMs: number;
  readonly leaseTtlMs: number;
  /** `TALLY_NATS_REPLICAS`: replicas of every stream and bucket (default 1). */
  readonly replicas?: number;
  /** Where a stream left with fewer replicas than configured is reported (default: a process warning on stderr). */
  readonly warn?: (message: string, detail: UnderReplicated) => void;
  /** The growing streams' limits (`Settings.retention`); default: the settings' defaults. */
  readonly retention?: StreamRetention;
}

/** The topology options of a process's settings. */
export const topologyOptions = (
  settings: {
    readonly duplicateWindowMs: number;
    readonly leaseTtlMs: number;
    readonly natsReplicas: number;
    readonly retention?: StreamRetention;
  },
  warn?: TopologyOptions["warn"],
): TopologyOptions => ({
  duplicateWindowMs: settings.duplicateWindowMs,
  leaseTtlMs: settings.leaseTtlMs,
  replicas: settings.natsReplicas,
  ...(settings.retention !== undefined ? { retention: settings.retention } : {}),
  ...(warn !== undefined ? { warn } : {}),
});

/** A stream (or a KV bucket's stream) found at start with fewer replicas than configured. */
export interface UnderReplicated {
  readonly stream: string;
  /** Its replicas as found. */
  readonly replicas: number;
  readonly configured: number;
  /** True: raised to `configured` in place. False: raising failed (`error`), it runs with `replicas` until `fix` is done. */
  readonly raised: boolean;
  readonly error?: string;
  /** The operator's fix, a nats CLI command. */
  readonly fix?: string;
}

/** The JetStream limits of the streams that grow (see `streamLimits`). */
export type StreamRetention = Pick<RetentionSettings, "commandsMaxAgeMs" | "eventsMaxAgeMs" | "availabilityMaxAgeMs" | "dlqMaxBytes">;

const DEFAULT_RETENTION: StreamRetention = {
  commandsMaxAgeMs: DEFAULTS.TALLY_COMMANDS_MAX_AGE_SECONDS * 1000,
  eventsMaxAgeMs: DEFAULTS.TALLY_EVENTS_MAX_AGE_SECONDS * 1000,
  availabilityMaxAgeMs: DEFAULTS.TALLY_AVAILABILITY_MAX_AGE_SECONDS * 1000,
  dlqMaxBytes: DEFAULTS.TALLY_DLQ_MAX_BYTES,
};

/**
 * The limits each growing stream is created (or updated) with. The dead-letter stream has no max age
 * and no byte limit: JetStream drops by age or size silently, so the worker role's pruner expires dead
 * letters itself (logging and counting each) past TALLY_DLQ_MAX_AGE_SECONDS or while the stream holds
 * more than TALLY_DLQ_MAX_BYTES. (A JetStream byte cap would also reserve that much of the server's
 * store up front for every environment, used or not.)
 */
export function streamLimits(opts: TopologyOptions): {
  readonly commands: Partial<StreamConfig>;
  readonly events: Partial<StreamConfig>;
  readonly availability: Partial<StreamConfig>;
  readonly dlq: Partial<StreamConfig>;
} {
  const r = opts.retention ?? DEFAULT_RETENTION;
  // JetStream refuses a de-duplication window longer than the stream's max age: a shorter stream de-duplicates over its age.
  const dedupeWithin = (maxAgeMs: number) => (maxAgeMs < opts.duplicateWindowMs ? { duplicate_window: nanos(maxAgeMs) } : {});
  if (r.commandsMaxAgeMs < opts.duplicateWindowMs)
    throw new SettingsError(
      `TALLY_COMMANDS_MAX_AGE_SECONDS: ${r.commandsMaxAgeMs / 1000} is shorter than TALLY_DUPLICATE_WINDOW_SECONDS (${opts.duplicateWindowMs / 1000}); the commands stream must keep a command at least as long as it de-duplicates it`,
    );
  return {
    commands: { max_age: nanos(r.commandsMaxAgeMs), discard: DiscardPolicy.Old },
    events: { max_age: nanos(r.eventsMaxAgeMs), ...dedupeWithin(r.eventsMaxAgeMs) },
    availability: { max_age: nanos(r.availabilityMaxAgeMs), ...dedupeWithin(r.availabilityMaxAgeMs) },
    dlq: { max_age: 0, max_bytes: -1, discard: DiscardPolicy.Old },
  };
}

/** A stream or bucket could not be created with the configured replicas (more than the servers, or one server that is not clustered). */
export class ReplicasError extends Error {
  override readonly name = "ReplicasError";
}

/** Creates (or updates) the streams and KV buckets of one environment; idempotent. */
export async function ensureTopology(nc: NatsConnection, t: Topology, opts: TopologyOptions): Promise<NatsHandles> {
  const jsm = await jetstreamManager(nc);
  const js = jetstream(nc);
  // Every stream: file storage, limits retention, the configured de-duplication window; 0 = kept forever.
  const replicas = opts.replicas ?? 1;
  const check = { replicas, clustered: isClustered(nc), warn: opts.warn ?? defaultWarn };
  const stream = (name: string, subject: string, maxAgeMs: number, more: Partial<StreamConfig> = {}) => ({
    name,
    subjects: [subject],
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
    duplicate_window: nanos(opts.duplicateWindowMs),
    max_age: nanos(maxAgeMs),
    ...more,
  });
  const limits = streamLimits(opts);
  // A resized layout (`tally partitions resize`) lives in the commands stream's subjects: an existing
  // stream's are kept as they are (never written back from an earlier read: a resize's cut may come
  // between), a new stream takes the first layout's.
  await ensureStream(
    jsm,
    { ...stream(t.commandsStream, t.commandSubjects, 0, limits.commands), subjects: t.commandStreamSubjects(t.layout) },
    check,
    ["subjects"],
  );
  await loadLayout(jsm, t);
  await ensureStream(jsm, stream(t.dlqStream, t.dlqSubjects, 0, limits.dlq), check);
  await ensureStream(jsm, stream(t.eventsStream, t.eventSubjects, 0, limits.events), check);
  await ensureStream(jsm, stream(t.availabilityStream, t.availabilitySubjects(), 0, limits.availability), check);
  // The chain's external witness: no client may delete or purge it through the JetStream API.
  await ensureStream(jsm, stream(t.anchorsStream, t.anchorsSubject, 0, { deny_delete: true, deny_purge: true }), check);
  const leases = await ensureBucket(js, jsm, t.leasesBucket, { history: 1, ttl: opts.leaseTtlMs, storage: StorageType.File }, check);
  const availability = await ensureBucket(js, jsm, t.availabilityBucket, { history: 1, storage: StorageType.File }, check);
  return { nc, js, jsm, leases, availability };
}

/**
 * Sets `t`'s layout to the one the commands stream's subjects stand for (the stream only takes
 * commands published under its current layout); null when the stream does not exist yet.
 */
export async function loadLayout(jsm: JetStreamManager, t: Topology): Promise<PartitionLayout | null> {
  const info = await jsm.streams.info(t.commandsStream).catch((error: unknown) => {
    if (isNotFound(error)) return null;
    throw error;
  });
  const layout = info ? t.layoutOfStreamSubjects(info.config.subjects ?? []) : null;
  if (layout) t.setLayout(layout);
  return layout;
}

/** How a stream's replicas are checked at start: the configured number, and where one left below it is reported. */
export interface ReplicaCheck {
  readonly replicas: number;
  /** False: the server Tally is connected to is not clustered (its INFO names no cluster), so it keeps one copy of everything. */
  readonly clustered?: boolean;
  readonly warn: (message: string, detail: UnderReplicated) => void;
}

const defaultWarn = (message: string): void => process.emitWarning(message, "TallyUnderReplicated");

/**
 * Creates a stream with the configured replicas, or brings an existing one to `config` (keeping its
 * replicas, raised when fewer than configured: JetStream scales a clustered stream up in place; it
 * never lowers them, which would drop copies). A create that cannot have the replicas fails with a
 * ReplicasError naming TALLY_NATS_REPLICAS; a raise that fails is reported to `check.warn` with the fix.
 */
export async function ensureStream(
  jsm: JetStreamManager,
  config: Partial<StreamConfig> & { name: string },
  check: ReplicaCheck,
  /** Settings of an existing stream that are kept as found (`config`'s are for creating it). */
  keep: ReadonlyArray<keyof StreamConfig> = [],
): Promise<void> {
  let current: StreamConfig;
  try {
    current = (await jsm.streams.info(config.name)).config;
  } catch (error) {
    if (!isNotFound(error)) throw error;
    try {
      await jsm.streams.add({ ...config, num_replicas: check.replicas });
    } catch (addError) {
      throw replicasError(config.name, check.replicas, addError);
    }
    return;
  }
  const wanted = Object.fromEntries(Object.entries(config).filter(([k]) => !keep.includes(k as keyof StreamConfig))) as Partial<StreamConfig>;
  const changed = (Object.keys(wanted) as Array<keyof StreamConfig>).some((k) => JSON.stringify(current[k]) !== JSON.stringify(wanted[k]));
  if (changed) await jsm.streams.update(config.name, { ...current, ...wanted });
  await raiseReplicas(jsm, config.name, check, copies(check, current.num_replicas));
}

/** Whether the server `nc` is connected to is part of a cluster (its INFO names one). */
export const isClustered = (nc: NatsConnection): boolean => nc.info?.cluster !== undefined && nc.info.cluster !== "";

/** How many copies a stream has: what its config says, or one on a server that is not clustered (which records any number). */
const copies = (check: ReplicaCheck, replicas: number | undefined): number => (check.clustered === false ? 1 : (replicas ?? 1));

/**
 * Opens (creating with the configured replicas) a KV bucket and checks its stream's replicas like
 * ensureStream's (opening an existing bucket changes nothing of it).
 */
export async function ensureBucket(
  js: JetStreamClient,
  jsm: JetStreamManager,
  bucket: string,
  opts: Partial<KvOptions>,
  check: ReplicaCheck,
): Promise<KV> {
  let kv: KV;
  try {
    kv = await new Kvm(js).create(bucket, { ...opts, replicas: check.replicas });
  } catch (error) {
    throw replicasError(`KV_${bucket}`, check.replicas, error);
  }
  const status = await kv.status();
  await raiseReplicas(jsm, `KV_${bucket}`, check, copies(check, status.replicas));
  return kv;
}

async function raiseReplicas(jsm: JetStreamManager, name: string, check: ReplicaCheck, replicas: number): Promise<void> {
  if (replicas >= check.replicas) return;
  try {
    const { config } = await jsm.streams.info(name);
    // A server that is not clustered would accept the update, record the number and keep one copy.
    if (check.clustered === false) throw new Error("the NATS server is not part of a cluster");
    await jsm.streams.update(name, { ...config, num_replicas: check.replicas });
    check.warn(
      `NATS stream ${name} had ${replicas} replica(s), fewer than TALLY_NATS_REPLICAS=${check.replicas}: raised to ${check.replicas} in place`,
      {
        stream: name,
        replicas,
        configured: check.replicas,
        raised: true,
      },
    );
  } catch (error) {
    const fix = `nats stream edit ${name} --replicas ${check.replicas} (as the NATS admin user; with a server per replica in the cluster)`;
    const message = (error as Error).message;
    check.warn(
      `NATS stream ${name} has ${replicas} replica(s), fewer than TALLY_NATS_REPLICAS=${check.replicas}, and raising it failed (${message}): it runs with ${replicas}; fix: ${fix}`,
      { stream: name, replicas, configured: check.replicas, raised: false, error: message, fix },
    );
  }
}

function replicasError(name: string, replicas: number, error: unknown): unknown {
  if (replicas <= 1 || !/replica|cluster|insufficient resources|no suitable peers/i.test((error as Error)?.message ?? "")) return error;
  return new ReplicasError(
    `TALLY_NATS_REPLICAS=${replicas}: cannot create NATS stream ${name} with ${replicas} replicas (${(error as Error).message}); use a JetStream cluster of at least ${replicas} servers, or TALLY_NATS_REPLICAS=1 on one server`,
    { cause: error },
  );
}

export function isNotFound(error: unknown): boolean {
  const e = error as { code?: number | string; api_error?: { err_code?: number }; message?: string };
  return (
    e?.api_error?.err_code === 10059 || // stream not found
    e?.api_error?.err_code === 10014 || // consumer not found
    e?.code === 404 ||
    e?.code === "404" ||
    /not found/i.test(e?.message ?? "")
  );
}
