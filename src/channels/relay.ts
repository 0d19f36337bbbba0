import { Schema } from "effect";
import type { Sql } from "postgres";
import type { Logger } from "pino";
import { OUTBOX_CHANNEL } from "../../ledger/index.ts";
import { LeaseStore, type HeldLease } from "../wire/index.ts";
import type { NatsHandles, Topology } from "../wire/index.ts";
import { LongRunningService, Wakeup, backoffDelay, retry } from "../platform/index.ts";

export interface RelayOptions {
  readonly sql: Sql;
  readonly nats: NatsHandles;
  readonly log: Logger;
  /** Prefixes every Nats-Msg-Id: a rebuilt database never reuses one. */
  readonly instanceId: string;
  readonly leaseTtlMs: number;
  readonly owner: string;
  /** Rows per round (default 1000). */
  readonly batch?: number;
  /** Names the subjects and KV keys of the bundles it derives. */
  readonly topology: Topology;
  /** Every configured channel: a bundle whose definition changed is derived in each. */
  readonly channels: ReadonlyArray<string>;
  /** The channels that keep selling a discontinued item's remaining stock (src/channels/itemStatus.ts). */
  readonly sellsDiscontinued?: ReadonlyArray<string>;
  /** Environment name: latency reports go to `tally.<env>.relay`. */
  readonly env?: string;
  /** Called with each round this relay published (its own process's metrics). */
  readonly onRound?: (round: RelayRound) => void;
}

interface OutboxRecord {
  id: number;
  kind: "availability" | "event";
  subject: string;
  kv_key: string | null;
  /** The JSON text as stored (not parsed: the relay only forwards it). */
  payload: string;
  source_at: Date | null;
  source: string | null;
  /** When the ledger transaction that wrote it started (the worker's apply). */
  created_at: Date;
}

/**
 * What the relay publishes on `tally.<env>.relay` after each round (core NATS, best effort): the
 * end-to-end latency of every availability change it published, from the source time of the oldest
 * command behind it to NATS having it, grouped by source system.
 */
export const RelayRound = Schema.Struct({
  published: Schema.Int.annotations({ description: "outbox rows published this round" }),
  latencyMs: Schema.Record({ key: Schema.String, value: Schema.Array(Schema.Number) }).annotations({
    description: "milliseconds from source to NATS of each availability change, per source system",
  }),
  toApplyMs: Schema.optional(
    Schema.Record({ key: Schema.String, value: Schema.Array(Schema.Number) }).annotations({
      description:
        "of the same changes, in the same order: milliseconds from source to the start of the ledger transaction that wrote them (the rest is apply, commit and this relay)",
    }),
  ),
  roundMs: Schema.optional(
    Schema.Struct({
      pickup: Schema.Number.annotations({
        description: "from the first outbox NOTIFY it had not served (or the last round's end) to this round's start",
      }),
      read: Schema.Number.annotations({ description: "reading the page and what it depends on (item status, bundles)" }),
      publish: Schema.Number.annotations({ description: "publishing the page to NATS (subjects and KV) until every ack" }),
      delete: Schema.Number.annotations({ description: "deleting the published rows (and deriving bundles)" }),
    }).annotations({ description: "where this round's time went (ms)" }),
  ),
}).annotations({ title: "Relay round", description: "The outbox relay's report after each round" });
export type RelayRound = typeof RelayRound.Type;

export { relaySubject } from "../wire/index.ts";
import { RELAY_LEASE_KEY, relaySubject } from "../wire/index.ts";
import { applyItemStatus, restatePending, restatePendingSql, restateQueued } from "./itemStatus.ts";
import {
  bundlesAffected,
  bundlesAffectedSql,
  componentFigure,
  deriveBundles,
  queueUnpublishedBundles,
  type Derived,
  type PublishedFigures,
} from "./bundles.ts";

/**
 * Publishes committed outbox rows to NATS and deletes them (in one statement per round) once NATS
 * has them; of several availability rows of one channel and SKU in a round, only the latest is published. One relay is active
 * per environment (a lease), so projections leave in commit order. Each publish carries
 * `Nats-Msg-Id: <instance>:<outbox id>`, so a crash between publish and delete never duplicates.
 * Deleting a round's rows, it derives the availability of the bundles whose components they changed
 * (src/channels/bundles.ts) in the same transaction: those go out in the next round, as rows of their own.
 */
export class OutboxRelay extends LongRunningService {
  published = 0;
  /** End-to-end latency of the last availability change published (ms), or null. */
  lastLatencyMs: number | null = null;
  readonly #wakeup = new Wakeup();
  #lease: HeldLease | null = null;
  #leases: LeaseStore;
  #lastRenew = 0;
  #unlisten: (() => Promise<void>) | null = null;
  /** When an outbox NOTIFY arrived that no round has started on since (null: none). */
  #notifiedAt: number | null = null;
  /** Set once this relay queued the bundles not yet published in some channel (after it first holds the lease). */
  #bundlesChecked = false;
  readonly #sellsDiscontinued: ReadonlySet<string>;

