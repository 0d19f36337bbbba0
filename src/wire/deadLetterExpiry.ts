import { AckPolicy, DeliverPolicy, type JetStreamClient, type JetStreamManager } from "@nats-io/jetstream";
import type { Sql } from "postgres";
import type { Logger } from "../platform/index.ts";
import type { DeadLetter } from "./deadLetters.ts";
import type { Topology } from "./topology.ts";

/** A dead letter the pruner expired: what it was, and why it went (`age`: older than the horizon; `size`: the DLQ was over its bytes). */
export interface ExpiredDeadLetter {
  readonly seq: number;
  readonly subject: string;
  readonly origin: string;
  readonly reason: string;
  /** When the stream stored it. */
  readonly storedAt: string;
  readonly bytes: number;
  readonly cause: "age" | "size";
}

export interface DeadLetterExpiry {
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  /** Where payloads too large for NATS are kept (`dead_letter_payloads`): an expired letter's goes too. */
  readonly sql: Sql;
  readonly topology: Topology;
  readonly maxAgeMs: number;
  readonly maxBytes: number;
  readonly now: Date;
  /** Most letters looked at (and expired) in one call. */
  readonly limit: number;
  readonly log: Logger;
}

/** What of a letter's payload its expiry log line keeps (the letter itself is gone after it). */
const LOGGED_PAYLOAD_CHARS = 16 * 1024;

/**
 * Expires the oldest dead letters that are older than `maxAgeMs`, or that keep the DLQ stream above
 * `maxBytes`: each is logged (warn, with its origin, reason, context and the start of its payload) before
 * it is purged, and returned so the caller counts it. JetStream never drops a dead letter by itself
 * (`streamLimits`: no max age), so this is the one way one goes, and never a silent one. Oldest first,
 * at most `limit`; a caller repeats while a call returns `limit` letters.
 */
export async function expireDeadLetters(o: DeadLetterExpiry): Promise<ReadonlyArray<ExpiredDeadLetter>> {
  const stream = o.topology.dlqStream;
  const info = await o.jsm.streams.info(stream);
  if (info.state.messages === 0) return [];
  const cutoffMs = o.now.getTime() - o.maxAgeMs;
  let excess = info.state.bytes - o.maxBytes;
  const consumer = await o.jsm.consumers.add(stream, {
    ack_policy: AckPolicy.None,
    deliver_policy: DeliverPolicy.All,
    inactive_threshold: 30_000_000_000,
  });
  const expired: Array<ExpiredDeadLetter & { readonly storedKey: string | null }> = [];
  try {
    const batch = await (await o.js.consumers.get(stream, consumer.name)).fetch({ max_messages: o.limit, expires: 2000 });
    for await (const m of batch) {
      const storedMs = Number(m.timestampNanos / 1_000_000n);
      const bytes = m.data.length + m.subject.length + (m.headers?.toString().length ?? 0);
      const cause = storedMs < cutoffMs ? "age" : excess > 0 ? "size" : null;
      if (cause === null) break;
      excess -= bytes;
      const letter = parseLetter(m.string());
      o.log.warn(
        {
          deadLetter: {
            seq: m.seq,
            subject: m.subject,
            origin: letter.origin,
            reason: letter.reason,
            context: letter.context,
            at: letter.at,
            payload: clipped(letter.payload),
          },
          storedAt: new Date(storedMs).toISOString(),
          cause,
        },
        cause === "age" ? "dead letter expired: older than TALLY_DLQ_MAX_AGE_SECONDS" : "dead letter expired: the DLQ is over TALLY_DLQ_MAX_BYTES",
      );
      expired.push({
        seq: m.seq,
        subject: m.subject,
        origin: String(letter.origin ?? ""),
        reason: String(letter.reason ?? ""),
        storedAt: new Date(storedMs).toISOString(),
        bytes,
        cause,
        storedKey: letter.payloadStored?.key ?? null,
      });
      if (expired.length >= o.limit) break;
    }
  } finally {
    await o.jsm.consumers.delete(stream, consumer.name).catch(() => {}); // best effort: the ephemeral consumer expires by itself
  }
  const last = expired[expired.length - 1];
  if (!last) return [];
  // Logged first, purged after: a purge that fails leaves them to be logged (and counted) again, never dropped unlogged.
  await o.jsm.streams.purge(stream, { seq: last.seq + 1 });
  // A payload goes with its letter, unless a later letter of the same key (published again past the
  // de-duplication window) named it since: its row was written again after this letter was stored.
  const named = expired.filter((e) => e.storedKey !== null);
  if (named.length > 0)
    await o.sql`
      delete from dead_letter_payloads d
       using unnest(${o.sql.array(named.map((e) => e.storedKey!))}::text[], ${o.sql.array(named.map((e) => e.storedAt))}::timestamptz[]) as e(key, stored_at)
       where d.key = e.key and d.created_at <= e.stored_at + interval '1 minute'`;
  return expired.map(({ storedKey: _, ...e }) => e);
}

function parseLetter(text: string): Partial<DeadLetter> {
  try {
    return JSON.parse(text) as Partial<DeadLetter>;
  } catch {
    return { reason: "(not a dead letter's JSON)", payload: text }; // parse fallback: logged as text
  }
}

function clipped(payload: unknown): unknown {
  const text = typeof payload === "string" ? payload : JSON.stringify(payload ?? null);
  return text.length <= LOGGED_PAYLOAD_CHARS ? payload : `${text.slice(0, LOGGED_PAYLOAD_CHARS)}… (${text.length} characters)`;
}
