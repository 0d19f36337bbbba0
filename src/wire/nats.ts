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
import { Kvm, type KV } from "@nats-io/kv";
import { SettingsError, urlCredentials, type NatsAccess } from "../platform/index.ts";
import type { PartitionLayout, Topology } from "./topology.ts";

const nanos = (ms: number): number => ms * 1_000_000;
const DAY_MS = 24 * 3600 * 1000;

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
}

/** Creates (or updates) the streams and KV buckets of one environment; idempotent. */
export async function ensureTopology(nc: NatsConnection, t: Topology, opts: TopologyOptions): Promise<NatsHandles> {
  const jsm = await jetstreamManager(nc);
  const js = jetstream(nc);
  // Every stream: file storage, limits retention, the configured de-duplication window; 0 = kept forever.
  const stream = (name: string, subject: string, maxAgeMs: number, more: Partial<StreamConfig> = {}) => ({
    name,
    subjects: [subject],
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
    duplicate_window: nanos(opts.duplicateWindowMs),
    max_age: nanos(maxAgeMs),
    ...more,
  });
  // A resized layout (`tally partitions resize`) lives in the commands stream's subjects: kept as they are.
  const layout = await loadLayout(jsm, t);
  await ensureStream(jsm, {
    ...stream(t.commandsStream, t.commandSubjects, 7 * DAY_MS, { discard: DiscardPolicy.Old }),
    subjects: t.commandStreamSubjects(layout ?? t.layout),
  });
  await ensureStream(jsm, stream(t.dlqStream, t.dlqSubjects, 0));
  await ensureStream(jsm, stream(t.eventsStream, t.eventSubjects, 30 * DAY_MS));
  await ensureStream(jsm, stream(t.availabilityStream, t.availabilitySubjects(), DAY_MS));
  // The chain's external witness: no client may delete or purge it through the JetStream API.
  await ensureStream(jsm, stream(t.anchorsStream, t.anchorsSubject, 0, { deny_delete: true, deny_purge: true }));
  const kvm = new Kvm(js);
  const leases = await kvm.create(t.leasesBucket, { history: 1, ttl: opts.leaseTtlMs, storage: StorageType.File });
  const availability = await kvm.create(t.availabilityBucket, { history: 1, storage: StorageType.File });
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

async function ensureStream(jsm: JetStreamManager, config: Partial<StreamConfig> & { name: string }): Promise<void> {
  try {
    const info = await jsm.streams.info(config.name);
    const current = info.config;
    const changed = (Object.keys(config) as Array<keyof StreamConfig>).some((k) => JSON.stringify(current[k]) !== JSON.stringify(config[k]));
    if (changed) await jsm.streams.update(config.name, { ...current, ...config });
  } catch (error) {
    if (!isNotFound(error)) throw error;
    await jsm.streams.add(config);
  }
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