  /** True while this relay holds the relay lease (it is the one publishing). */
  get leader(): boolean {
    return this.#lease !== null;
  }

  constructor(readonly opts: RelayOptions) {
    super();
    this.#leases = new LeaseStore(opts.nats.leases, opts.owner);
    this.#sellsDiscontinued = new Set(opts.sellsDiscontinued ?? []);
  }

  override async stop(): Promise<boolean> {
    const stopped = await super.stop();
    // Best effort: the connection closes right after, which ends the LISTEN anyway.
    await this.#unlisten?.().catch((err: unknown) => this.opts.log.debug({ err }, "outbox UNLISTEN failed"));
    if (this.#lease) await this.#leases.release(this.#lease);
    return stopped;
  }

  protected override onStop(): void {
    this.#wakeup.wake();
  }

  protected async run(signal: AbortSignal): Promise<void> {
    const { sql, log, leaseTtlMs } = this.opts;
    try {
      const listener = await sql.listen(OUTBOX_CHANNEL, () => {
        // Kept until a round starts: a NOTIFY that arrives during a round (which may then find the
        // page empty) must not be lost, or the rows it announces wait for the next commit or the poll.
        this.#notifiedAt ??= Date.now();
        this.#wakeup.wake();
      });
      this.#unlisten = listener.unlisten;
    } catch (err) {
      // NOTIFY only shortens the wait: without it the relay polls.
      log.warn({ err }, "outbox LISTEN failed; polling only");
    }
    while (!signal.aborted) {
      const n = await retry(() => this.#leasedRound(signal), {
        signal,
        backoff: (attempt) => backoffDelay(attempt, 200, 10_000),
        wait: (ms, s) => this.#wakeup.wait(ms, s),
        onError: async (err, attempt) => {
          log.warn({ err, attempt }, "outbox relay round failed; retrying after a backoff");
          await this.#checkLease();
        },
      });
      if (n === 0 && this.#notifiedAt === null) await this.#wakeup.wait(Math.min(1000, leaseTtlMs / 3), signal);
    }
  }

  /** Waits for the lease (renewing it when due), then runs one round; undefined when stopped meanwhile. */
  async #leasedRound(signal: AbortSignal): Promise<number | undefined> {
    const { log, leaseTtlMs } = this.opts;
    while (!this.#lease) {
      this.#lease = await this.#leases.tryAcquire(RELAY_LEASE_KEY);
      if (this.#lease) {
        this.#lastRenew = Date.now();
        log.info("outbox relay lease acquired");
        break;
      }
      await this.#wakeup.wait(leaseTtlMs / 3, signal);
      if (signal.aborted) return undefined;
    }
    const now = Date.now();
    if (now - this.#lastRenew > leaseTtlMs / 3) {
      await this.#leases.renew(this.#lease);
      this.#lastRenew = now;
    }
    return this.#round();
  }

  /** After a failed round: makes sure the lease is still ours before the next one. */
  async #checkLease(): Promise<void> {
    if (!this.#lease) return;
    try {
      await this.#leases.renew(this.#lease);
      this.#lastRenew = Date.now();
    } catch (err) {
      // Lost (or NATS is down): the next round acquires it again first.
      this.opts.log.warn({ err }, "outbox relay lease could not be renewed; acquiring it again");
      this.#lease = null;
    }
  }

  /** Publishes one page of the outbox, then derives the bundles it affects; returns how many rows it handled and wrote. */
  async #round(): Promise<number> {
    const { sql, nats, instanceId } = this.opts;
    const started = Date.now();
    const pickup = this.#notifiedAt === null ? 0 : started - this.#notifiedAt;
    this.#notifiedAt = null;
    if (!this.#bundlesChecked) {
      await queueUnpublishedBundles(sql, this.opts.channels);
      this.#bundlesChecked = true;
    }
    let read = await this.#readPage();
    // An item whose status changed: its last availability goes out again, under the status rule.
    if (read.restate || (read.page.length === 0 && (await restatePending(sql)))) {
      await restateQueued(sql, { nats, topology: this.opts.topology, channels: this.opts.channels });
      read = await this.#readPage();
    }
    const { page } = read;
    const rows = await applyItemStatus(sql, page, this.#sellsDiscontinued, read.statuses);
    // The last projection per key wins; earlier ones of the same page are superseded.
    const latestKv = new Map<string, OutboxRecord>();
    for (const r of rows) if (r.kind === "availability" && r.kv_key) latestKv.set(r.kv_key, r);
    const figures = figuresOf(latestKv.values());
    const bundles = page.length > 0 ? read.bundles : await bundlesAffected(sql, figures);
    if (page.length === 0 && !bundles) return 0;
    // Events all go out; an availability change goes out only as the page's latest of its key (on its
    // subject and in KV alike): a later row of the same page supersedes it, and readers keep the
    // highest version anyway. A relay that lags thus publishes less, not more.
    const superseded = (r: OutboxRecord) => r.kind === "availability" && r.kv_key !== null && latestKv.get(r.kv_key) !== r;
    const readAt = Date.now();
    await Promise.all([
      ...rows.filter((r) => !superseded(r)).map((r) => nats.js.publish(r.subject, r.payload, { msgID: `${instanceId}:${r.id}` })),
      ...[...latestKv.values()].map((r) => nats.availability.put(r.kv_key!, r.payload)),
    ]);
    const publishedAt = Date.now();
    const ids = page.map((r) => r.id);
    let derived: Derived = { rows: 0, removedKeys: [] };
    if (bundles)
      derived = await sql.begin(async (tx) => {
        if (ids.length > 0) await tx`delete from outbox where id = any(${tx.array(ids)}::bigint[])`;
        return deriveBundles({ tx, nats, topology: this.opts.topology, channels: this.opts.channels }, figures);
      });
    else await sql`delete from outbox where id = any(${sql.array(ids)}::bigint[])`;
    // A bundle that is no longer one: its last figure goes (best effort; it is no longer derived either way).
    for (const key of derived.removedKeys)
      await nats.availability
        .delete(key)
        .catch((err: unknown) => this.opts.log.warn({ err, key }, "could not delete a former bundle's availability"));
    this.published += rows.length;
    const roundMs = { pickup, read: readAt - started, publish: publishedAt - readAt, delete: Date.now() - publishedAt };
    if (rows.length > 0) this.#report(rows, publishedAt, roundMs);
    return page.length + derived.rows + derived.removedKeys.length;
  }

