/**
 * Webhook channels: a channel that declares a URL gets its availability changes POSTed to it,
 * batched, signed with HMAC-SHA256, retried with exponential backoff and jitter, and dead-lettered
 * when the retries run out. Each channel has its own durable consumer on the availability stream,
 * its own lease (one sender per channel, so batches leave in order) and its own loop: a channel
 * whose endpoint is down never holds up another.
 */
import { AckPolicy, DeliverPolicy, type ConsumerMessages, type JsMsg } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { nanos } from "@nats-io/transport-node";
import type { Logger } from "pino";
import type { Sql } from "postgres";
import { LeaseStore, type HeldLease } from "../wire/index.ts";
import type { AvailabilityJson as Availability, CatalogValue } from "../contract/index.ts";
import { ensureCatalogStream } from "../../cdc/index.ts";
import { ConfigFileError, type TallyConfig } from "../platform/index.ts";
import { deadLetter, publishDeadLetter, type DeadLetter } from "../wire/index.ts";
import type { NatsHandles } from "../wire/index.ts";
import type { Topology } from "../wire/index.ts";
import { LongRunningService, Wakeup, backoffDelay, retry, signPayload, verifyPayload } from "../platform/index.ts";
import { DeliveryOrder, type DeliveryGap } from "../wire/index.ts";

/** The dead-letter origin of undeliverable webhook batches. */
export const WEBHOOK_ORIGIN = "webhook";
export const SIGNATURE_HEADER = "tally-signature";
export const DELIVERY_HEADER = "tally-delivery";
/** `availability` or `catalog`: what a delivery carries (also the body's `type`). */
export const FEED_HEADER = "tally-feed";

/** What a webhook sender follows: availability changes, or catalog changes (with their catalog version). */
export type WebhookFeed = "availability" | "catalog";

/** A channel's webhook, resolved: its secret read from the environment. */
export interface WebhookTarget {
  readonly channel: string;
  readonly url: string;
  readonly secret: string;
  readonly batchSize: number;
  /** How long the first change of a batch may wait for others to join it. */
  readonly lingerMs: number;
  readonly timeoutMs: number;
  readonly maxAttempts: number;
  readonly backoffMs: number;
  readonly maxBackoffMs: number;
  /** Also send the channel's catalog changes (a second sender, feed `catalog`). */
  readonly catalog: boolean;
}

/** The environment variable holding a channel's webhook secret, unless the config names another. */
export const webhookSecretVar = (channel: string): string => `TALLY_WEBHOOK_${channel.toUpperCase().replace(/-/g, "_")}_SECRET`;

/** Every channel with a webhook; throws naming the variable when a secret is missing or short. */
export function webhookTargets(config: TallyConfig, env: Readonly<Record<string, string | undefined>> = process.env): Array<WebhookTarget> {
  const out: Array<WebhookTarget> = [];
  for (const [channel, c] of Object.entries(config.channels)) {
    const w = c.webhook;
    if (!w) continue;
    const variable = w.secretEnv ?? webhookSecretVar(channel);
    const secret = env[variable];
    if (!secret) throw new ConfigFileError(`channels.${channel}.webhook: ${variable} must hold the signing secret (at least 16 characters)`);
    if (secret.length < 16) throw new ConfigFileError(`${variable}: expected a signing secret of at least 16 characters`);
    const { secretEnv: _, ...settings } = w;
    out.push({ channel, secret, ...settings });
  }
  return out;
}

/** The channels whose webhook can be used here (secret set); for replays, which must not fail on another channel's secret. */
export function usableWebhookTargets(config: TallyConfig, env: Readonly<Record<string, string | undefined>> = process.env): Array<WebhookTarget> {
  return Object.entries(config.channels).flatMap(([name, c]) => {
    try {
      return webhookTargets({ ...config, channels: { [name]: c } }, env);
    } catch {
      // This channel's secret is missing here: its replays report that; the other channels still work.
      return [];
    }
  });
}

