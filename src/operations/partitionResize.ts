import type { JetStreamManager } from "@nats-io/jetstream";
import type { Sql } from "postgres";
import { activeLayout, beginResize, checkpointsOf, drainingLayout, switchLayout, type LayoutRow } from "../../ledger/index.ts";
import type { Logger } from "pino";
import { LongRunningService, sleep } from "../platform/index.ts";
import { isNotFound, loadLayout, type PartitionLayout, type Topology } from "../wire/index.ts";

export interface ResizeDeps {
  readonly sql: Sql;
  readonly jsm: JetStreamManager;
  readonly topology: Topology;
}

/** One partition of the old layout while it drains: its checkpoint and the last message on its subject. */
export interface DrainProgress {
  readonly partition: number;
  readonly checkpoint: number;
  readonly lastSeq: number;
}

export interface LayoutStatus {
  /** The layout workers apply (the ledger's active one, or generation 0). */
  readonly applied: PartitionLayout;
  /** The layout the commands stream takes commands under (differs from `applied` while a resize drains). */
  readonly published: PartitionLayout | null;
  /** The resize under way, if any. */
  readonly draining: LayoutRow | null;
  /** The applied layout's partitions: checkpoint vs the last message on the subject each reads. */
  readonly partitions: ReadonlyArray<DrainProgress>;
}

export class ResizeError extends Error {
  override readonly name = "ResizeError";
}

/** Where the layouts stand: what workers apply, what publishers publish under, how far each partition is. */
export async function layoutStatus(deps: ResizeDeps): Promise<LayoutStatus> {
  const { sql, jsm, topology } = deps;
  const active = await activeLayout(sql);
  const applied: PartitionLayout = active
    ? { generation: active.generation, partitions: active.partitions }
    : { generation: 0, partitions: topology.basePartitions };
  const published = await loadLayout(jsm, topology);
  const draining = await drainingLayout(sql);
  return { applied, published, draining, partitions: await progress(deps, applied) };
}

async function progress(deps: ResizeDeps, layout: PartitionLayout): Promise<Array<DrainProgress>> {
  const t = deps.topology.withLayout(layout);
  const checkpoints = await checkpointsOf(deps.sql, layout.partitions);
  return Promise.all(
    Array.from({ length: layout.partitions }, async (_, partition) => {
      const m = await deps.jsm.streams.getMessage(t.commandsStream, { last_by_subj: t.commandSubject(partition) }).catch((error: unknown) => {
        if (isNotFound(error)) return null;
        throw error;
      });
      return { partition, checkpoint: checkpoints.get(partition) ?? 0, lastSeq: m?.seq ?? 0 };
    }),
  );
}

export interface ResizeOptions {
  /** Longest wait for the old layout to drain before giving up (the resize can be run again to resume). */
  readonly timeoutMs: number;
  /** Told each step as it happens. */
  readonly onStep?: (step: string) => void;
}

/**
 * Changes the partition count to `partitions`, keeping per-SKU order and exactly-once:
 * 1. records the new layout in the ledger as draining, with the cut: the commands stream's last
 *    sequence now;
 * 2. the cut itself: the commands stream's subjects become the new layout's, in one stream update, so
 *    from here on a publish under the old layout is refused (publishers read the layout again and
 *    publish under the new one) and nothing is published under the old layout any more;
 * 3. the workers keep applying the old layout; when each old partition's checkpoint covers the last
 *    message on its subject (checked in the transaction that switches, every checkpoint locked), the
 *    layout becomes active, every checkpoint starts at the cut and every lease epoch goes up;
 * 4. workers see the active layout at their next heartbeat and take the new layout's partitions.
 * A SKU's messages under the old layout are all applied before any under the new one, and no message
 * is read twice or skipped: the old subjects end below the switch, the new ones start after the cut.
 * Run again after a timeout or a crash, it resumes the resize under way; run again after it finished,
 * it does nothing (the layout already has `partitions`).
 */
