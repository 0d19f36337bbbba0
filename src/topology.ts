/** Every NATS name Tally uses, derived from the environment so environments never collide. */
export interface Topology {
  readonly env: string;
  readonly partitions: number;
  readonly commandsStream: string;
  readonly dlqStream: string;
  readonly eventsStream: string;
  readonly availabilityStream: string;
  /** Hash-chain heads published outside the database (`tally.<env>.anchors`), never deleted. */
  readonly anchorsStream: string;
  readonly anchorsSubject: string;
  readonly leasesBucket: string;
  readonly availabilityBucket: string;
  commandSubject(partition: number): string;
  readonly commandSubjects: string;
  dlqSubject(origin: string): string;
  eventSubject(type: string): string;
  availabilitySubject(channel: string, sku: string): string;
  availabilityKey(channel: string, sku: string): string;
  partitionOf(sku: string): number;
}

export function topology(env: string, partitions: number): Topology {
  const upper = env.toUpperCase();
  return {
    env,
    partitions,
    commandsStream: `TALLY_${upper}_COMMANDS`,
    dlqStream: `TALLY_${upper}_DLQ`,
    eventsStream: `TALLY_${upper}_EVENTS`,
    availabilityStream: `TALLY_${upper}_AVAILABILITY`,
    anchorsStream: `TALLY_${upper}_ANCHORS`,
    anchorsSubject: `tally.${env}.anchors`,
    leasesBucket: `tally_${env}_leases`,
    availabilityBucket: `tally_${env}_availability`,
    commandSubject: (p) => `tally.${env}.cmd.${p}`,
    commandSubjects: `tally.${env}.cmd.*`,
    dlqSubject: (origin) => `tally.${env}.dlq.${origin}`,
    eventSubject: (type) => `tally.${env}.events.${type}`,
    availabilitySubject: (channel, sku) => `tally.${env}.availability.${channel}.${sku}`,
    availabilityKey: (channel, sku) => `${channel}.${sku}`,
    partitionOf: (sku) => partitionOf(sku, partitions),
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
