import type { JetStreamManager } from "@nats-io/jetstream";
import type { Sql } from "postgres";
import { activeLayout, beginResize, checkpointsOf, drainingLayout, switchLayout, type LayoutRow } from "../../ledger/index.ts";
import { sleep } from "../platform/index.ts";
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
  // The cut: from this update on the stream takes commands only under the new layout.
  const info = await jsm.streams.info(topology.commandsStream);
  const subjects = topology.commandStreamSubjects(next);
  if (JSON.stringify(info.config.subjects) !== JSON.stringify(subjects)) {
    await jsm.streams.update(topology.commandsStream, { ...info.config, subjects });
    say(`the commands stream now takes commands under generation ${next.generation} only`);
  }
  topology.setLayout(next);
  const deadline = Date.now() + opts.timeoutMs;
  let reported = "";
  for (;;) {
    // Another process's start may have written the stream's config back as it read it just before the
    // cut (ensureTopology keeps the subjects it finds, but it is not atomic with this update): cut again.
    // What was published under the old layout meanwhile is drained below like the rest.
    const current = await jsm.streams.info(topology.commandsStream);
    if (JSON.stringify(current.config.subjects) !== JSON.stringify(subjects)) {
      await jsm.streams.update(topology.commandsStream, { ...current.config, subjects });
      say(`the commands stream's subjects had been set back; generation ${next.generation}'s again`);
    }
    const drain = await progress(deps, old);
    const behind = await switchLayout(sql, draining, new Map(drain.map((d) => [d.partition, d.lastSeq])));
    if (behind.length === 0) break;
    const line = `draining ${behind.length} of ${old.partitions} old partitions: ${behind.join(",")}`;
    if (line !== reported) say((reported = line));
    if (Date.now() > deadline)
      throw new ResizeError(
        `the old layout did not drain within ${opts.timeoutMs} ms (partitions ${behind.join(",")} behind: are their workers running?); nothing was lost: the new layout's commands wait in the stream; run the resize again to resume`,
      );
    await sleep(250);
  }
  say(`generation ${next.generation} is active: workers apply ${partitions} partitions from stream sequence ${draining.cutSeq + 1}`);
  return { ...draining, state: "active" };
}
