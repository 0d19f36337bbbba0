import { availableParallelism, hostname } from "node:os";
import { randomBytes } from "node:crypto";
import type { Sql } from "postgres";
import type { Logger } from "pino";
import { activeLayout, claimPartition } from "../ledger/index.ts";
import { DEFAULTS, LongRunningService, sleep } from "../src/platform/index.ts";
import { isNotFound, type NatsHandles } from "../src/wire/index.ts";
import type { PartitionLayout, Topology } from "../src/wire/index.ts";
import type { ChannelView } from "./batch.ts";
import { LeaseStore, type HeldLease } from "../src/wire/index.ts";
import { PartitionRunner, newWorkerMetrics, type PartitionStatus, type RunnerDeps, type WorkerMetrics } from "./partitionRunner.ts";
import { SkuStateCache } from "./skuStateCache.ts";
import { ApplyGate } from "./applyGate.ts";
import { GroupCommitter } from "./groupCommit.ts";

export interface WorkerOptions {
  readonly sql: Sql;
  readonly nats: NatsHandles;
  readonly topology: Topology;
  readonly channels: ReadonlyArray<ChannelView>;
  readonly log: Logger;
  readonly leaseTtlMs: number;
  /** Most commands per ledger transaction (default: TALLY_BATCH_MAX's, src/platform/settings.ts DEFAULTS). */
  readonly batchMax?: number;
  /** Most live SKU actors kept in memory (default: TALLY_MAX_ACTORS's). */
  readonly maxActors?: number;
  /** How many held partitions decide at once (their batches then commit together) (default: the machine's CPU count). */
  readonly applyConcurrency?: number;
  /** Unique per process; defaults to host-pid-random. */
  readonly workerId?: string;
  /** Re-creates the NATS streams and buckets (after the store was lost); without it a missing stream is an error. */
  readonly restoreTopology?: () => Promise<void>;
  /** Called with each outcome message the worker's partitions publish (its process's metrics). */
  readonly onOutcomes?: RunnerDeps["onOutcomes"];
  /** The company's valuation method and currency (default: moving average, EUR). */
  readonly valuation?: RunnerDeps["valuation"];
}

interface Held {
  lease: HeldLease;
  runner: PartitionRunner;
}

/**
 * A ledger worker: holds a fair share of the partitions through leases, runs one PartitionRunner
 * per held partition, renews its leases on a heartbeat and gives them up on stop.
 */
export class Worker extends LongRunningService {
  readonly id: string;
  readonly metrics: WorkerMetrics = newWorkerMetrics();
  readonly skus: SkuStateCache;
  readonly #leases: LeaseStore;
  /** Shared by the held partitions: how many decide at once. */
  readonly gate: ApplyGate;
  /** Shared by the held partitions: batches planned while a commit is in flight go to Postgres together. */
  readonly committer: GroupCommitter;
  readonly #held = new Map<number, Held>();
  /** The partition layout this worker applies (the ledger's active one; see `tally partitions resize`). */
  #layout: PartitionLayout | null = null;

  constructor(readonly opts: WorkerOptions) {
    super();
    this.id = (opts.workerId ?? `${hostname()}-${process.pid}-${randomBytes(3).toString("hex")}`).replace(/[^A-Za-z0-9_-]/g, "_");
    this.skus = new SkuStateCache(opts.maxActors ?? DEFAULTS.TALLY_MAX_ACTORS);
    this.#leases = new LeaseStore(opts.nats.leases, this.id);
    this.gate = new ApplyGate(opts.applyConcurrency ?? availableParallelism());
    this.committer = new GroupCommitter(opts.sql, 2);
  }

