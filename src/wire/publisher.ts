import type { JetStreamClient } from "@nats-io/jetstream";
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
  const size = opts.envelopeSize ?? 500;
  const byPartition = new Map<number, Array<Command>>();
  for (const c of commands) {
    const p = topology.partitionOf(c.sku);
    let list = byPartition.get(p);
    if (!list) byPartition.set(p, (list = []));
    list.push(c);
  }
  let messages = 0;
  let duplicates = 0;
  await Promise.all(
    [...byPartition].map(async ([partition, list]) => {
      for (const chunk of envelopes(list, size)) {
        const ack = await publishWithRetry(js, topology.commandSubject(partition), chunk, opts.attempts ?? 8, opts.deadline ?? Infinity);
        messages++;
        if (ack.duplicate) duplicates += chunk.length;
      }
    }),
  );
  return { messages, duplicates };
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

async function publishWithRetry(js: JetStreamClient, subject: string, chunk: ReadonlyArray<Command>, attempts: number, deadline: number) {
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
      if (isStoreFull(error)) publishHealth.lastRefusal = { at: Date.now(), message: (error as Error).message };
      if (attempt >= attempts) throw error;
      if (deadline - Date.now() <= 0)
        throw new PublishDeadlineExceeded(`no PubAck for ${subject} before the deadline: ${(error as Error).message}`, { cause: error });
      await sleep(Math.min(backoffDelay(attempt, 200, 5_000), Math.max(0, deadline - Date.now())));
    }
  }
}
