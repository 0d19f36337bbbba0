import type { Sql } from "postgres";
import { LeaseLost, commitBatch, commitGroup, type BatchWrite } from "../ledger/index.ts";

interface Pending {
  readonly write: BatchWrite;
  readonly resolve: () => void;
  readonly reject: (error: unknown) => void;
}

/** What a worker's group commits did (for the bench and operators). */
export interface GroupCommitStats {
  /** Transactions committed (groups of one included). */
  commits: number;
  /** Partition batches they carried. */
  batches: number;
  /** Groups that failed as a whole and were committed one batch at a time to find whose the error was. */
  splits: number;
}

/**
 * Group commit for one worker process: every partition it holds hands its planned batch here, and
 * whatever has queued while the previous commits were in flight goes to Postgres as one transaction
 * (`commitGroup`). Under load the groups grow and commits per second fall to the rate Postgres
 * completes them; idle, a batch commits at once (a group of one, no timer).
 *
 * Fencing is per partition inside the transaction: each batch's statement writes only if its own
 * partition's checkpoint row still carries its lease epoch, so a partition whose lease was lost
 * writes nothing and its caller gets `LeaseLost`, while the others commit. A group that fails as a
 * whole (a duplicate command id, a data error, Postgres going away) is retried one batch per
 * transaction, so each partition sees its own outcome and its own error, as it would alone.
 */
export class GroupCommitter {
  readonly #queue: Array<Pending> = [];
  #running = 0;
  readonly stats: GroupCommitStats = { commits: 0, batches: 0, splits: 0 };
  /** Milliseconds commits were in flight, summed over lanes (up to `lanes` × the wall time; for the bench). */
  busyMs = 0;

  /**
   * `lanes`: groups in flight at once, each on its own connection. A worker runs two: while one group
   * is in Postgres and the worker's thread is busy planning (a large batch blocks it for a while),
   * the other can be, so Postgres is not left waiting for Node to pick the next group up. Groups
   * in flight together never share a partition (each partition has one batch in flight at most),
   * so they touch disjoint rows, as two worker processes do.
   */
  constructor(
    readonly sql: Sql,
    readonly lanes = 1,
  ) {}

  /** Resolves once `write` is committed; rejects with LeaseLost if its fence did not hold (nothing of it written). */
  commit(write: BatchWrite): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.#queue.push({ write, resolve, reject });
      if (this.#running < this.lanes) void this.#loop();
    });
  }

  async #loop(): Promise<void> {
    this.#running++;
    try {
      while (this.#queue.length > 0) {
        const from = performance.now();
        await this.#commit(this.#queue.splice(0));
        this.busyMs += performance.now() - from;
      }
    } finally {
      this.#running--;
    }
  }

  async #commit(group: ReadonlyArray<Pending>): Promise<void> {
    if (group.length === 1) {
      const [only] = group;
      this.stats.commits++;
      this.stats.batches++;
      await commitBatch(this.sql, only!.write).then(only!.resolve, only!.reject);
      return;
    }
    let fenced: Array<boolean>;
    try {
      fenced = await commitGroup(
        this.sql,
        group.map((p) => p.write),
      );
    } catch {
      // Nothing of the group was written: each batch alone, so the error reaches the partition it belongs to.
      this.stats.splits++;
      for (const p of group) {
        this.stats.commits++;
        this.stats.batches++;
        await commitBatch(this.sql, p.write).then(p.resolve, p.reject);
      }
      return;
    }
    this.stats.commits++;
    this.stats.batches += group.length;
    group.forEach((p, i) => {
      if (fenced[i]) p.resolve();
      else p.reject(new LeaseLost(p.write.partition, p.write.epoch));
    });
  }
}
