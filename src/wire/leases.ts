import type { KV } from "@nats-io/kv";

/** The value stored under a lease key. */
export interface LeaseValue {
  readonly owner: string;
  /** The fencing epoch the owner writes under (0 until the takeover has been recorded in Postgres). */
  readonly epoch: number;
}

export interface HeldLease {
  readonly key: string;
  readonly epoch: number;
  revision: number;
}

/** Longest a lease release waits for NATS (see `release`). */
const RELEASE_WAIT_MS = 1000;

/** Waits for `work` at most `ms`; its failure is ignored (best effort: a release that cannot reach NATS). */
async function atMost(ms: number, work: Promise<unknown>): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([work, new Promise<void>((resolve) => (timer = setTimeout(resolve, ms)))]);
  } catch {
    // Not ours any more, or NATS unreachable: the TTL frees the key.
  } finally {
    clearTimeout(timer);
  }
  work.catch(() => {}); // a late failure is not an unhandled rejection
}

const encode = (v: LeaseValue) => new TextEncoder().encode(JSON.stringify(v));

/**
 * Leases in a NATS KV bucket whose TTL expires any lease not renewed in time. Every write is a
 * compare-and-set on the key's revision, so exactly one owner wins a free key and a renewal fails
 * once someone else holds it. The epoch itself is kept by Postgres (`claimPartition`), so it only
 * ever increases even after the KV entry has expired.
 */
export class LeaseStore {
  constructor(
    readonly kv: KV,
    readonly owner: string,
  ) {}

  /** Who holds `key`, or null when it is free (absent, deleted or expired). */
  async holder(key: string): Promise<LeaseValue | null> {
    const e = await this.kv.get(key);
    if (e?.operation !== "PUT" || e.length === 0) return null;
    return e.json<LeaseValue>();
  }

  /** Takes `key` if it is free; null when someone else got it first. */
  async tryAcquire(key: string): Promise<HeldLease | null> {
    if ((await this.holder(key)) !== null) return null;
    try {
      const revision = await this.kv.create(key, encode({ owner: this.owner, epoch: 0 }));
      return { key, epoch: 0, revision };
    } catch {
      return null; // lost the race: the key exists
    }
  }

  /** Records the fencing epoch in the lease (after Postgres assigned it). */
  async setEpoch(lease: HeldLease, epoch: number): Promise<HeldLease> {
    const revision = await this.kv.update(lease.key, encode({ owner: this.owner, epoch }), lease.revision);
    return { key: lease.key, epoch, revision };
  }

  /**
   * Renews the TTL; throws when the lease is no longer ours (expired and taken, or deleted).
   * "reclaimed": the key still held this lease (this owner, this epoch) under a revision the owner
   * did not hear of — an earlier renewal took effect but its answer was lost (its request timed out
   * on a slow server or a busy process) — and it was renewed from that revision. Taking that for a
   * takeover left the lease's work idle until the key's TTL freed it for the same owner.
   */
  async renew(lease: HeldLease): Promise<"renewed" | "reclaimed"> {
    try {
      lease.revision = await this.kv.update(lease.key, encode({ owner: this.owner, epoch: lease.epoch }), lease.revision);
      return "renewed";
    } catch (error) {
      // Only when the key moved on (the compare-and-set refused): a timeout (NATS down) is thrown at
      // once, not followed by a read that would wait as long again.
      if (/wrong last sequence/i.test((error as Error).message ?? "") && (await this.#reclaim(lease).catch(() => false))) return "reclaimed";
      throw error;
    }
  }

  async #reclaim(lease: HeldLease): Promise<boolean> {
    const e = await this.kv.get(lease.key);
    if (e?.operation !== "PUT" || e.length === 0 || e.revision === lease.revision) return false;
    const v = e.json<LeaseValue>();
    if (v.owner !== this.owner || v.epoch !== lease.epoch) return false;
    lease.revision = await this.kv.update(lease.key, encode({ owner: this.owner, epoch: lease.epoch }), e.revision);
    return true;
  }

  /**
   * Gives the lease up at once so another worker can take it without waiting for the TTL. Waits at
   * most RELEASE_WAIT_MS: with nats-server unreachable the delete would wait for its request timeout,
   * holding up a shutdown for nothing (the TTL frees the key anyway).
   */
  async release(lease: HeldLease): Promise<void> {
    await atMost(RELEASE_WAIT_MS, this.kv.delete(lease.key, { previousSeq: lease.revision }));
  }

  /** Removes a member key (see `heartbeat`) on the way out, waiting at most RELEASE_WAIT_MS like `release`. */
  async leave(key: string): Promise<void> {
    await atMost(RELEASE_WAIT_MS, this.kv.delete(key));
  }

  /** Announces a live member (for fair shares): a key that expires with the bucket TTL unless re-put. */
  async heartbeat(key: string): Promise<void> {
    await this.kv.put(key, encode({ owner: this.owner, epoch: 0 }));
  }

  /** How many live members announce themselves under `prefix`. */
  async countLive(prefix: string): Promise<number> {
    // Distinct keys: the listing's ordered consumer restarts after a missed heartbeat (a busy process)
    // and then delivers keys it already gave, so counting deliveries could count a lease twice.
    const keys = new Set<string>();
    for await (const key of await this.kv.keys(`${prefix}.>`)) keys.add(key);
    return keys.size;
  }
}
