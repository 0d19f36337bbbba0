import { connect, type NatsConnection } from "@nats-io/transport-node";
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
import type { Topology } from "./topology.ts";

const nanos = (ms: number): number => ms * 1_000_000;
const DAY_MS = 24 * 3600 * 1000;

/** Connects to NATS with reconnects forever (callers see outages as failed publishes, not a dead client). */
export async function connectNats(url: string, name = "tally"): Promise<NatsConnection> {
  return connect({
    servers: url.split(","),
    name,
    // nats.js spends about half of each publish building async stack traces; measured +60% publish rate without.
    noAsyncTraces: true,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
    pingInterval: 5_000,
  });
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
  await ensureStream(jsm, {
    name: t.commandsStream,
    subjects: [t.commandSubjects],
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
    duplicate_window: nanos(opts.duplicateWindowMs),
    max_age: nanos(7 * DAY_MS),
    discard: DiscardPolicy.Old,
  });
  await ensureStream(jsm, {
    name: t.dlqStream,
    subjects: [t.dlqSubjects],
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
    duplicate_window: nanos(opts.duplicateWindowMs),
    max_age: 0,
  });
  await ensureStream(jsm, {
    name: t.eventsStream,
    subjects: [t.eventSubjects],
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
    duplicate_window: nanos(opts.duplicateWindowMs),
    max_age: nanos(30 * DAY_MS),
  });
  await ensureStream(jsm, {
    name: t.availabilityStream,
    subjects: [t.availabilitySubjects()],
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
    duplicate_window: nanos(opts.duplicateWindowMs),
    max_age: nanos(DAY_MS),
  });
  const kvm = new Kvm(js);
  const leases = await kvm.create(t.leasesBucket, { history: 1, ttl: opts.leaseTtlMs, storage: StorageType.File });
  const availability = await kvm.create(t.availabilityBucket, { history: 1, storage: StorageType.File });
  return { nc, js, jsm, leases, availability };
}

async function ensureStream(jsm: JetStreamManager, config: Partial<StreamConfig> & { name: string }): Promise<void> {
  try {
    const info = await jsm.streams.info(config.name);
    const current = info.config;
    const changed = (Object.keys(config) as Array<keyof StreamConfig>).some(
      (k) => JSON.stringify(current[k]) !== JSON.stringify(config[k]),
    );
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
