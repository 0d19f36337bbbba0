import { createHash } from "node:crypto";
import type { JetStreamClient } from "@nats-io/jetstream";
import { Schema } from "effect";
import type { NatsConnection } from "@nats-io/transport-node";
import type { Sql } from "postgres";
import type { Topology } from "./topology.ts";
import { DateTime } from "../contract/index.ts";

/** Where a dead letter's payload is kept when the letter itself would be too large for NATS. */
export const StoredPayloadRef = Schema.Struct({
  in: Schema.Literal("postgres"),
  table: Schema.Literal("dead_letter_payloads"),
  key: Schema.String,
  bytes: Schema.Int,
  json: Schema.Boolean.annotations({ description: "true when the payload was JSON (it is parsed again when read), false for text" }),
}).annotations({ identifier: "StoredPayloadRef", description: "where the payload is kept instead" });
export type StoredPayloadRef = typeof StoredPayloadRef.Type;

/**
 * A payload that could not be applied, with the reason, kept in the dead-letter stream
 * (`tally.<env>.dlq.<origin>`; `schemas/nats/dead-letter.json` is generated from this).
 */
export const DeadLetter = Schema.Struct({
  origin: Schema.String.annotations({
    description: "where it came from: commands, submit, pos, a CDC source name… (the subject's last token, encoded)",
  }),
  reason: Schema.String.annotations({ description: "what is wrong, naming the field" }),
  payload: Schema.Unknown.annotations({
    description: "the payload as received (parsed JSON when it was JSON, else the text); null when kept in Postgres",
  }),
  context: Schema.Record({ key: Schema.String, value: Schema.Unknown }).annotations({
    description: "where it was found (stream sequence, line number, LSN…)",
  }),
  at: DateTime,
  payloadStored: Schema.optional(StoredPayloadRef),
}).annotations({ title: "Dead letter", description: "A payload Tally could not apply, with the reason" });
export type DeadLetter = typeof DeadLetter.Type;

export function deadLetter(
  origin: string,
  reason: string,
  payload: unknown,
  context: Readonly<Record<string, unknown>>,
  at = new Date(),
): DeadLetter {
  let body = payload;
  if (payload instanceof Uint8Array) {
    const text = new TextDecoder().decode(payload);
    try {
      body = JSON.parse(text);
    } catch {
      body = text; // parse fallback: not JSON, kept as text
    }
  }
  return { origin, reason, payload: body, context, at: at.toISOString() };
}

/**
 * What identifies a dead letter within its origin: the strings hashed in order (sha256, its first 32
 * hex digits), or a readable key used as is.
 */
export type DeadLetterIdentity = { readonly hashOf: ReadonlyArray<string> } | { readonly key: string };

/**
 * The one recipe of a dead letter's Nats-Msg-Id (also the key of a payload kept in Postgres):
 * `dlq:<origin>:<identity>`. The identity comes from where it was found and why, so re-finding it after
 * a crash is a duplicate. Without `identity`: the letter's context and reason. Ids already in
 * JetStream's duplicate window and in `dead_letter_payloads` depend on it: deadLetters.test.ts pins it.
 */
export function deadLetterMsgId(origin: string, identity: DeadLetterIdentity): string {
  if ("key" in identity) return `dlq:${origin}:${identity.key}`;
  const hash = createHash("sha256");
  for (const part of identity.hashOf) hash.update(part);
  return `dlq:${origin}:${hash.digest("hex").slice(0, 32)}`;
}

/** A letter's default identity: where it was found (its context) and why (its reason). */
export const foundWhereAndWhy = (d: DeadLetter): DeadLetterIdentity => ({ hashOf: [JSON.stringify(d.context), d.reason] });

/** What publishing a dead letter needs: JetStream, and Postgres for a payload too large for NATS. */
export interface DeadLetterSink {
  readonly js: JetStreamClient;
  /** Tells the server's max_payload (1 MiB assumed without it). */
  readonly nc?: NatsConnection;
  /** Keeps a payload too large for NATS (without it, such a letter is refused by NATS). */
  readonly sql?: Sql;
  readonly topology: Topology;
}

/** A reason listing every issue of a huge payload can be huge too: the letter keeps its start. */
const REASON_MAX = 64 * 1024;
const clip = (reason: string): string => (reason.length > REASON_MAX ? `${reason.slice(0, REASON_MAX)}… (${reason.length} characters)` : reason);

/** Room left in a NATS message for the headers (Nats-Msg-Id) and the letter without its payload. */
const HEADROOM_BYTES = 8 * 1024;

/**
 * The one way a dead letter is published: to the dead-letter stream with the Nats-Msg-Id of
 * `identity` (`deadLetterMsgId`; default: the letter's context and reason), so re-finding it is a duplicate.
 * A letter larger than the server's max_payload would be refused, and its payload lost: its payload
 * is then written to Postgres (`dead_letter_payloads`) and the letter carries `payload: null` and
 * `payloadStored` naming where it is; `withStoredPayload` puts it back when the letter is replayed.
 * The row's `created_at` is when a letter naming it was last published (the pruner's orphan horizon).
 */
export async function publishDeadLetter(
  sink: DeadLetterSink,
  letter: DeadLetter,
  identity: DeadLetterIdentity = foundWhereAndWhy(letter),
): Promise<void> {
  const msgID = deadLetterMsgId(letter.origin, identity);
  const body = JSON.stringify(letter);
  const limit = sink.nc?.info?.max_payload ?? 1024 * 1024;
  if (Buffer.byteLength(body) <= limit - HEADROOM_BYTES || !sink.sql) {
    await sink.js.publish(sink.topology.dlqSubject(letter.origin), body, { msgID });
    return;
  }
  const json = typeof letter.payload !== "string";
  const bytes = Buffer.from(json ? (JSON.stringify(letter.payload) ?? "null") : (letter.payload as string), "utf8");
  await sink.sql`
    insert into dead_letter_payloads (key, origin, payload) values (${msgID}, ${letter.origin}, ${bytes})
    on conflict (key) do update set created_at = now()`;
  const ref: StoredPayloadRef = { in: "postgres", table: "dead_letter_payloads", key: msgID, bytes: bytes.length, json };
  const stored: DeadLetter = {
    ...letter,
    payload: null,
    payloadStored: ref,
    reason: `${clip(letter.reason)} (payload of ${bytes.length} bytes too large for NATS: kept in Postgres, dead_letter_payloads key ${msgID})`,
  };
  await sink.js.publish(sink.topology.dlqSubject(letter.origin), JSON.stringify(stored), { msgID });
}

/** The letter with its payload read back from Postgres, when it was too large for NATS; else as is. */
export async function withStoredPayload<L extends DeadLetter & { readonly payloadStored?: StoredPayloadRef }>(sql: Sql, letter: L): Promise<L> {
  const ref = letter.payloadStored;
  if (!ref) return letter;
  const [row] = await sql<Array<{ payload: Buffer }>>`select payload from dead_letter_payloads where key = ${ref.key}`;
  if (!row) return letter;
  const text = row.payload.toString("utf8");
  return { ...letter, payload: ref.json ? JSON.parse(text) : text };
}
