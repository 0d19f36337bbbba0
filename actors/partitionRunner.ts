import { AckPolicy, DeliverPolicy, type ConsumerMessages, type JsMsg } from "@nats-io/jetstream";
import type { Sql } from "postgres";
import type { Logger } from "pino";
import {
  LeaseLost,
  clearStuck,
  commitBatch,
  ensureStreamIdentity,
  knownCommandIds,
  quantityJson,
  markSkipsDone,
  pendingSkips,
  readCheckpoint,
  recordStuck,
  type OutcomeRow,
} from "../ledger/index.ts";
import { isNotFound } from "../src/wire/index.ts";
import type { NatsHandles } from "../src/wire/index.ts";
import type { OutcomeBatch, Topology } from "../src/wire/index.ts";
import { describeError, isPermanentDataError, isTransientDbError } from "../src/platform/index.ts";
import { LongRunningService, backoffDelay, sleep } from "../src/platform/index.ts";
import { planBatch, type ChannelView, type IncomingCommand } from "./batch.ts";
import type { ValuationSettings } from "./valuation.ts";
import { decodeCommand, encodeCommand, type AlertEvent } from "../src/contract/index.ts";
import { decodeEnvelope } from "../src/wire/index.ts";
import type { SkuStateCache } from "./skuStateCache.ts";
import type { ApplyGate } from "./applyGate.ts";
import type { GroupCommitter } from "./groupCommit.ts";
import { deadLetter, publishDeadLetter, type DeadLetter } from "../src/wire/index.ts";
import { DeliveryGap, DeliveryOrder } from "../src/wire/index.ts";

const nanos = (ms: number): number => ms * 1_000_000;
/** Failed attempts in a row after which a stuck partition raises an alert event. */
const ALERT_AFTER_ATTEMPTS = 5;
/**
 * A subscription that stayed up this long without a batch to apply was caught up: a failure after it
 * (a consumer lost in a NATS blip) starts a new count of attempts rather than adding to an old one.
 */
const IDLE_RESET_MS = 30_000;
/** After a duplicate, this many batches look already-decided command ids up before deciding. */
const LOOKUP_RUN = 50;
/**
 * The consumer's pull requests: each lasts PULL_EXPIRES_MS, and while one waits the server sends an
 * idle heartbeat every PULL_HEARTBEAT_MS. A pull that goes quiet (its request or the server's answer
 * to it lost, or a 409 the client waits out) is re-issued by nats.js only after two missed
 * heartbeats: with its defaults (30 s pulls, 15 s heartbeats) the partition sat idle for ~30 s with
 * its messages waiting in the stream. Heartbeats cost the server one small message per interval per
 * idle partition.
 */
export const PULL_EXPIRES_MS = 10_000;
export const PULL_HEARTBEAT_MS = 2_000;

/** The commit failed on a command id that already has an outcome (or ledger legs): a duplicate. */
function isDuplicateOutcome(error: unknown): boolean {
  const e = error as { code?: string; constraint_name?: string } | null;
  return e?.code === "23505" && (e.constraint_name === "command_outcomes_pkey" || e.constraint_name === "ledger_entries_command_leg");
}

export interface RunnerDeps {
  readonly sql: Sql;
  readonly nats: NatsHandles;
  readonly topology: Topology;
  readonly channels: ReadonlyArray<ChannelView>;
  readonly skus: SkuStateCache;
  readonly log: Logger;
  readonly batchMax: number;
  /** Shared by the worker's partitions: how many decide at once (the commit itself is outside it). */
  readonly gate: ApplyGate;
  /** Shared by the worker's partitions: batches planned meanwhile commit together, each fenced by its own epoch. */
  readonly committer: GroupCommitter;
  readonly metrics: WorkerMetrics;
  /** Called when the partition's lease turned out to be lost at commit time. */
  readonly onLeaseLost: (partition: number) => void;
  /** Re-creates the streams and buckets when the commands stream is missing (a wiped or lost NATS store). */
  readonly restoreTopology?: () => Promise<void>;
  /** Called with each outcome message this partition publishes (the worker process's own metrics). */
  readonly onOutcomes?: (batch: OutcomeBatch) => void;
  /** The company's valuation method and currency (default: moving average, EUR). */
  readonly valuation?: ValuationSettings;
}