  /**
   * One page of the outbox in one statement, with what the round needs to know of it: the status of
   * its SKUs that are not active (the status rule), whether a status change waits to be restated, and
   * whether bundles are to be derived (a definition changed, or one of its SKUs is a component). An
   * empty page says nothing of the last two: the caller asks apart.
   */
  async #readPage(): Promise<{ page: Array<OutboxRecord>; statuses: Map<string, string>; restate: boolean; bundles: boolean }> {
    const { sql } = this.opts;
    const rows = await sql<Array<OutboxRecord & { status_sku: string | null; item_status: string | null; restate: boolean; bundles: boolean }>>`
      with page as (
        select id, kind, subject, kv_key, payload, source_at, source, created_at from outbox order by id limit ${this.opts.batch ?? 1000}
      ), flags as (
        select ${restatePendingSql(sql)} as restate,
               ${bundlesAffectedSql(sql, sql`select payload ->> 'sku' from page where kind = 'availability'`)} as bundles
      )
      select p.id, p.kind, p.subject, p.kv_key, p.payload::text as payload, p.source_at, p.source, p.created_at,
             i.sku as status_sku, i.status as item_status, f.restate, f.bundles
        from page p
        cross join flags f
        -- Lateral: one probe of the not-active items' index per row. A join left the planner free to hash
        -- the whole items table, which it did in the steady bench while items' statistics lagged a bulk load.
        left join lateral (select sku, status from items where sku = p.payload ->> 'sku' and status <> 'active') i on p.kind = 'availability'
       order by p.id`;
    const statuses = new Map<string, string>();
    const page: Array<OutboxRecord> = [];
    for (const { status_sku, item_status, restate: _r, bundles: _b, ...r } of rows) {
      if (status_sku !== null && item_status !== null) statuses.set(status_sku, item_status);
      page.push(r);
    }
    return { page, statuses, restate: rows[0]?.restate ?? false, bundles: rows[0]?.bundles ?? false };
  }

  /** Source time → published, per availability change, for the metrics of every API process. */
  #report(rows: ReadonlyArray<OutboxRecord>, publishedAt: number, roundMs: NonNullable<RelayRound["roundMs"]>): void {
    const latencyMs: Record<string, Array<number>> = {};
    const toApplyMs: Record<string, Array<number>> = {};
    for (const r of rows) {
      if (r.kind !== "availability" || r.source_at === null) continue;
      const at = r.source_at.getTime();
      const ms = Math.max(0, publishedAt - at);
      const source = r.source ?? "unknown";
      (latencyMs[source] ??= []).push(ms);
      (toApplyMs[source] ??= []).push(Math.max(0, Math.min(ms, r.created_at.getTime() - at)));
      this.lastLatencyMs = ms;
    }
    const round: RelayRound = { published: rows.length, latencyMs, toApplyMs, roundMs };
    this.opts.onRound?.(round);
    if (this.opts.env === undefined) return;
    try {
      this.opts.nats.nc.publish(relaySubject(this.opts.env), JSON.stringify(round));
    } catch (err) {
      // Best effort: metrics only (core NATS; disconnected now, the next round reports again).
      this.opts.log.debug({ err }, "relay latency report not published");
    }
  }
}

/** The availability figures a round published, by channel and SKU (what the bundles containing them are derived from). */
function figuresOf(rows: Iterable<OutboxRecord>): PublishedFigures {
  const out: PublishedFigures = new Map();
  for (const r of rows) {
    const f = componentFigure(r.payload);
    if (!f) continue;
    let channel = out.get(f.channel);
    if (!channel) out.set(f.channel, (channel = new Map()));
    channel.set(f.sku, f.figure);
  }
  return out;
}
