/** Every NATS name Tally uses, derived from the environment so environments never collide. */
/**
 * How SKUs are split into partitions: generation 0 is the environment's initial `TALLY_PARTITIONS`;
 * each `tally partitions resize` makes the next generation. A generation's command subjects name it,
 * so a message published under one layout can never be read as another's.
 */
export interface PartitionLayout {
  readonly generation: number;
  readonly partitions: number;
}

export interface Topology {
  readonly env: string;
  /** The partition count of the current layout (`layout.partitions`). */
  readonly partitions: number;
  /** The layout commands are published under (kept current by `loadLayout`, src/wire/nats.ts). */
  readonly layout: PartitionLayout;
  /** The count the environment started with (`TALLY_PARTITIONS`): generation 0's. */
  readonly basePartitions: number;
  /** Switches the layout this topology publishes under (the commands stream's subjects say which is current). */
  setLayout(layout: PartitionLayout): void;
  /** A topology fixed at `layout` (a partition runner applies one layout only). */
  withLayout(layout: PartitionLayout): Topology;
  /** The commands stream's subjects for `layout`: the wildcard for generation 0, one subject per partition after. */
  commandStreamSubjects(layout: PartitionLayout): Array<string>;
  /** The layout the commands stream's subjects stand for (null: not this environment's command subjects). */
  layoutOfStreamSubjects(subjects: ReadonlyArray<string>): PartitionLayout | null;
  readonly commandsStream: string;
  readonly dlqStream: string;
  readonly eventsStream: string;
  readonly availabilityStream: string;
  /** Hash-chain heads published outside the database (`tally.<env>.anchors`), never deleted. */
  readonly anchorsStream: string;
  readonly anchorsSubject: string;
  readonly leasesBucket: string;
  /** The JetStream stream that backs the leases bucket (`KV_<bucket>`). */
  readonly leasesBucketStream: string;
  readonly availabilityBucket: string;
  /** Lease keys (in the leases bucket): a partition's, a worker's membership, the relay's, a webhook sender's. */
  partitionLeaseKey(partition: number): string;
  workerMemberKey(workerId: string): string;
  /** The prefix every worker's membership key has (`workerMemberKey`), to count live workers. */
  readonly workerMembers: string;
  readonly relayLeaseKey: string;
  webhookLeaseKey(channel: string): string;
  /** Durable consumer names: a partition's (on the commands stream) and a webhook sender's (on the availability stream) start with these. */
  partitionConsumerPrefix(partition: number): string;
  webhookConsumerPrefix(channel: string): string;
  commandSubject(partition: number): string;
  readonly commandSubjects: string;
  dlqSubject(origin: string): string;
  /** Every dead-letter subject (the DLQ stream's subjects, a filter for all origins). */
  readonly dlqSubjects: string;
  eventSubject(type: string): string;
  /** Every event subject. */
  readonly eventSubjects: string;
  availabilitySubject(channel: string, sku: string): string;
  /** Every availability subject: of all channels, or of one channel (one token per SKU: `.*`). */
  availabilitySubjects(channel?: string): string;
  availabilityKey(channel: string, sku: string): string;
  /** The SKU of an availability subject of `channel` (null: the subject is not one of that channel's). */
  skuOfAvailabilitySubject(channel: string, subject: string): string | null;
  /** The subject a POS terminal publishes to for `store` (default: a filter for every store). */
  posSubject(store?: string): string;
  /** The store of a POS subject (null: not a POS subject). */
  storeOfPosSubject(subject: string): string | null;
  /** The queue group POS subscribers share (each terminal message is handled once). */
  readonly posQueue: string;
  /** Core NATS: what a worker reports after each committed batch, and the relay after each round. */
  readonly outcomesSubject: string;
  readonly relaySubject: string;
  partitionOf(sku: string): number;
  /** The catalog: a KV bucket of each channel's projection of each item (key `<channel>.<sku>`), and a subject per change. */
  readonly catalogBucket: string;
  readonly catalogStream: string;
  catalogKey(channel: string, sku: string): string;
  catalogSubject(channel: string, sku: string): string;
  /** Every catalog subject: of all channels, or of one channel. */
  catalogSubjects(channel?: string): string;
  /** Where a channel acknowledges the catalog version it applied (core NATS request, `{version}`), and the API's queue group on them. */
  catalogAckSubject(channel?: string): string;
  channelOfCatalogAckSubject(subject: string): string | null;
  readonly catalogAckQueue: string;
  /** The channel's SKU a catalog subject names (null: not one of that channel's). */
  skuOfCatalogSubject(channel: string, subject: string): string | null;
}