  /** Partitions this worker holds now. */
  held(): ReadonlyArray<number> {
    return [...this.#held.keys()].sort((a, b) => a - b);
  }

  /** How each held partition is doing (checkpoint, failed attempts in a row, stuck), lowest first. */
  statuses(): ReadonlyArray<PartitionStatus> {
    return [...this.#held.values()].map((h) => h.runner.status()).sort((a, b) => a.partition - b.partition);
  }

  /** How many partitions some worker (this one or another) holds a live lease on. */
  async partitionsHeld(): Promise<number> {
    return this.#leases.countLive("partition");
  }

  /**
   * Renewals run on their own short timer, so a slow acquisition round (or a busy event loop
   * elsewhere) does not let held leases expire; acquisition and rebalancing run less often.
   */
  protected async run(signal: AbortSignal): Promise<void> {
    await Promise.all([this.#heartbeatLoop(signal), this.#renewLoop(signal)]);
  }

  async #heartbeatLoop(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      await this.#heartbeat().catch(async (err) => {
        this.opts.log.error({ err }, "lease heartbeat failed");
        await this.#restoreIfLost();
      });
      await sleep(Math.max(200, Math.floor(this.opts.leaseTtlMs / 2)), signal);
    }
  }

  async #renewLoop(signal: AbortSignal): Promise<void> {
    const renewEvery = Math.max(200, Math.floor(this.opts.leaseTtlMs / 4));
    for (;;) {
      await sleep(renewEvery, signal);
      if (signal.aborted) return;
      await this.#renewAll().catch((err) => this.opts.log.error({ err }, "lease renewal round failed"));
    }
  }

  /** Renews every held lease at once. A lease that merely expired (nobody took it) is re-created under the same epoch. */
  async #renewAll(): Promise<void> {
    const { log } = this.opts;
    await Promise.all(
      [...this.#held].map(async ([partition, h]) => {
        if (h.runner.stopped) {
          if (this.#held.get(partition) === h) this.#held.delete(partition);
          return;
        }
        try {
          // "reclaimed": a renewal's answer was lost (its request timed out on a busy server); the lease
          // is still this worker's. Stopping there left the partition idle until the key's TTL freed
          // it for this same worker to take again (~TTL + a heartbeat).
          if ((await this.#leases.renew(h.lease)) === "reclaimed")
            log.warn({ partition }, "a lease renewal's answer was lost; the lease is still this worker's, renewed again");
        } catch (err) {
          // Stopping: the runners stop and the leases go anyway; taking one back would only wait on
          // NATS again (it may be down: that is often why the renewal failed).
          if (this.stopping) return;
          // Expired but free: take it back. The epoch in Postgres is unchanged unless someone took
          // the partition over meanwhile, and then this runner's next commit is fenced anyway.
          // Not free (or NATS is down): handled as taken over just below, where `err` is logged.
          const again = await this.#leases.tryAcquire(h.lease.key).catch(() => null);
          if (again) {
            h.lease = await this.#leases.setEpoch(again, h.lease.epoch);
            log.warn({ partition }, "lease had expired unclaimed (busy process?); re-created it");
            return;
          }
          log.warn({ partition, err }, "lease renewal failed: the lease was taken over; stopping the partition");
          if (this.#held.get(partition) === h) this.#held.delete(partition);
          await h.runner.stop();
        }
      }),
    );
  }

  /** Stops every runner after its batch in flight, then releases the leases so others take over at once. */
  override async stop(): Promise<boolean> {
    await super.stop();
    await Promise.all(
      [...this.#held.values()].map(async (h) => {
        await h.runner.stop();
        await this.#leases.release(h.lease);
      }),
    );
    this.#held.clear();
    await this.#leases.leave(this.#memberKey());
    return true;
  }

  /**
   * A NATS store that was wiped (or a server replaced without its store) leaves no streams and no
   * buckets: heartbeats and every runner then fail. Re-creates them, so the partitions can be
   * taken again and their runners find (and reset to) the new commands stream.
   */
  async #restoreIfLost(): Promise<void> {
    const { nats, topology, log, restoreTopology } = this.opts;
    if (!restoreTopology || this.stopping) return;
    const missing = await Promise.all(
      [topology.commandsStream, topology.leasesBucketStream].map((name) =>
        nats.jsm.streams.info(name).then(
          () => false,
          (e: unknown) => isNotFound(e),
        ),
      ),
    );
    if (!missing.some(Boolean)) return;
    log.error("NATS streams or buckets are missing (was the store lost?); re-creating the topology");
    await restoreTopology().catch((err: unknown) => log.error({ err }, "could not re-create the NATS topology"));
  }

  #memberKey(): string {
    return this.opts.topology.workerMemberKey(this.id);
  }

  /** The layout applied now: null until the first heartbeat has read it. */
  layout(): PartitionLayout | null {
    return this.#layout;
  }

  /**
   * Follows the ledger's active layout. A resize switches only after every old partition was drained,
   * and its switch raised every lease epoch (so the old runners are fenced already): the runners stop,
   * their leases go, and the partitions of the new layout are taken from here on.
   */
  async #followLayout(): Promise<Topology> {
    const row = await activeLayout(this.opts.sql);
    const now: PartitionLayout = row
      ? { generation: row.generation, partitions: row.partitions }
      : { generation: 0, partitions: this.opts.topology.basePartitions };
    if (this.#layout && this.#layout.generation !== now.generation) {
      this.opts.log.warn({ from: this.#layout, to: now }, "the partition layout changed; handing over the old layout's partitions");
      const held = [...this.#held.values()];
      this.#held.clear();
      await Promise.all(
        held.map(async (h) => {
          await h.runner.stop();
          await this.#leases.release(h.lease);
        }),
      );
      this.skus.evict(() => true);
    }
    this.#layout = now;
    return this.opts.topology.withLayout(now);
  }

  async #heartbeat(): Promise<void> {
    const { log } = this.opts;
    await this.#leases.heartbeat(this.#memberKey());
    if (this.stopping) return;
    const topology = await this.#followLayout();
    if (this.stopping) return;
    const members = Math.max(1, await this.#leases.countLive(topology.workerMembers));
    const share = Math.ceil(topology.partitions / members);
    // Start the scan at a per-worker offset so concurrent workers do not all race for partition 0.
    const offset = hashOf(this.id) % topology.partitions;
    for (let i = 0; i < topology.partitions && this.#held.size < share && !this.stopping; i++) {
      const partition = (offset + i) % topology.partitions;
      if (this.#held.has(partition)) continue;
      await this.#tryTake(partition, topology);
    }
    // Above a fair share (another worker joined): hand the surplus back.
    while (this.#held.size > share && !this.stopping) {
      const [partition, h] = [...this.#held.entries()].pop()!;
      this.#held.delete(partition);
      await h.runner.stop();
      await this.#leases.release(h.lease);
      log.info({ partition }, "released a partition to rebalance");
    }
  }

  async #tryTake(partition: number, topology: Topology): Promise<void> {
    const { sql, log } = this.opts;
    const lease = await this.#leases.tryAcquire(topology.partitionLeaseKey(partition));
    if (!lease) return;
    try {
      const { epoch } = await claimPartition(sql, partition);
      const held = await this.#leases.setEpoch(lease, epoch);
      const runner: PartitionRunner = new PartitionRunner(partition, epoch, {
        sql,
        nats: this.opts.nats,
        topology,
        channels: this.opts.channels,
        skus: this.skus,
        log: log.child({ partition }),
        batchMax: this.opts.batchMax ?? DEFAULTS.TALLY_BATCH_MAX,
        gate: this.gate,
        committer: this.committer,
        metrics: this.metrics,
        ...(this.opts.restoreTopology ? { restoreTopology: this.opts.restoreTopology } : {}),
        ...(this.opts.onOutcomes ? { onOutcomes: this.opts.onOutcomes } : {}),
        ...(this.opts.valuation ? { valuation: this.opts.valuation } : {}),
        onLeaseLost: (p) => {
          const h = this.#held.get(p);
          if (h?.runner !== runner) return;
          this.#held.delete(p);
          // Fenced by a newer epoch: if the lease key is still the one this worker wrote, give it up at
          // once (a commands-stream reset fences every runner), so the partition is taken again now.
          void this.#leases.release(h.lease);
        },
      }).start();
      this.#held.set(partition, { lease: held, runner });
      log.info({ partition, epoch }, "partition acquired");
    } catch (err) {
      // Another worker (or a fence) wins: the lease goes back and the next heartbeat tries again.
      log.warn({ partition, err }, "could not take the partition over; releasing the lease");
      await this.#leases.release(lease);
    }
  }
}

function hashOf(s: string): number {
  let h = 0;
  for (let i = 0; i < s.length; i++) h = (Math.imul(h, 31) + s.charCodeAt(i)) >>> 0;
  return h;
}