/** How a partition is doing, for readiness and operators. */
export interface PartitionStatus {
  readonly partition: number;
  /** The last applied stream sequence. */
  readonly checkpoint: number;
  /** Failed attempts in a row (0 when the last batch committed). */
  readonly attempts: number;
  /** True once the failures in a row reached the alert threshold. */
  readonly stuck: boolean;
  /** While failing: the stream sequence of the message it fails on. */
  readonly stuckAt: number | null;
  readonly lastError: string | null;
}

/** Counters a worker exposes (and tests read). */
export interface WorkerMetrics {
  batches: number;
  applied: number;
  rejected: number;
  /** Reserves refused for want of stock (published as `hold_refused`). */
  holdsRefused: number;
  skippedCheckpoint: number;
  skippedDuplicate: number;
  deadLettered: number;
  /** Commands the ledger refused to store (a data error), dead-lettered so the partition moves on. */
  poisoned: number;
  /** Messages dead-lettered because an operator asked to skip them. */
  skipped: number;
  /** Times the commands stream turned out to be a new one and the checkpoints were reset to it. */
  streamResets: number;
  leaseLost: number;
  retries: number;
  /** Batches whose optimistic commit met a command decided before, decided again with the lookup. */
  duplicateRetries: number;
  /** Times a consumer skipped deliveries (lost in transit) and the partition read again from its checkpoint. */
  deliveryGaps: number;
  /** Times a partition's pull went quiet (two idle heartbeats missed) and was issued again. */
  pullsStalled: number;
  /** Milliseconds spent per stage of the apply path, summed over batches (where the time goes). */
  /** Milliseconds per stage, summed over batches; `gate` is the wait for an apply permit. */
  stageMs: { gate: number; decode: number; dedupe: number; activate: number; plan: number; commit: number };
}

export const newWorkerMetrics = (): WorkerMetrics => ({
  batches: 0,
  applied: 0,
  rejected: 0,
  holdsRefused: 0,
  skippedCheckpoint: 0,
  skippedDuplicate: 0,
  deadLettered: 0,
  poisoned: 0,
  skipped: 0,
  streamResets: 0,
  leaseLost: 0,
  retries: 0,
  duplicateRetries: 0,
  deliveryGaps: 0,
  pullsStalled: 0,
  stageMs: { gate: 0, decode: 0, dedupe: 0, activate: 0, plan: 0, commit: 0 },
});

/**
 * Applies one partition's messages in stream order while this worker holds its lease at `epoch`.
 * Messages are gathered into batches (whatever has arrived, up to `batchMax`); each batch is one
 * Postgres transaction fenced by the epoch, and is acknowledged to JetStream only after it commits.
 * On a transient failure the runner backs off and resumes from the checkpoint in Postgres.
 */
export class PartitionRunner extends LongRunningService {
  /** Stopping, or stopped on its own (the lease was lost). */
  #stopped = false;
  #lastSeq = 0;
  #queue: Array<JsMsg> = [];
  #wake: (() => void) | null = null;
  #messages: ConsumerMessages | null = null;
  #generation = 0;
  /** Batches still to decide with the lookup of already-decided command ids (after a duplicate). */
  #lookupsAhead = 0;
  /**
   * Failed attempts in a row. Only a committed batch resets it, not a successful re-subscribe, so the
   * backoff grows and the alert fires for a partition that subscribes fine and then fails every time.
   */
  #attempt = 0;
  #lastError: unknown = null;
  /** True from the start: a row another worker left (stuck, then the partition moved here) is cleared by the first commit. */
  #reportedStuck = true;
  #subscribedAt = 0;
  #triedSinceSubscribe = false;
  /**
   * The first message of the batch being applied (stream sequences interleave across partitions, so
   * it is not the checkpoint + 1): after a failure, the message the partition is stuck at.
   */
  #applyingSeq: number | null = null;
  /** Messages an operator asked to skip (stream sequence → who asked), read at each (re)subscribe. */
  #skips = new Map<number, string>();

  constructor(
    readonly partition: number,
    readonly epoch: number,
    readonly deps: RunnerDeps,
  ) {
    super();
  }

