import { DiscardPolicy, RetentionPolicy, StorageType, type JetStreamClient, type JetStreamManager } from "@nats-io/jetstream";
import type { KV } from "@nats-io/kv";
import type { Sql } from "postgres";
import type { Logger } from "pino";
import { instanceId } from "../ledger/index.ts";
import { DEFAULTS, LongRunningService, Wakeup, backoffDelay, retry } from "../src/platform/index.ts";
import { ensureBucket, ensureStream, isNotFound, type ReplicaCheck, type Topology } from "../src/wire/index.ts";
import { CATALOG_CHANNEL, nextDue, publishDue } from "./catalog.ts";

export interface CatalogPublisherOptions {
  readonly sql: Sql;
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  readonly topology: Topology;
  readonly log: Logger;
  /** The longest wait between rounds when nothing wakes the publisher (default 1000 ms). */
  readonly pollMs?: number;
  /** Outbox rows per round (default 500). */
  readonly batch?: number;
  /** TALLY_NATS_REPLICAS for the catalog stream and bucket, checked as the other streams' are (default: 1). */
  readonly replicas?: ReplicaCheck;
  /** TALLY_CATALOG_MAX_AGE_SECONDS in ms: the catalog stream's max age, set at start on an existing stream too (default: the setting's default). */
  readonly maxAgeMs?: number;
}

/**
 * The catalog stream (every catalog subject, TALLY_CATALOG_MAX_AGE_SECONDS of history, a week by
 * default): created by the publisher, which checks its replicas (`check`) and brings an existing
 * stream to `maxAgeMs`, and by the readers that follow it (the catalog SSE stream, catalog webhooks)
 * when they start before it; a reader leaves an existing stream as it is.
 */
export async function ensureCatalogStream(
  jsm: JetStreamManager,
  t: Topology,
  check?: ReplicaCheck,
  maxAgeMs: number = DEFAULTS.TALLY_CATALOG_MAX_AGE_SECONDS * 1000,
): Promise<void> {
  const config = {
    name: t.catalogStream,
    subjects: [t.catalogSubjects()],
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
    discard: DiscardPolicy.Old,
    max_age: maxAgeMs * 1_000_000,
  };
  if (check) return ensureStream(jsm, config, check);
  try {
    await jsm.streams.info(t.catalogStream);
  } catch (error) {
    if (!isNotFound(error)) throw error;
    await jsm.streams.add(config);
  }
}

/**
 * Publishes the catalog. Each round it first runs the durable scheduler — every price change that
 * `catalog_due` holds as due by now becomes one catalog version (so a restart only delays what was
 * due, never loses it) — then sends the new projections from `catalog_outbox` to the catalog KV
 * bucket (`<channel>.<sku>`; deleted when the item left the catalog) and to their subjects, and
 * deletes them once NATS has them. One process at a time does each (Postgres advisory locks), so
 * projections leave in version order; each message carries `Nats-Msg-Id: <instance>:catalog:<id>`,
 * so a crash between publish and delete never duplicates it. It sleeps until the next due change,
 * a new version (NOTIFY) or `pollMs`.
 */
export class CatalogPublisher extends LongRunningService {
  published = 0;
  /** The last version the scheduler made of due changes (null: none yet). */
  lastScheduledVersion: number | null = null;
  readonly #wakeup = new Wakeup();
  #unlisten: (() => Promise<void>) | null = null;
  #kv: KV | null = null;
  #instance = "";

  constructor(readonly opts: CatalogPublisherOptions) {
    super();
  }

  override async stop(timeoutMs?: number): Promise<boolean> {
    const stopped = await super.stop(timeoutMs);
    // Best effort: the pool closes right after, which ends the LISTEN anyway.
    await this.#unlisten?.().catch((err: unknown) => this.opts.log.debug({ err }, "catalog UNLISTEN failed"));
    return stopped;
  }

  protected override onStop(): void {
    this.#wakeup.wake();
  }