/** `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` (the one signing rule, in src/platform). */
export const signWebhook = signPayload;

/** What a receiver does: checks the signature (constant time) and that it is recent. */
export const verifyWebhook = verifyPayload;

/** The JSON body of one delivery. */
export interface WebhookBody {
  readonly channel: string;
  readonly deliveryId: string;
  /** The latest availability of each SKU that changed, oldest change first. */
  readonly items: ReadonlyArray<Availability>;
}

/**
 * The JSON body of one catalog delivery: the latest projection of each item that changed (each with
 * its `catalogVersion`; a receiver drops one older than what it holds), and the highest version in it.
 */
export interface CatalogWebhookBody {
  readonly type: "catalog";
  readonly channel: string;
  readonly deliveryId: string;
  readonly catalogVersion: number;
  readonly items: ReadonlyArray<CatalogValue>;
}

/** One POST; resolves with an error text when it did not get a 2xx in time. */
export async function postWebhook(target: WebhookTarget, body: WebhookBody | CatalogWebhookBody): Promise<string | null> {
  const text = JSON.stringify(body);
  try {
    const res = await fetch(target.url, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        "user-agent": "tally-webhooks",
        [SIGNATURE_HEADER]: signWebhook(target.secret, text),
        [DELIVERY_HEADER]: body.deliveryId,
        [FEED_HEADER]: "type" in body ? body.type : "availability",
      },
      body: text,
      signal: AbortSignal.timeout(target.timeoutMs),
    });
    await res.arrayBuffer().catch(() => undefined); // read only to free the socket: the status decides
    return res.ok ? null : `HTTP ${res.status}`;
  } catch (error) {
    // Not thrown: the caller counts, logs and retries a failed POST by its error text.
    const e = error as Error & { cause?: { code?: string } };
    return e.name === "TimeoutError" ? `no answer within ${target.timeoutMs} ms` : (e.cause?.code ?? e.message);
  }
}

export interface DispatcherOptions {
  readonly target: WebhookTarget;
  readonly nats: NatsHandles;
  /** Keeps a dead letter's payload too large for NATS. */
  readonly sql: Sql;
  readonly topology: Topology;
  readonly log: Logger;
  readonly owner: string;
  readonly leaseTtlMs: number;
  /** Default `availability`. */
  readonly feed?: WebhookFeed;
}

export interface WebhookMetrics {
  deliveries: number;
  items: number;
  failedAttempts: number;
  deadLettered: number;
  lastError: string | null;
}

/** Sends one channel's availability changes (or, with feed `catalog`, its catalog changes) to its webhook. */
export class WebhookDispatcher extends LongRunningService {
  readonly metrics: WebhookMetrics = { deliveries: 0, items: 0, failedAttempts: 0, deadLettered: 0, lastError: null };
  readonly #wakeup = new Wakeup();
  #queue: Array<JsMsg> = [];
  #messages: ConsumerMessages | null = null;
  #lease: HeldLease | null = null;
  #leases: LeaseStore;
  #lastRenew = 0;
  /** Highest stream sequence taken into a batch: redeliveries of it are skipped. */
  #taken = 0;
  /** Highest stream sequence acknowledged (delivered or dead-lettered). */
  #acked = 0;
  /** Deliveries the consumer skipped: the sender starts over from what it acknowledged. */
  #gap: DeliveryGap | null = null;
  /** Bumped per consumer: a stopped consumer's late messages are ignored. */
  #generation = 0;

  constructor(readonly opts: DispatcherOptions) {
    super();
    this.#leases = new LeaseStore(opts.nats.leases, opts.owner);
  }

  get channel(): string {
    return this.opts.target.channel;
  }

  get feed(): WebhookFeed {
    return this.opts.feed ?? "availability";
  }