export async function resizePartitions(deps: ResizeDeps, partitions: number, opts: ResizeOptions): Promise<LayoutRow> {
  const { sql, jsm, topology } = deps;
  const say = opts.onStep ?? (() => {});
  if (!Number.isInteger(partitions) || partitions < 1 || partitions > 1024)
    throw new ResizeError(`partitions: expected an integer from 1 to 1024, got ${partitions}`);
  let draining = await drainingLayout(sql);
  if (draining && draining.partitions !== partitions)
    throw new ResizeError(
      `partitions: a resize to ${draining.partitions} (generation ${draining.generation}) is under way; run \`tally partitions resize ${draining.partitions}\` to finish it first`,
    );
  const status = await layoutStatus(deps);
  const old = status.applied;
  if (!draining) {
    // Run again after it finished (the command killed after the switch, or a retry that cannot tell): nothing to do.
    if (old.partitions === partitions) {
      say(`the layout already has ${partitions} partitions (generation ${old.generation}); nothing to do`);
      return (await activeLayout(sql)) ?? { generation: 0, partitions, previousPartitions: partitions, state: "active", cutSeq: 0 };
    }
    const info = await jsm.streams.info(topology.commandsStream);
    await beginResize(sql, old.generation + 1, partitions, old.partitions, info.state.last_seq);
    draining = (await drainingLayout(sql))!;
    say(`recorded generation ${draining.generation} (${old.partitions} → ${partitions} partitions), cut at stream sequence ${draining.cutSeq}`);
  } else say(`resuming generation ${draining.generation} (${draining.previousPartitions} → ${partitions} partitions), cut at ${draining.cutSeq}`);
  const next: PartitionLayout = { generation: draining.generation, partitions };
  topology.setLayout(next);
  const deadline = Date.now() + opts.timeoutMs;
  let reported = "";
  for (;;) {
    const { behind } = await resizeStep(deps, draining, old, say);
    if (behind.length === 0) break;
    const line = `draining ${behind.length} of ${old.partitions} old partitions: ${behind.join(",")}`;
    if (line !== reported) say((reported = line));
    if (Date.now() > deadline)
      throw new ResizeError(
        `the old layout did not drain within ${opts.timeoutMs} ms (partitions ${behind.join(",")} behind: are their workers running?); nothing was lost: the new layout's commands wait in the stream; the workers finish the resize once it has drained (or run it again to watch)`,
      );
    await sleep(250);
  }
  say(`generation ${next.generation} is active: workers apply ${partitions} partitions from stream sequence ${draining.cutSeq + 1}`);
  return { ...draining, state: "active" };
}

/**
 * One step of the resize under way (`draining`, from the layout `old`): the cut, if the commands
 * stream does not take the new layout's subjects (the resize recorded but the cut not made, or another
 * process's start that wrote the stream's config back as it read it just before the cut: what was
 * published under the old layout meanwhile drains like the rest), then the switch, if every old
 * partition has drained. Returns the old partitions still behind (empty: the layout is active) and
 * whether this call switched it. Safe to run from several processes at once: the switch is one transaction that
 * locks the layout's row.
 */
async function resizeStep(
  deps: ResizeDeps,
  draining: LayoutRow,
  old: PartitionLayout,
  say: (step: string) => void,
): Promise<{ behind: Array<number>; switched: boolean }> {
  const { sql, jsm, topology } = deps;
  const next: PartitionLayout = { generation: draining.generation, partitions: draining.partitions };
  const subjects = topology.commandStreamSubjects(next);
  const current = await jsm.streams.info(topology.commandsStream);
  if (JSON.stringify(current.config.subjects) !== JSON.stringify(subjects)) {
    await jsm.streams.update(topology.commandsStream, { ...current.config, subjects });
    say(`the commands stream now takes commands under generation ${next.generation} only`);
  }
  const drain = await progress(deps, old);
  return switchLayout(sql, draining, new Map(drain.map((d) => [d.partition, d.lastSeq])));
}

export interface ResizeFinisherOptions extends ResizeDeps {
  /** How often to look for a resize under way (the lease TTL: a drained resize switches within one). */
  readonly intervalMs: number;
  readonly log: Logger;
}

/**
 * Finishes a resize whose command is no longer running (killed, its terminal closed, timed out): in
 * the worker role, every `intervalMs`, a resize under way gets its cut (if it was not made) and is
 * switched once the old layout has drained. Without it the new layout's commands would wait in the
 * stream until someone ran the resize again.
 */
export class ResizeFinisher extends LongRunningService {
  /** Resizes this process switched, for the metrics and tests. */
  switched = 0;

  constructor(readonly opts: ResizeFinisherOptions) {
    super(); // nothing starts here
  }

  protected async run(signal: AbortSignal): Promise<void> {
    const { log } = this.opts;
    while (!signal.aborted) {
      await sleep(this.opts.intervalMs, signal);
      if (signal.aborted) break;
      await this.step().catch((err: unknown) => log.warn({ err }, "could not advance the partition resize under way; trying again"));
    }
  }

  /** One look: nothing to do without a resize under way. True when this call switched the layout. */
  async step(): Promise<boolean> {
    const { sql, topology, log } = this.opts;
    const draining = await drainingLayout(sql);
    if (!draining) return false;
    const old: PartitionLayout = { generation: draining.generation - 1, partitions: draining.previousPartitions };
    const { switched } = await resizeStep(this.opts, draining, old, (step) => log.info({ generation: draining.generation }, step));
    if (!switched) return false;
    this.switched++;
    log.warn(
      { generation: draining.generation, partitions: draining.partitions, previous: draining.previousPartitions },
      "finished the partition resize under way (its command was not running): the new layout is active",
    );
    topology.setLayout({ generation: draining.generation, partitions: draining.partitions });
    return true;
  }
}
