import type { Sql } from "postgres";
import type { Logger } from "pino";
import { OUTBOX_CHANNEL } from "../../ledger/index.ts";
import { LeaseStore, type HeldLease } from "../wire/index.ts";
import type { NatsHandles } from "../wire/index.ts";
import { backoffDelay } from "../platform/index.ts";

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
  /** Environment name: latency reports go to `tally.<env>.relay`. */
  readonly env?: string;
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
}

/**
 * What the relay publishes on `tally.<env>.relay` after each round (core NATS, best effort): the
 * end-to-end latency of every availability change it published, from the source time of the oldest
 * command behind it to NATS having it, grouped by source system.
 */
export interface RelayRound {
  readonly published: number;
  /** Milliseconds, per source system. */
  readonly latencyMs: Readonly<Record<string, ReadonlyArray<number>>>;
}

export { relaySubject } from "../wire/index.ts";
import { RELAY_LEASE_KEY, relaySubject } from "../wire/index.ts";

/**
 * Publishes committed outbox rows to NATS and deletes them once NATS has them. One relay is active
 * per environment (a lease), so projections leave in commit order. Each publish carries
 * `Nats-Msg-Id: <instance>:<outbox id>`, so a crash between publish and delete never duplicates.
 */
export class OutboxRelay {
  published = 0;
  /** End-to-end latency of the last availability change published (ms), or null. */
  lastLatencyMs: number | null = null;
  #stopped = false;
  #wake: (() => void) | null = null;
  #lease: HeldLease | null = null;
  #leases: LeaseStore;
  #unlisten: (() => Promise<void>) | null = null;
  readonly done: Promise<void>;

  constructor(readonly opts: RelayOptions) {
    this.#leases = new LeaseStore(opts.nats.leases, opts.owner);
    this.done = this.#run();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    this.#wake?.();
    await this.done;
    await this.#unlisten?.().catch(() => {});
    if (this.#lease) await this.#leases.release(this.#lease);
  }

  async #run(): Promise<void> {
    const { sql, log, leaseTtlMs } = this.opts;
    try {
      const listener = await sql.listen(OUTBOX_CHANNEL, () => this.#wake?.());
      this.#unlisten = listener.unlisten;
    } catch (err) {
      log.warn({ err }, "outbox LISTEN failed; polling only");
    }
    let lastRenew = 0;
    let attempt = 0;
    while (!this.#stopped) {
      try {
        const now = Date.now();
        if (!this.#lease) {
          this.#lease = await this.#leases.tryAcquire(RELAY_LEASE_KEY);
          if (!this.#lease) {
            await this.#sleep(leaseTtlMs / 3);
            continue;
          }
          lastRenew = now;
          log.info("outbox relay lease acquired");
        } else if (now - lastRenew > leaseTtlMs / 3) {
          await this.#leases.renew(this.#lease);
          lastRenew = now;
        }
        const n = await this.#round();
        attempt = 0;
        if (n === 0) await this.#sleep(Math.min(1000, leaseTtlMs / 3));
      } catch (err) {
        if (this.#stopped) break;
        attempt++;
        log.warn({ err, attempt }, "outbox relay round failed; retrying after a backoff");
        if (this.#lease) {
          // Make sure the lease is still ours before the next round.
          try {
            await this.#leases.renew(this.#lease);
            lastRenew = Date.now();
          } catch {
            this.#lease = null;
          }
        }
        await this.#sleep(backoffDelay(attempt, 200, 10_000));
      }
    }
  }

  /** Publishes one page of the outbox; returns how many rows it handled. */
  async #round(): Promise<number> {
    const { sql, nats, instanceId } = this.opts;
    const rows = await sql<Array<OutboxRecord>>`
      select id, kind, subject, kv_key, payload::text as payload, source_at, source from outbox order by id limit ${this.opts.batch ?? 1000}`;
    if (rows.length === 0) return 0;
    // The last projection per key wins; earlier ones of the same page are superseded.
    const latestKv = new Map<string, OutboxRecord>();
    for (const r of rows) if (r.kind === "availability" && r.kv_key) latestKv.set(r.kv_key, r);
    await Promise.all([
      ...rows.map((r) => nats.js.publish(r.subject, r.payload, { msgID: `${instanceId}:${r.id}` })),
      ...[...latestKv.values()].map((r) => nats.availability.put(r.kv_key!, r.payload)),
    ]);
    const publishedAt = Date.now();
    await sql`delete from outbox where id = any(${sql.array(rows.map((r) => r.id))}::bigint[])`;
    this.published += rows.length;
    this.#report(rows, publishedAt);
    return rows.length;
  }

  /** Source time → published, per availability change, for the metrics of every API process. */
  #report(rows: ReadonlyArray<OutboxRecord>, publishedAt: number): void {
    const latencyMs: Record<string, Array<number>> = {};
    for (const r of rows) {
      if (r.kind !== "availability" || r.source_at === null) continue;
      const ms = Math.max(0, publishedAt - r.source_at.getTime());
      (latencyMs[r.source ?? "unknown"] ??= []).push(ms);
      this.lastLatencyMs = ms;
    }
    if (this.opts.env === undefined) return;
    const round: RelayRound = { published: rows.length, latencyMs };
    try {
      this.opts.nats.nc.publish(relaySubject(this.opts.env), JSON.stringify(round));
    } catch {
      // Best effort: metrics only.
    }
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      this.#wake = () => {
        clearTimeout(t);
        resolve();
      };
    });
  }
}