  /** `stop()` stops after the batch in flight (if any); it resolves when the runner has stopped. */
  protected override onStop(): void {
    this.#stopped = true;
    this.#messages?.stop();
    this.#wake?.();
  }

  get stopped(): boolean {
    return this.#stopped;
  }

  status(): PartitionStatus {
    return {
      partition: this.partition,
      checkpoint: this.#lastSeq,
      attempts: this.#attempt,
      stuck: this.#attempt >= ALERT_AFTER_ATTEMPTS,
      stuckAt: this.#attempt > 0 ? this.#stuckSeq() : null,
      lastError: this.#lastError === null ? null : describeError(this.#lastError),
    };
  }

  protected async run(): Promise<void> {
    const { log } = this.deps;
    while (!this.#stopped) {
      try {
        await this.#subscribe();
        await this.#drain();
      } catch (error) {
        this.#unsubscribe();
        this.deps.skus.evict((sku) => this.deps.topology.partitionOf(sku) === this.partition);
        if (error instanceof LeaseLost) {
          this.deps.metrics.leaseLost++;
          log.warn({ epoch: this.epoch }, "lease lost: another worker took the partition over; stopping");
          this.#stopped = true;
          this.deps.onLeaseLost(this.partition);
          break;
        }
        if (this.#stopped) break;
        // A delivery gap: nothing was acknowledged past it, and the new consumer starts at the checkpoint.
        if (error instanceof DeliveryGap) this.deps.metrics.deliveryGaps++;
        if (!this.#triedSinceSubscribe && this.#subscribedAt > 0 && performance.now() - this.#subscribedAt > IDLE_RESET_MS) this.#attempt = 0;
        const attempt = ++this.#attempt;
        this.#lastError = error;
        this.deps.metrics.retries++;
        const delay = backoffDelay(attempt, 200, 10_000);
        log[isTransientDbError(error) || error instanceof DeliveryGap ? "warn" : "error"](
          { err: error, attempt, delayMs: Math.round(delay) },
          "partition apply failed; resuming from the checkpoint after a backoff",
        );
        // The partition never skips ahead on its own: it keeps retrying (one message per batch, so
        // the stuck one is known), says so loudly, and waits for an operator's skip (tally dlq skip).
        if (attempt >= ALERT_AFTER_ATTEMPTS) await this.#reportStuck(error, attempt);
        if (attempt === ALERT_AFTER_ATTEMPTS || (attempt > ALERT_AFTER_ATTEMPTS && attempt % 20 === 0)) void this.#alert(error, attempt);
        await this.#sleep(delay);
      }
    }
    this.#unsubscribe();
  }

  /** (Re)creates this partition's consumer, starting right after the checkpoint. */
  async #subscribe(): Promise<void> {
    const { sql, nats, topology } = this.deps;
    const stream = topology.commandsStream;
    const identity = await this.#checkStream();
    this.#lastSeq = await readCheckpoint(sql, this.partition, this.epoch);
    this.#skips = await pendingSkips(sql, this.partition, this.#lastSeq);
    this.#queue = [];
    this.#subscribedAt = 0;
    this.#triedSinceSubscribe = false;
    const prefix = topology.partitionConsumerPrefix(this.partition);
    const name = `${prefix}${this.epoch}_${++this.#generation}`;
    for await (const info of nats.jsm.consumers.list(stream)) {
      // Best effort: an old consumer left behind expires after its inactive_threshold.
      if (info.name.startsWith(prefix))
        await nats.jsm.consumers
          .delete(stream, info.name)
          .catch((err: unknown) => this.deps.log.debug({ err, consumer: info.name }, "could not delete an old consumer"));
    }
    const subject = topology.commandSubject(this.partition);
    const consumerConfig = {
      durable_name: name,
      ack_policy: AckPolicy.All,
      ...(this.#lastSeq > 0
        ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: this.#lastSeq + 1 }
        : { deliver_policy: DeliverPolicy.All }),
      ack_wait: nanos(120_000),
      max_ack_pending: 4000,
      inactive_threshold: nanos(600_000),
    };
    // While a resize drains this partition's layout, its subject is no longer one of the stream's and
    // JetStream refuses it as a filter: the consumer then reads the whole stream from the checkpoint
    // and this runner keeps only its subject's messages (acknowledging the others, which are not its).
    let onlySubject: string | null = null;
    await nats.jsm.consumers.add(stream, { ...consumerConfig, filter_subject: subject }).catch(async (error: unknown) => {
      if (!/not a valid subset of the interest subjects/i.test((error as Error).message ?? "")) throw error;
      onlySubject = subject;
      this.deps.log.warn({ subject }, "the partition's subject left the commands stream (a resize drains it); reading the stream unfiltered");
      await nats.jsm.consumers.add(stream, consumerConfig);
    });
    // The stream replaced between the check and the consumer: start over rather than read it from an old checkpoint.
    if ((await nats.jsm.streams.info(stream)).created !== identity) throw new Error(`${stream} was re-created while subscribing`);
    const consumer = await nats.js.consumers.get(stream, name);
    this.#subscribedAt = performance.now();
    const generation = this.#generation;
    const order = new DeliveryOrder();
    this.#messages = await consumer.consume({
      max_messages: 1000,
      expires: PULL_EXPIRES_MS,
      idle_heartbeat: PULL_HEARTBEAT_MS,
      // A consumer or stream that vanished (a wiped NATS store) ends the subscription, so the runner
      // re-subscribes and checks the stream, instead of waiting for the old consumer to come back.
      abort_on_missing_resource: true,
      callback: (m) => {
        if (generation !== this.#generation || this.#failure) return;
        // A skipped delivery must stop the partition before it acknowledges (AckPolicy.All) past it.
        const gap = order.next(m);
        if (gap) {
          this.#failure = gap;
          this.#wake?.();
          return;
        }
        if (onlySubject !== null && m.subject !== onlySubject) {
          // Safe under AckPolicy.All: a runner reads again from its checkpoint after any failure, never from an ack.
          m.ack();
          return;
        }
        this.#queue.push(m);
        this.#wake?.();
      },
    });
    this.#watchPulls(this.#messages, generation);
    void this.#messages.closed().then((err) => {
      if (err && generation === this.#generation && !this.#stopped) {
        this.deps.log.warn({ err }, "consumer closed with an error");
        this.#failure = err;
        this.#wake?.();
      }
    });
  }

  /**
   * Says when the consumer's pulls run into trouble the client handles by itself (so it would otherwise
   * go unseen): a pull gone quiet, re-issued after two missed heartbeats (counted, as the time the
   * partition waited with messages in the stream), a request limit exceeded, a server that did not answer.
   */
  #watchPulls(messages: ConsumerMessages, generation: number): void {
    const { log, metrics } = this.deps;
    void (async () => {
      for await (const s of messages.status()) {
        if (generation !== this.#generation || this.#stopped) return;
        if (s.type === "heartbeats_missed") {
          metrics.pullsStalled++;
          log.warn({ missed: s.count, heartbeatMs: PULL_HEARTBEAT_MS }, "the partition's pull went quiet (idle heartbeats missed); pulling again");
        } else if (s.type === "exceeded_limits" || s.type === "no_responders" || (s.type === "debug" && s.code !== 408))
          log.warn({ status: s }, "the partition's pull was refused or not answered");
      }
    })().catch((err: unknown) => log.debug({ err }, "consumer status stream ended"));
  }

  #failure: unknown = null;
  /** The apply permit held while deciding; given back before the commit, so other partitions plan the next group meanwhile. */
  #permit: (() => void) | null = null;

  /**
   * Compares the commands stream with the one the checkpoints belong to (its creation time, kept in
   * Postgres). A re-created stream restarts at sequence 1, below the checkpoints: its commands would
   * be skipped. The checkpoints are then reset to it (see ensureStreamIdentity), loudly. A missing
   * stream (a wiped store) is re-created first. Returns the stream's creation time.
   */
  async #checkStream(): Promise<string> {
    const { sql, nats, topology, log } = this.deps;
    const stream = topology.commandsStream;
    const info = await nats.jsm.streams.info(stream).catch(async (error: unknown) => {
      if (!isNotFound(error) || !this.deps.restoreTopology) throw error;
      log.error({ stream }, "the commands stream is missing (was the NATS store lost?); re-creating the topology");
      await this.deps.restoreTopology();
      return nats.jsm.streams.info(stream);
    });
    const check = await ensureStreamIdentity(sql, stream, info.created, info.state.last_seq);
    if (check.kind === "reset") {
      this.deps.metrics.streamResets++;
      const payload = {
        type: "alert",
        kind: "commands_stream_replaced",
        stream,
        oldCreated: check.oldCreated,
        newCreated: info.created,
        checkpoints: check.checkpoints,
        detail:
          "the commands stream is not the one the checkpoints belong to (re-created, or its store was lost): the checkpoints were reset to the new stream; commands already applied are skipped by their ids; commands that were only in the old stream are lost from NATS",
        at: new Date().toISOString(),
      } satisfies AlertEvent;
      log.error(payload, "commands stream replaced: partition checkpoints reset to the new stream");
      this.#publishAlert(payload);
    }
    return info.created;
  }

  #unsubscribe(): void {
    this.#generation++;
    this.#failure = null;
    this.#messages?.stop();
    this.#messages = null;
    this.#queue = [];
  }

  async #drain(): Promise<void> {
    while (!this.#stopped) {
      if (this.#failure) {
        const f = this.#failure;
        this.#failure = null;
        throw f;
      }
      if (this.#queue.length === 0) {
        await new Promise<void>((resolve) => {
          this.#wake = resolve;
        });
        this.#wake = null;
        continue;
      }
      // Wait for a permit first: what arrives meanwhile joins this batch. A stop ends the wait.
      const waitFrom = performance.now();
      const release = await this.deps.gate.acquire(this.signal);
      if (!release) continue;
      this.#permit = release;
      const waited = performance.now() - waitFrom;
      try {
        if (this.#failure || this.#stopped) continue; // the loop's checks come first
        // After a failure, one message per batch until one commits: the failing message is then exactly
        // the one after the checkpoint (the stuck one operators see), and the others are not held up.
        const batch = this.#queue.splice(0, this.#attempt > 0 ? 1 : this.deps.batchMax);
        if (batch.length === 0) continue;
        // Counted per committed batch, as the other stages are.
        if (await this.#apply(batch)) this.deps.metrics.stageMs.gate += waited;
      } finally {
        this.#permit = null;
        release();
      }
    }
  }

  /** The commands of fresh messages, and dead letters for what cannot be applied (skipped, undecodable, wrong partition). */
  #decode(fresh: ReadonlyArray<JsMsg>): { incoming: Array<IncomingCommand>; dead: Array<DeadLetter> } {
    const incoming: Array<IncomingCommand> = [];
    const dead: Array<DeadLetter> = [];
    for (const m of fresh) {
      const skippedBy = this.#skips.get(m.seq);
      if (skippedBy !== undefined) {
        const was = this.#lastError === null ? "" : `; it was failing with: ${describeError(this.#lastError)}`;
        dead.push(
          deadLetter("commands", `skipped by an operator (${skippedBy})${was}`, m.data, { stream_seq: m.seq, subject: m.subject, skipped: true }),
        );
        this.deps.metrics.skipped++;
        continue;
      }
      const envelope = decodeEnvelope(m.data);
      if (!envelope.ok) {
        dead.push(deadLetter("commands", envelope.reason, m.data, { stream_seq: m.seq, subject: m.subject }));
        continue;
      }
      envelope.commands.forEach((raw, index) => {
        const decoded = decodeCommand(raw);
        if (decoded._tag === "Left") {
          dead.push(deadLetter("commands", decoded.left.message, raw, { stream_seq: m.seq, index }));
          return;
        }
        const command = decoded.right;
        if (this.deps.topology.partitionOf(command.sku) !== this.partition) {
          dead.push(
            deadLetter(
              "commands",
              `sku: ${command.sku} belongs to partition ${this.deps.topology.partitionOf(command.sku)}, not ${this.partition}`,
              raw,
              {
                stream_seq: m.seq,
                index,
              },
            ),
          );
          return;
        }
        incoming.push({ command, streamSeq: m.seq });
      });
    }
    return { incoming, dead };
  }

  /** Decodes, deduplicates, decides and commits one batch; acknowledges it after the commit. False if nothing was new. */
  async #apply(messages: ReadonlyArray<JsMsg>): Promise<boolean> {
    const { sql, metrics } = this.deps;
    const startedAt = performance.now();
    this.#triedSinceSubscribe = true;
    const fresh = messages.filter((m) => m.seq > this.#lastSeq);
    this.#applyingSeq = fresh[0]?.seq ?? this.#applyingSeq;
    metrics.skippedCheckpoint += messages.length - fresh.length;
    if (fresh.length === 0) {
      messages[messages.length - 1]?.ack();
      return false;
    }
    const { incoming, dead } = this.#decode(fresh);
    const decodedAt = performance.now();
    metrics.stageMs.decode += decodedAt - startedAt;
    // Optimistic: most batches hold no command decided before, so the lookup is skipped and the
    // commit's unique keys (an outcome per command id) catch a duplicate, writing nothing; the batch
    // is then decided again with the lookup, as are the next few (duplicates come in runs: a
    // re-sent transaction, a replay after a restart).
    if (dead.length > 0) await this.#publishDead(dead);
    const optimistic = this.#lookupsAhead === 0;
    if (!optimistic) this.#lookupsAhead--;
    const lookup = () =>
      knownCommandIds(
        sql,
        incoming.map((c) => c.command.id),
      );
    const decide = async (known: ReadonlySet<string> | null) => this.#decideAndCommit(messages, fresh, incoming, dead, known, startedAt, decodedAt);
    try {
      try {
        await decide(optimistic ? null : await lookup());
      } catch (error) {
        if (!optimistic || !isDuplicateOutcome(error)) throw error;
        metrics.duplicateRetries++;
        this.#lookupsAhead = LOOKUP_RUN;
        await decide(await lookup());
      }
    } catch (error) {
      // The ledger cannot store something in this batch. Several messages: retry one at a time (the
      // retry loop does that after any failure). One message: find the command by committing its
      // commands one by one; each one refused is dead-lettered with its reason, the others apply.
      if (!isPermanentDataError(error) || fresh.length > 1) throw error;
      this.deps.log.warn({ err: error, streamSeq: fresh[0]!.seq }, "the ledger refused a command of this message; isolating it");
      await this.#applyOneByOne(messages, fresh[0]!, incoming);
      metrics.deadLettered += dead.length;
    }
    // The batch committed; a skip request left pending is marked done by a later batch (or stays listed).
    if (dead.some((d) => d.context.skipped === true))
      await markSkipsDone(sql, this.partition, this.#lastSeq).catch((err: unknown) =>
        this.deps.log.warn({ err }, "could not mark the skip requests done"),
      );
    this.#progressed();
    return true;
  }

  /** The message the partition fails on: the first of the last batch tried, or (failing before any) the checkpoint + 1. */
  #stuckSeq(): number {
    return this.#applyingSeq ?? this.#lastSeq + 1;
  }

  /** A batch committed: the partition advances, so it is no longer stuck. */
  #progressed(): void {
    this.#attempt = 0;
    this.#applyingSeq = null;
    this.#lastError = null;
    if (this.#reportedStuck) {
      this.#reportedStuck = false;
      void clearStuck(this.deps.sql, this.partition).then(
        (was) => was && this.deps.log.warn("partition advancing again"),
        () => (this.#reportedStuck = true),
      );
    }
  }

  /**
   * Applies one message's commands one per transaction, the checkpoint held back, so that a command
   * the ledger refuses (a data error: it can never be stored) is found. Each refused one is
   * dead-lettered with the database's reason and recorded as rejected (`unstorable`), so whoever
   * waits for its outcome hears; then the checkpoint moves past the message. Transient failures
   * still go to the retry loop: what committed is not applied twice (its outcome exists).
   */
  async #applyOneByOne(messages: ReadonlyArray<JsMsg>, message: JsMsg, incoming: ReadonlyArray<IncomingCommand>): Promise<void> {
    const { sql, metrics, skus, topology } = this.deps;
    skus.evict((sku) => topology.partitionOf(sku) === this.partition);
    const known = await knownCommandIds(
      sql,
      incoming.map((c) => c.command.id),
    );
    const refused: Array<{ readonly incoming: IncomingCommand; readonly error: unknown }> = [];
    for (const c of incoming) {
      if (known.has(c.command.id)) continue;
      known.add(c.command.id);
      try {
        await this.#commitAlone([c], this.#lastSeq, []);
      } catch (error) {
        if (!isPermanentDataError(error)) throw error;
        skus.evict((sku) => sku === c.command.sku);
        refused.push({ incoming: c, error });
      }
    }
    const letters = refused.map(({ incoming: { command, streamSeq }, error }) =>
      deadLetter("commands", `the ledger cannot store this command: ${describeError(error)}`, encodeCommand(command), {
        stream_seq: streamSeq,
        command_id: command.id,
        sqlstate: (error as { code?: string }).code ?? null,
      }),
    );
    if (letters.length > 0) await this.#publishDead(letters);
    const outcomes: Array<OutcomeRow> = refused.map(({ incoming: { command, streamSeq }, error }) => ({
      commandId: command.id,
      streamSeq,
      sku: command.sku,
      type: command.type,
      status: "rejected",
      reason: "unstorable",
      detail: { reason: "unstorable", message: describeError(error) },
    }));
    try {
      await this.#commitAlone([], message.seq, outcomes);
    } catch (error) {
      // Even the rejection cannot be stored: the dead letter is the record; move on without it.
      if (!isPermanentDataError(error)) throw error;
      await this.#commitAlone([], message.seq, []);
    }
    this.#lastSeq = message.seq;
    metrics.poisoned += refused.length;
    metrics.batches++;
    messages[messages.length - 1]!.ack();
    this.deps.log.error({ streamSeq: message.seq, refused: letters.map((l) => l.reason) }, "commands the ledger cannot store were dead-lettered");
  }

  /** Decides and commits `todo` in one transaction, with extra outcome rows, moving the checkpoint to at least `lastSeq`. */
  async #commitAlone(todo: ReadonlyArray<IncomingCommand>, lastSeq: number, extra: ReadonlyArray<OutcomeRow>): Promise<void> {
    const { sql, topology, metrics } = this.deps;
    const actors = await this.deps.skus.activateFor(
      sql,
      todo.map((c) => c.command),
    );
    const plan = planBatch({
      partition: this.partition,
      epoch: this.epoch,
      lastSeq,
      recordedAt: new Date(),
      commands: todo,
      actors,
      channels: this.deps.channels,
      names: topology,
      ...(this.deps.valuation ? { valuation: this.deps.valuation } : {}),
    });
    const outcomes = [...plan.write.outcomes, ...extra];
    await commitBatch(sql, { ...plan.write, lastSeq: Math.max(plan.write.lastSeq, lastSeq), outcomes });
    this.deps.skus.commit(plan.actors);
    metrics.applied += plan.applied;
    metrics.rejected += plan.rejected;
    this.#publishOutcomes(outcomes, todo, 0);
  }

  async #decideAndCommit(
    messages: ReadonlyArray<JsMsg>,
    fresh: ReadonlyArray<JsMsg>,
    incoming: ReadonlyArray<IncomingCommand>,
    dead: ReadonlyArray<DeadLetter>,
    known: ReadonlySet<string> | null,
    startedAt: number,
    decodedAt: number,
  ): Promise<void> {
    const { sql, topology, metrics } = this.deps;
    const dedupedAt = performance.now();
    metrics.stageMs.dedupe += dedupedAt - decodedAt;
    const seen = new Set<string>();
    const todo = incoming.filter(({ command }) => {
      if (known?.has(command.id) || seen.has(command.id)) return false;
      seen.add(command.id);
      return true;
    });
    const actors = await this.deps.skus.activateFor(
      sql,
      todo.map((c) => c.command),
    );
    const activatedAt = performance.now();
    metrics.stageMs.activate += activatedAt - dedupedAt;
    const plan = planBatch({
      partition: this.partition,
      epoch: this.epoch,
      lastSeq: this.#lastSeq,
      recordedAt: new Date(),
      commands: todo,
      actors,
      channels: this.deps.channels,
      names: topology,
      ...(this.deps.valuation ? { valuation: this.deps.valuation } : {}),
    });
    const lastSeq = fresh[fresh.length - 1]!.seq;
    const plannedAt = performance.now();
    metrics.stageMs.plan += plannedAt - activatedAt;
    this.#permit?.();
    await this.deps.committer.commit({ ...plan.write, lastSeq: Math.max(plan.write.lastSeq, lastSeq) });
    metrics.stageMs.commit += performance.now() - plannedAt;
    this.#lastSeq = lastSeq;
    this.deps.skus.commit(plan.actors);
    metrics.skippedDuplicate += incoming.length - todo.length;
    metrics.batches++;
    metrics.applied += plan.applied;
    metrics.rejected += plan.rejected;
    metrics.holdsRefused += plan.holdsRefused;
    metrics.deadLettered += dead.length;
    messages[messages.length - 1]!.ack();
    this.#publishOutcomes(plan.write.outcomes, todo, performance.now() - startedAt);
  }

  /**
   * Core NATS, best effort, after the commit: API processes answer reservations from these without
   * polling `command_outcomes` (which stays the truth they fall back to) and count them in metrics.
   */
  #publishOutcomes(outcomes: ReadonlyArray<OutcomeRow>, todo: ReadonlyArray<IncomingCommand>, applyMs: number): void {
    const source = new Map<string, string>(todo.map(({ command }) => [command.id, command.source.system]));
    const subject = this.deps.topology.outcomesSubject;
    for (let i = 0; i < outcomes.length || i === 0; i += 1000) {
      const chunk = outcomes.slice(i, i + 1000).map((o) => ({
        id: o.commandId,
        status: o.status,
        reason: o.reason,
        detail: o.detail,
        type: o.type,
        sku: o.sku,
        source: source.get(o.commandId),
      }));
      const batch = { partition: this.partition, part: i / 1000, size: outcomes.length, applyMs, outcomes: chunk } satisfies OutcomeBatch;
      this.deps.onOutcomes?.(batch);
      try {
        this.deps.nats.nc.publish(subject, JSON.stringify(batch, quantityJson));
      } catch (err) {
        // Disconnected: listeners read command_outcomes instead.
        this.deps.log.debug({ err }, "outcomes not published (core NATS)");
      }
    }
  }

  async #alert(error: unknown, attempt: number): Promise<void> {
    const payload = {
      type: "alert",
      kind: "partition_stuck",
      partition: this.partition,
      streamSeq: this.#stuckSeq(),
      attempt,
      error: describeError(error),
      at: new Date().toISOString(),
    } satisfies AlertEvent;
    this.deps.log.error(payload, "partition is not advancing");
    this.#publishAlert(payload);
  }

  /** Core NATS, not JetStream: an alert must go out even when JetStream is what is failing. */
  #publishAlert(payload: AlertEvent): void {
    const { nats, topology } = this.deps;
    try {
      nats.nc.publish(topology.eventSubject("alert"), JSON.stringify(payload));
    } catch {
      // Disconnected: the log line is the alert.
    }
  }

  /** Records in Postgres that the partition is stuck (for readiness and `tally dlq list --stuck`), best effort. */
  async #reportStuck(error: unknown, attempts: number): Promise<void> {
    try {
      await recordStuck(this.deps.sql, { partition: this.partition, streamSeq: this.#stuckSeq(), attempts, error: describeError(error) });
      this.#reportedStuck = true;
    } catch (err) {
      // Postgres is what fails: readiness sees that directly.
      this.deps.log.debug({ err }, "could not record the stuck partition");
    }
  }

  async #publishDead(dead: ReadonlyArray<DeadLetter>): Promise<void> {
    const { nats, topology, sql } = this.deps;
    // The payload is part of the id: after a stream reset, sequences (in the context) repeat.
    const identity = (d: DeadLetter) => ({ hashOf: [JSON.stringify(d.context), d.reason, JSON.stringify(d.payload) ?? ""] });
    await Promise.all(dead.map((d) => publishDeadLetter({ js: nats.js, nc: nats.nc, sql, topology }, d, identity(d))));
  }

  #sleep(ms: number): Promise<void> {
    return sleep(ms, this.signal);
  }
}
