import { createHash } from "node:crypto";
import { appendFile, readFile } from "node:fs/promises";
import { AckPolicy, DeliverPolicy } from "@nats-io/jetstream";
import { Schema } from "effect";
import type { Logger } from "pino";
import type { Sql } from "postgres";
import { chainHeads, type Anchor } from "../../ledger/index.ts";
import { LongRunningService, backoffDelay, retry, sleep } from "../platform/index.ts";
import type { NatsHandles } from "../wire/index.ts";
import { DateTime } from "../contract/index.ts";
import type { Topology } from "../wire/index.ts";

/** How far before the previous round's read each round looks again for changed heads. */
const LOOK_BACK_MS = 60_000;

/** Heads per anchor message: well under NATS's default 1 MB payload limit. */
const HEADS_PER_MESSAGE = 2000;

/** One message on `tally.<env>.anchors`: heads read at one moment. */
export const AnchorMessage = Schema.Struct({
  at: DateTime,
  heads: Schema.Array(
    Schema.Struct({
      sku: Schema.String,
      seq: Schema.Int.annotations({ description: "the SKU's ledger sequence" }),
      hash: Schema.String.annotations({ description: "the hash of the SKU's entry at that sequence (hex)" }),
    }),
  ).annotations({ description: "at most 2,000 a message" }),
}).annotations({ title: "Anchor", description: "Hash-chain heads read at one moment, published outside the database" });
export type AnchorMessage = typeof AnchorMessage.Type;

/**
 * Publishes heads to the anchors stream, in messages of at most 2,000. Each message's Nats-Msg-Id is
 * the hash of its heads, so relays publishing the same heads at once store them once.
 */
export async function publishAnchors(nats: NatsHandles, topology: Topology, heads: ReadonlyArray<Anchor>): Promise<number> {
  let messages = 0;
  for (let i = 0; i < heads.length; i += HEADS_PER_MESSAGE) {
    const page = heads.slice(i, i + HEADS_PER_MESSAGE);
    const body: AnchorMessage = { at: page[0]!.at, heads: page.map(({ sku, seq, hash }) => ({ sku, seq, hash })) };
    const msgID = `anchors:${createHash("sha256").update(JSON.stringify(body.heads)).digest("hex")}`;
    await nats.js.publish(topology.anchorsSubject, JSON.stringify(body), { msgID });
    messages++;
  }
  return messages;
}

/** Every anchor in the anchors stream, oldest first. */
export async function readNatsAnchors(nats: NatsHandles, topology: Topology): Promise<Array<Anchor>> {
  // A plain ephemeral consumer: nats-server 2.9 has no ordered consumers with filters.
  const info = await nats.jsm.consumers.add(topology.anchorsStream, {
    ack_policy: AckPolicy.None,
    deliver_policy: DeliverPolicy.All,
    inactive_threshold: 30_000_000_000,
  });
  const out: Array<Anchor> = [];
  try {
    let pending = info.num_pending;
    const consumer = await nats.js.consumers.get(topology.anchorsStream, info.name);
    while (pending > 0) {
      const batch = await consumer.fetch({ max_messages: Math.min(500, pending), expires: 2000 });
      let n = 0;
      for await (const m of batch) {
        n++;
        const body = m.json<AnchorMessage>();
        for (const h of body.heads) out.push({ ...h, at: body.at });
      }
      if (n === 0) break;
      pending -= n;
    }
  } finally {
    // Best effort: the consumer is ephemeral and goes by itself after inactive_threshold.
    await nats.jsm.consumers.delete(topology.anchorsStream, info.name).catch(() => {});
  }
  return out;
}

/** Appends heads to an anchor file (one JSON anchor per line), e.g. on write-once storage. */
export async function appendAnchorFile(path: string, heads: ReadonlyArray<Anchor>): Promise<void> {
  await appendFile(path, heads.map((h) => `${JSON.stringify(h)}\n`).join(""));
}

/** The anchors of a file written by {@link appendAnchorFile}; a line that is not an anchor is an error naming it. */
export async function readAnchorFile(path: string): Promise<Array<Anchor>> {
  const out: Array<Anchor> = [];
  const lines = (await readFile(path, "utf8")).split("\n");
  lines.forEach((line, i) => {
    if (line.trim() === "") return;
    const a = JSON.parse(line) as Partial<Anchor>;
    if (typeof a.sku !== "string" || typeof a.seq !== "number" || typeof a.hash !== "string" || typeof a.at !== "string")
      throw new Error(`${path}:${i + 1}: not an anchor (expected {"sku","seq","hash","at"})`);
    out.push(a as Anchor);
  });
  return out;
}

export interface AnchorPublisherOptions {
  readonly sql: Sql;
  readonly nats: NatsHandles;
  readonly topology: Topology;
  readonly log: Logger;
  /** How often the heads that changed are published (`TALLY_ANCHOR_INTERVAL_MS`). */
  readonly intervalMs: number;
}

/**
 * Publishes the heads of the SKUs whose chains grew since its last round, every `intervalMs` (all
 * heads on its first round). Runs in the relay role. A rewrite of entries older than the last
 * anchor of their SKU is then caught by `tally ledger verify --anchors`.
 */
export class AnchorPublisher extends LongRunningService {
  #since: Date | undefined;

  constructor(readonly opts: AnchorPublisherOptions) {
    super();
  }

  /** Publishes the heads changed since the last round; returns how many. */
  async round(): Promise<number> {
    const { heads, readAt } = await chainHeads(this.opts.sql, this.#since);
    if (heads.length > 0) await publishAnchors(this.opts.nats, this.opts.topology, heads);
    // A head's updated_at is its worker's clock when the batch began, not the commit time: a batch
    // that committed late (or on a skewed clock) is caught by looking a minute back each round.
    this.#since = new Date(readAt.getTime() - LOOK_BACK_MS);
    return heads.length;
  }

  protected async run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      await retry(() => this.round(), {
        signal,
        backoff: (attempt) => backoffDelay(attempt, 500, 30_000),
        onError: (err, attempt) => this.opts.log.warn({ err, attempt }, "publishing chain anchors failed; retrying after a backoff"),
      });
      await sleep(this.opts.intervalMs, signal);
    }
  }
}