  /** One sender per channel and feed. */
  get #leaseKey(): string {
    const key = this.opts.topology.webhookLeaseKey(this.channel);
    return this.feed === "catalog" ? `${key}.catalog` : key;
  }

  override async stop(): Promise<boolean> {
    const stopped = await super.stop();
    if (this.#lease) await this.#leases.release(this.#lease);
    return stopped;
  }

  protected override onStop(): void {
    this.#wakeup.wake();
  }

  protected async run(signal: AbortSignal): Promise<void> {
    const { log } = this.opts;
    while (!signal.aborted) {
      await retry(() => this.#step(signal), {
        signal,
        backoff: (attempt) => backoffDelay(attempt, 200, 10_000),
        wait: (ms, s) => this.#wakeup.wait(ms, s),
        onError: async (error, attempt) => {
          log.warn({ err: error, channel: this.channel, attempt }, "webhook sender failed; starting over after a backoff");
          this.#unsubscribe();
          if (this.#lease) await this.#leases.release(this.#lease);
          this.#lease = null;
        },
      });
    }
    this.#unsubscribe();
  }

  /** Takes the lease (subscribing) when not held, then sends the next batch, if any. */
  async #step(signal: AbortSignal): Promise<void> {
    const { log, leaseTtlMs } = this.opts;
    while (!this.#lease) {
      this.#lease = await this.#leases.tryAcquire(this.#leaseKey);
      if (!this.#lease) {
        await this.#wakeup.wait(leaseTtlMs / 3, signal);
        if (signal.aborted) return;
        continue;
      }
      this.#lastRenew = Date.now();
      await this.#subscribe();
      log.info({ channel: this.channel, url: this.opts.target.url }, "webhook sender lease acquired");
    }
    await this.#keepLease();
    const batch = await this.#nextBatch();
    if (batch.length > 0) await this.#deliver(batch);
  }

  async #keepLease(): Promise<void> {
    if (this.#lease && Date.now() - this.#lastRenew > this.opts.leaseTtlMs / 3) {
      await this.#leases.renew(this.#lease);
      this.#lastRenew = Date.now();
    }
  }

  /**
   * A fresh consumer resuming after the old one's acknowledged floor (a new lease holder must not
   * wait for the old holder's unacknowledged messages to time out). The first time, it starts with
   * the last change of every SKU of the channel, so the receiver starts complete.
   */
  async #subscribe(): Promise<void> {
    const { nats, topology } = this.opts;
    const catalog = this.feed === "catalog";
    // The catalog stream may not exist yet when the relay starts before the catalog publisher.
    if (catalog) await ensureCatalogStream(nats.jsm, topology);
    const stream = catalog ? topology.catalogStream : topology.availabilityStream;
    const prefix = topology.webhookConsumerPrefix(this.channel);
    let floor = 0;
    let generation = 0;
    for await (const info of nats.jsm.consumers.list(stream)) {
      if (!info.name.startsWith(prefix)) continue;
      floor = Math.max(floor, info.ack_floor.stream_seq);
      generation = Math.max(generation, Number(info.name.slice(prefix.length)) || 0);
      // Best effort: an old consumer left behind expires after its inactive_threshold.
      await nats.jsm.consumers
        .delete(stream, info.name)
        .catch((err: unknown) => this.opts.log.debug({ err, consumer: info.name }, "could not delete an old webhook consumer"));
    }
    floor = Math.max(floor, this.#acked);
    this.#taken = floor;
    const name = `${prefix}${generation + 1}`;
    await nats.jsm.consumers.add(stream, {
      durable_name: name,
      filter_subject: catalog ? topology.catalogSubjects(this.channel) : topology.availabilitySubjects(this.channel),
      ack_policy: AckPolicy.All,
      ...(floor > 0 ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: floor + 1 } : { deliver_policy: DeliverPolicy.LastPerSubject }),
      ack_wait: nanos(300_000),
      max_ack_pending: 10_000,
      inactive_threshold: nanos(7 * 24 * 3600_000),
    });
    const consumer = await nats.js.consumers.get(stream, name);
    this.#queue = [];
    this.#gap = null;
    const order = new DeliveryOrder();
    const current = ++this.#generation;
    this.#messages = await consumer.consume({
      max_messages: Math.max(100, this.opts.target.batchSize * 2),
      callback: (m) => {
        if (current !== this.#generation || this.#gap) return;
        // Skipped deliveries: stop before a batch past them acknowledges them too (AckPolicy.All).
        this.#gap = order.next(m);
        if (!this.#gap) this.#queue.push(m);
        this.#wakeup.wake();
      },
    });
  }

  #unsubscribe(): void {
    this.#generation++;
    this.#gap = null;
    this.#messages?.stop();
    this.#messages = null;
    this.#queue = [];
  }

  /** Waits for a change, then up to `lingerMs` for more (or a full batch). */
  async #nextBatch(): Promise<Array<JsMsg>> {
    const { target, leaseTtlMs } = this.opts;
    const fresh = () => {
      if (this.#gap) throw this.#gap;
      this.#queue = this.#queue.filter((m) => m.seq > this.#taken);
      return this.#queue.length;
    };
    if (fresh() === 0) await this.#sleep(leaseTtlMs / 3);
    if (fresh() === 0) return [];
    const deadline = Date.now() + target.lingerMs;
    while (fresh() < target.batchSize && Date.now() < deadline && !this.stopping) await this.#sleep(deadline - Date.now());
    const batch = this.#queue.splice(0, target.batchSize);
    if (batch.length > 0) this.#taken = batch[batch.length - 1]!.seq;
    return batch;
  }

  /** POSTs one batch until it is accepted or the attempts run out (then dead-letters it); acknowledges it either way. */
  async #deliver(batch: ReadonlyArray<JsMsg>): Promise<void> {
    const { target, log } = this.opts;
    const latest = new Map<string, { item: Availability | CatalogValue; seq: number }>();
    const undecodable: Array<DeadLetter> = [];
    for (const m of batch) {
      try {
        const item = m.json<Availability | CatalogValue>();
        latest.delete(item.sku); // re-inserted: the map keeps the order of each SKU's latest change
        latest.set(item.sku, { item, seq: m.seq });
      } catch (error) {
        // Not JSON: dead-lettered below with the reason, the rest of the batch is delivered.
        undecodable.push(
          deadLetter(WEBHOOK_ORIGIN, `${this.feed} message is not JSON: ${(error as Error).message}`, m.data, {
            channel: target.channel,
            stream_seq: m.seq,
          }),
        );
      }
    }
    const first = batch[0]!.seq;
    const last = batch[batch.length - 1]!.seq;
    const items = [...latest.values()].map((v) => v.item);
    const body: WebhookBody | CatalogWebhookBody =
      this.feed === "catalog"
        ? {
            type: "catalog",
            channel: target.channel,
            deliveryId: `${target.channel}-catalog-${first}-${last}`,
            catalogVersion: Math.max(...(items as Array<CatalogValue>).map((i) => i.catalogVersion)),
            items: items as Array<CatalogValue>,
          }
        : { channel: target.channel, deliveryId: `${target.channel}-${first}-${last}`, items: items as Array<Availability> };
    let error: string | null = null;
    for (let attempt = 1; body.items.length > 0; attempt++) {
      error = await postWebhook(target, body);
      if (error === null) {
        this.metrics.deliveries++;
        this.metrics.items += body.items.length;
        break;
      }
      this.metrics.failedAttempts++;
      this.metrics.lastError = error;
      if (attempt >= target.maxAttempts || this.stopping) break;
      const delay = backoffDelay(attempt, target.backoffMs, target.maxBackoffMs);
      log.warn(
        { channel: target.channel, url: target.url, deliveryId: body.deliveryId, attempt, error, delayMs: Math.round(delay) },
        "webhook delivery failed; retrying",
      );
      await this.#sleepWhileLeased(delay);
    }
    // Shutting down mid-retry: leave the batch unacknowledged; the next holder sends it again.
    if (error !== null && this.stopping) return;
    const letters = [...undecodable];
    if (error !== null) {
      letters.push(
        deadLetter(WEBHOOK_ORIGIN, `webhook ${target.channel}: POST ${target.url} failed ${target.maxAttempts} times, last: ${error}`, body, {
          channel: target.channel,
          feed: this.feed,
          deliveryId: body.deliveryId,
          first_seq: first,
          last_seq: last,
        }),
      );
      log.error(
        { channel: target.channel, deliveryId: body.deliveryId, error, skus: body.items.length },
        "webhook batch dead-lettered after its last attempt",
      );
    }
    for (const d of letters)
      await publishDeadLetter({ js: this.opts.nats.js, nc: this.opts.nats.nc, sql: this.opts.sql, topology: this.opts.topology }, d);
    this.metrics.deadLettered += letters.length;
    batch[batch.length - 1]!.ack();
    this.#acked = last;
  }

  /** Sleeps through a retry backoff, keeping the lease alive. */
  async #sleepWhileLeased(ms: number): Promise<void> {
    const until = Date.now() + ms;
    while (!this.stopping && Date.now() < until) {
      await this.#sleep(Math.min(until - Date.now(), this.opts.leaseTtlMs / 3));
      await this.#keepLease();
    }
  }

  #sleep(ms: number): Promise<void> {
    return this.#wakeup.wait(ms, this.signal);
  }
}

