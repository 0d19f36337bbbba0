import type { JetStreamClient } from "@nats-io/jetstream";
import { loadLayout } from "./nats.ts";
import type { Command } from "../contract/index.ts";
import { encodeEnvelope, envelopeMsgId } from "./envelope.ts";
import { backoffDelay, sleep } from "../platform/index.ts";
import type { Topology } from "./topology.ts";

export interface PublishResult {
  /** JetStream messages (envelopes) acknowledged. */
  readonly messages: number;
  /** Commands in envelopes the stream reported as duplicates (same Nats-Msg-Id in its window). */
  readonly duplicates: number;
}

export interface PublishOptions {
  /** Most commands per envelope (default 500). */
  readonly envelopeSize?: number;
  /** Attempts per envelope before giving up (default 8), with exponential backoff and jitter. */
  readonly attempts?: number;
  /**
   * Epoch ms after which no attempt starts and none waits longer: a request with a caller waiting fails
   * fast (NATS down, JetStream full) instead of retrying for tens of seconds. Default: no deadline.
   */
  readonly deadline?: number;
}

/** A publish gave up at its deadline; `cause` is the last attempt's error. */
export class PublishDeadlineExceeded extends Error {
  override readonly name = "PublishDeadlineExceeded";
}

/**
 * What this process's command publishes last met: `/readyz` reports a JetStream store that refuses
 * them (full: the server's store, the account's, or the stream's limits), which no stream or account
 * figure shows when the server's own storage is what ran out.
 */
export const publishHealth: { lastSuccessAt: number; lastRefusal: { readonly at: number; readonly message: string } | null } = {
  lastSuccessAt: 0,
  lastRefusal: null,
};

/** JetStream refused the message for want of room (insufficient resources, a stream or account limit). */
export function isStoreFull(error: unknown): boolean {
  const e = error as { message?: string; api_error?: { err_code?: number } } | null;
  const code = e?.api_error?.err_code;
  return code === 10047 || /insufficient (resources|storage)|maximum (bytes|messages) exceeded|storage limit/i.test(e?.message ?? "");
}

/** Envelopes stay well below NATS's default 1 MiB max payload. */
const MAX_ENVELOPE_BYTES = 512 * 1024;

/**
 * Publishes canonical commands to the commands stream: grouped per partition into envelopes, in
 * order, each awaited until JetStream's PubAck. Partitions go in parallel; within one partition
 * envelopes go one after the other so a retried envelope can never overtake a later one.
 */
export async function publishCommands(
  js: JetStreamClient,
  topology: Topology,
  commands: ReadonlyArray<Command>,
  opts: PublishOptions = {},
): Promise<PublishResult> {
  let total: PublishResult = { messages: 0, duplicates: 0 };
  let left = commands;
  // A resize (`tally partitions resize`) takes the old layout's subjects off the commands stream: a
  // publish under it finds no stream. The layout is then read again and what was not acknowledged goes
  // out under the new one, still in order per partition (so per SKU).
  let failFast = true;
  for (let round = 0; ; round++) {
    const { result, unsent } = await publishUnder(js, topology.withLayout(topology.layout), left, opts, failFast);
    total = { messages: total.messages + result.messages, duplicates: total.duplicates + result.duplicates };
    if (unsent.commands.length === 0) return total;
    if (round >= 4) throw unsent.error;
    const before = topology.layout;
    const now = await loadLayout(await js.jetstreamManager(), topology).catch(() => null);
    // Same layout: JetStream itself was unavailable; retry with backoff as any publish does.
    failFast = now !== null && now.generation !== before.generation;
    left = unsent.commands;
  }
}

/** No stream takes the subject (JetStream reports it as "no responders" / "not enabled"). */
function isNoStream(error: unknown): boolean {
  const e = error as { name?: string; code?: string | number } | null;
  return e?.name === "JetStreamNotEnabled" || e?.name === "NoRespondersError" || e?.code === "503" || e?.code === 503;
}

async function publishUnder(
  js: JetStreamClient,
  t: Topology,
  commands: ReadonlyArray<Command>,
  opts: PublishOptions,
  failFast: boolean,
): Promise<{ result: PublishResult; unsent: { commands: Array<Command>; error: unknown } }> {
  const size = opts.envelopeSize ?? 500;
  const byPartition = new Map<number, Array<Command>>();
  for (const c of commands) {
    const p = t.partitionOf(c.sku);
    let list = byPartition.get(p);
    if (!list) byPartition.set(p, (list = []));
    list.push(c);
  }
  let messages = 0;
  let duplicates = 0;
  const unsent: Array<Command> = [];
  let unsentError: unknown = null;
  await Promise.all(
    [...byPartition].map(async ([partition, list]) => {
      const chunks = [...envelopes(list, size)];
      for (let i = 0; i < chunks.length; i++) {
        const chunk = chunks[i]!;
        let ack: Awaited<ReturnType<typeof publishWithRetry>>;
        try {
          ack = await publishWithRetry(js, t.commandSubject(partition), chunk, opts.attempts ?? 8, opts.deadline ?? Infinity, failFast);
        } catch (error) {
          if (!isNoStream(error)) throw error;
          for (const rest of chunks.slice(i)) unsent.push(...rest);
          unsentError = error;
          return;
        }
        messages++;
        if (ack.duplicate) duplicates += chunk.length;
      }
    }),
  );
  return { result: { messages, duplicates }, unsent: { commands: unsent, error: unsentError } };
}

function* envelopes(list: ReadonlyArray<Command>, size: number): Generator<ReadonlyArray<Command>> {
  let chunk: Array<Command> = [];
  let bytes = 0;
  for (const c of list) {
    const b = JSON.stringify(c).length;
    if (chunk.length > 0 && (chunk.length >= size || bytes + b > MAX_ENVELOPE_BYTES)) {
      yield chunk;
      chunk = [];
      bytes = 0;
    }
    chunk.push(c);
    bytes += b;
  }
  if (chunk.length > 0) yield chunk;
}

async function publishWithRetry(
  js: JetStreamClient,
  subject: string,
  chunk: ReadonlyArray<Command>,
  attempts: number,
  deadline: number,
  noStreamFailsFast: boolean,
) {
  const body = encodeEnvelope(chunk);
  const msgID = envelopeMsgId(chunk.map((c) => c.id));
  for (let attempt = 1; ; attempt++) {
    const left = deadline - Date.now();
    try {
      if (left <= 0) throw new PublishDeadlineExceeded(`no PubAck for ${subject} before the deadline`);
      const ack = await js.publish(subject, body, { msgID, timeout: Math.min(10_000, Math.max(1, Math.round(left))) });
      publishHealth.lastSuccessAt = Date.now();
      return ack;
    } catch (error) {
      if (error instanceof PublishDeadlineExceeded) throw error;
      // Retried by the caller under the layout read again (a resize), or after it when the layout is the same.
      if (noStreamFailsFast && isNoStream(error) && attempt === 1) throw error;
      if (isStoreFull(error)) publishHealth.lastRefusal = { at: Date.now(), message: (error as Error).message };
      if (attempt >= attempts) throw error;
      if (deadline - Date.now() <= 0)
        throw new PublishDeadlineExceeded(`no PubAck for ${subject} before the deadline: ${(error as Error).message}`, { cause: error });
      await sleep(Math.min(backoffDelay(attempt, 200, 5_000), Math.max(0, deadline - Date.now())));
    }
  }
}