  protected async run(signal: AbortSignal): Promise<void> {
    const { sql, log } = this.opts;
    const pollMs = this.opts.pollMs ?? 1000;
    try {
      const listener = await sql.listen(CATALOG_CHANNEL, () => this.#wakeup.wake());
      this.#unlisten = listener.unlisten;
    } catch (err) {
      // NOTIFY only shortens the wait: without it the publisher polls.
      log.warn({ err }, "catalog LISTEN failed; polling only");
    }
    while (!signal.aborted) {
      const wait = await retry(() => this.#round(pollMs), {
        signal,
        backoff: (attempt) => backoffDelay(attempt, 200, 10_000),
        wait: (ms, s) => this.#wakeup.wait(ms, s),
        onError: (err, attempt, delayMs) => log.warn({ err, attempt, delayMs }, "catalog publisher round failed; retrying after a backoff"),
      });
      if (wait !== undefined && wait > 0) await this.#wakeup.wait(wait, signal);
    }
  }

  /** One round; returns how long to wait before the next (0: more is waiting). */
  async #round(pollMs: number): Promise<number> {
    const { sql } = this.opts;
    if (!this.#kv) await this.#ensureTopology();
    const version = await publishDue(sql);
    if (version !== null) this.lastScheduledVersion = version;
    const sent = await this.#publishOutbox();
    if (sent > 0 || version !== null) return 0;
    const due = await nextDue(sql);
    // At least a moment: a change already due that another process is publishing (or a clock a little
    // ahead of the database's) must not spin this loop.
    return due === null ? pollMs : Math.max(20, Math.min(pollMs, due.getTime() - Date.now()));
  }

  /** The catalog stream and KV bucket (created here, by the one role that writes them). */
  async #ensureTopology(): Promise<void> {
    const { js, jsm, topology: t, sql } = this.opts;
    this.#instance = await instanceId(sql);
    const check = this.opts.replicas ?? { replicas: 1, warn: (message: string) => this.opts.log.warn(message) };
    await ensureCatalogStream(jsm, t, check, this.opts.maxAgeMs);
    this.#kv = await ensureBucket(js, jsm, t.catalogBucket, { history: 1, storage: StorageType.File }, check);
  }

  /** Sends one page of the catalog outbox; returns how many rows it sent (0 when another process is sending). */
  async #publishOutbox(): Promise<number> {
    const { sql, js, topology: t } = this.opts;
    const kv = this.#kv!;
    return sql.begin(async (tx) => {
      const [lock] = await tx<[{ got: boolean }]>`select pg_try_advisory_xact_lock(hashtext('tally catalog outbox')) as got`;
      if (!lock.got) return 0;
      // Ordered by the column, qualified: a bare `order by id` names the output column `id::text`, whose
      // order is the text's (10 before 9), which sent an older projection of a key after a newer one.
      const rows = await tx<Array<{ id: string; channel: string; sku: string; payload: string; removed: boolean }>>`
        select id::text, channel, sku, payload::text as payload, coalesce((payload ->> 'removed')::boolean, false) as removed
          from catalog_outbox order by catalog_outbox.id limit ${this.opts.batch ?? 500}`;
      if (rows.length === 0) return 0;
      // The last projection per key wins; earlier ones of the same page are superseded in the bucket.
      const latest = new Map(rows.map((r) => [t.catalogKey(r.channel, r.sku), r]));
      await Promise.all([
        ...rows.map((r) => js.publish(t.catalogSubject(r.channel, r.sku), r.payload, { msgID: `${this.#instance}:catalog:${r.id}` })),
        ...[...latest].map(([key, r]) => (r.removed ? kv.delete(key) : kv.put(key, r.payload))),
      ]);
      await tx`delete from catalog_outbox where id = any(${tx.array(rows.map((r) => r.id))}::bigint[])`;
      this.published += rows.length;
      return rows.length;
    });
  }
}