/**
 * Replays a dead-lettered webhook batch: sends the channel's *current* availability of the SKUs it
 * held (never the stale values), once. Null when delivered, else why not.
 */
export async function resendCurrent(
  targets: ReadonlyArray<WebhookTarget>,
  nats: NatsHandles,
  topology: Topology,
  letter: DeadLetter & { readonly id: number },
): Promise<{ items: number } | { reason: string }> {
  const channel = (letter.context as { channel?: unknown }).channel;
  const target = targets.find((t) => t.channel === channel);
  if (!target) return { reason: `channel ${String(channel)} has no webhook here (is its ${webhookSecretVar(String(channel))} set?)` };
  const skus = ((letter.payload as Partial<WebhookBody> | null)?.items ?? []).map((i) => i?.sku).filter((s): s is string => typeof s === "string");
  if ((letter.context as { feed?: unknown }).feed === "catalog") return resendCurrentCatalog(target, nats, topology, letter.id, skus);
  const items: Array<Availability> = [];
  for (const sku of new Set(skus)) {
    const e = await nats.availability.get(topology.availabilityKey(target.channel, sku));
    if (e && e.operation === "PUT" && e.length > 0) items.push(e.json<Availability>());
  }
  if (items.length === 0) return { items: 0 };
  const error = await postWebhook(target, { channel: target.channel, deliveryId: `${target.channel}-replay-${letter.id}`, items });
  return error === null ? { items: items.length } : { reason: `POST ${target.url}: ${error}` };
}

/** A dead-lettered catalog batch, replayed: the channel's current projections of its items, once. */
async function resendCurrentCatalog(
  target: WebhookTarget,
  nats: NatsHandles,
  topology: Topology,
  letterId: number,
  skus: ReadonlyArray<string>,
): Promise<{ items: number } | { reason: string }> {
  const kv = await new Kvm(nats.js).open(topology.catalogBucket);
  const items: Array<CatalogValue> = [];
  for (const sku of new Set(skus)) {
    const e = await kv.get(topology.catalogKey(target.channel, sku));
    if (e && e.operation === "PUT" && e.length > 0) items.push(e.json<CatalogValue>());
  }
  if (items.length === 0) return { items: 0 };
  const catalogVersion = Math.max(...items.map((i) => i.catalogVersion));
  const error = await postWebhook(target, {
    type: "catalog",
    channel: target.channel,
    deliveryId: `${target.channel}-catalog-replay-${letterId}`,
    catalogVersion,
    items,
  });
  return error === null ? { items: items.length } : { reason: `POST ${target.url}: ${error}` };
}
