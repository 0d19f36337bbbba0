import { createHash } from "node:crypto";

/**
 * The JetStream message body: a batch of canonical commands of ONE partition, in order.
 * `{ "v": 1, "commands": [ … ] }`. Commands are decoded one by one by the worker, so one bad
 * command dead-letters alone.
 */
export interface Envelope {
  readonly v: 1;
  readonly commands: ReadonlyArray<unknown>;
}

export type DecodedEnvelope = { readonly ok: true; readonly commands: ReadonlyArray<unknown> } | { readonly ok: false; readonly reason: string };

export function encodeEnvelope(commands: ReadonlyArray<unknown>): string {
  return JSON.stringify({ v: 1, commands } satisfies Envelope);
}

export function decodeEnvelope(data: Uint8Array): DecodedEnvelope {
  let parsed: unknown;
  try {
    parsed = JSON.parse(new TextDecoder().decode(data));
  } catch {
    // Parse fallback: the caller dead-letters the message with this reason.
    return { ok: false, reason: "envelope: not valid JSON" };
  }
  const e = parsed as Partial<Envelope> | null;
  if (typeof e !== "object" || e === null) return { ok: false, reason: "envelope: expected an object" };
  if (e.v !== 1) return { ok: false, reason: `v: expected 1, got ${JSON.stringify(e.v)}` };
  if (!Array.isArray(e.commands)) return { ok: false, reason: "commands: expected an array" };
  return { ok: true, commands: e.commands };
}

/**
 * The `Nats-Msg-Id` of an envelope: the command id itself for one command, otherwise a digest of
 * the ordered ids. Deterministic, so a re-publish of the same commands is dropped by the stream;
 * never shared by different content, because a command id names exactly one command.
 */
export function envelopeMsgId(ids: ReadonlyArray<string>): string {
  if (ids.length === 1) return ids[0]!;
  const h = createHash("sha256");
  for (const id of ids) h.update(id).update("\n");
  return `env:${ids.length}:${h.digest("hex").slice(0, 40)}`;
}