/**
 * Makes any string one NATS subject token and a valid KV key part: `[A-Za-z0-9_-]` stay as they are;
 * every other character — `.`, `*`, `>`, space, `/`, `:`, `=`, non-ASCII … — becomes `=XX` per
 * UTF-8 byte (upper-case hex). `AUD.IT.1` → `AUD=2EIT=2E1`, `Bröd 1kg` → `Br=C3=B6d=201kg`.
 * Reversible (`decodeToken`) and one-to-one, so a channel developer can build a subject or key for a
 * SKU, and read the SKU back from one. The empty string is `=`, which no other token encodes to.
 */
export function encodeToken(value: string): string {
  if (value === "") return "=";
  if (PLAIN.test(value)) return value;
  let out = "";
  for (const ch of value) {
    if (PLAIN_CHAR.test(ch)) out += ch;
    else for (const byte of Buffer.from(ch, "utf8")) out += `=${byte.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}

/** The inverse of `encodeToken`; null for a string it never produces. */
export function decodeToken(token: string): string | null {
  if (token === "=") return "";
  if (PLAIN.test(token)) return token;
  if (!/^(?:[A-Za-z0-9_-]|=[0-9A-F]{2})+$/.test(token)) return null;
  const bytes: Array<number> = [];
  for (let i = 0; i < token.length; ) {
    if (token[i] === "=") {
      bytes.push(Number.parseInt(token.slice(i + 1, i + 3), 16));
      i += 3;
    } else bytes.push(token.charCodeAt(i++));
  }
  const text = Buffer.from(bytes).toString("utf8");
  return encodeToken(text) === token ? text : null;
}

const PLAIN = /^[A-Za-z0-9_-]+$/;
const PLAIN_CHAR = /^[A-Za-z0-9_-]$/;

/** Core NATS: a worker's outcomes after each committed batch (also `Topology.outcomesSubject`). */
export const outcomesSubject = (env: string): string => `tally.${env}.outcomes`;
/** A channel's availability of a SKU in the availability bucket (also `Topology.availabilityKey`; no environment in it: the bucket has it). */
export const availabilityKey = (channel: string, sku: string): string => `${encodeToken(channel)}.${encodeToken(sku)}`;

/** The relay's lease key: one relay per environment (also `Topology.relayLeaseKey`). */
export const RELAY_LEASE_KEY = "relay";
/** Core NATS: the relay's latency report after each round (also `Topology.relaySubject`). */
export const relaySubject = (env: string): string => `tally.${env}.relay`;

export function topology(env: string, partitions: number, fixed?: PartitionLayout): Topology {
  let layout: PartitionLayout = fixed ?? { generation: 0, partitions };
  const subjectOf = (l: PartitionLayout, p: number) =>
    l.generation === 0 ? `tally.${env}.cmd.${p}` : `tally.${env}.cmd.g${l.generation}n${l.partitions}p${p}`;
  const layoutSubject = new RegExp(`^tally\\.${env.replace(/[^A-Za-z0-9]/g, "\\$&")}\\.cmd\\.g(\\d+)n(\\d+)p\\d+$`);
  const upper = env.toUpperCase();
  const t = encodeToken;
  const availabilityPrefix = (channel: string) => `tally.${env}.availability.${t(channel)}.`;
  const posPrefix = `tally.${env}.pos.`;
  // Not under `tally.<env>.catalog.`: the catalog stream keeps every subject there.
  const catalogAckPrefix = `tally.${env}.catalog-ack.`;
  return {
    env,
    get partitions() {
      return layout.partitions;
    },
    get layout() {
      return layout;
    },
    basePartitions: partitions,
    setLayout: (l) => {
      if (fixed) throw new Error("a topology fixed at one layout cannot switch");
      layout = l;
    },
    withLayout: (l) => topology(env, partitions, l),
    commandStreamSubjects: (l) => (l.generation === 0 ? [`tally.${env}.cmd.*`] : Array.from({ length: l.partitions }, (_, p) => subjectOf(l, p))),
    layoutOfStreamSubjects: (subjects) => {
      if (subjects.length === 1 && subjects[0] === `tally.${env}.cmd.*`) return { generation: 0, partitions };
      const m = subjects.length > 0 ? layoutSubject.exec(subjects[0]!) : null;
      return m ? { generation: Number(m[1]), partitions: Number(m[2]) } : null;
    },
    commandsStream: `TALLY_${upper}_COMMANDS`,
    dlqStream: `TALLY_${upper}_DLQ`,
    eventsStream: `TALLY_${upper}_EVENTS`,
    availabilityStream: `TALLY_${upper}_AVAILABILITY`,
    anchorsStream: `TALLY_${upper}_ANCHORS`,
    anchorsSubject: `tally.${env}.anchors`,
    leasesBucket: `tally_${env}_leases`,
    leasesBucketStream: `KV_tally_${env}_leases`,
    availabilityBucket: `tally_${env}_availability`,
    partitionLeaseKey: (p) => `partition.${p}`,
    workerMemberKey: (id) => `worker.${id}`,
    workerMembers: "worker",
    relayLeaseKey: RELAY_LEASE_KEY,
    webhookLeaseKey: (channel) => `webhook.${channel}`,
    partitionConsumerPrefix: (p) => `p${p}_`,
    webhookConsumerPrefix: (channel) => `webhook_${channel.replace(/[^A-Za-z0-9_-]/g, "_")}_`,
    commandSubject: (p) => subjectOf(layout, p),
    commandSubjects: `tally.${env}.cmd.*`,
    dlqSubject: (origin) => `tally.${env}.dlq.${t(origin)}`,
    dlqSubjects: `tally.${env}.dlq.>`,
    eventSubject: (type) => `tally.${env}.events.${t(type)}`,
    eventSubjects: `tally.${env}.events.>`,
    availabilitySubject: (channel, sku) => `${availabilityPrefix(channel)}${t(sku)}`,
    availabilitySubjects: (channel) => (channel === undefined ? `tally.${env}.availability.>` : `${availabilityPrefix(channel)}*`),
    availabilityKey,
    skuOfAvailabilitySubject: (channel, subject) => {
      const prefix = availabilityPrefix(channel);
      return subject.startsWith(prefix) ? decodeToken(subject.slice(prefix.length)) : null;
    },
    posSubject: (store) => `${posPrefix}${store === undefined ? "*" : t(store)}`,
    storeOfPosSubject: (subject) => (subject.startsWith(posPrefix) ? decodeToken(subject.slice(posPrefix.length)) : null),
    posQueue: `tally_${env}_pos`,
    outcomesSubject: outcomesSubject(env),
    relaySubject: relaySubject(env),
    partitionOf: (sku) => partitionOf(sku, layout.partitions),
    catalogBucket: `tally_${env}_catalog`,
    catalogStream: `TALLY_${upper}_CATALOG`,
    catalogKey: availabilityKey,
    catalogSubject: (channel, sku) => `tally.${env}.catalog.${t(channel)}.${t(sku)}`,
    catalogSubjects: (channel) => (channel === undefined ? `tally.${env}.catalog.>` : `tally.${env}.catalog.${t(channel)}.*`),
    catalogAckSubject: (channel) => `${catalogAckPrefix}${channel === undefined ? "*" : t(channel)}`,
    channelOfCatalogAckSubject: (subject) => (subject.startsWith(catalogAckPrefix) ? decodeToken(subject.slice(catalogAckPrefix.length)) : null),
    catalogAckQueue: `tally_${env}_catalog_ack`,
    skuOfCatalogSubject: (channel, subject) => {
      const prefix = `tally.${env}.catalog.${t(channel)}.`;
      return subject.startsWith(prefix) ? decodeToken(subject.slice(prefix.length)) : null;
    },
  };
}

/**
 * The partition of a SKU: FNV-1a (32 bit) of its UTF-8 bytes, mod the partition count.
 * Stable across processes and releases: changing it would split a SKU's history across workers.
 */
export function partitionOf(sku: string, partitions: number): number {
  let h = 0x811c9dc5;
  for (const byte of Buffer.from(sku, "utf8")) {
    h ^= byte;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h % partitions;
}
