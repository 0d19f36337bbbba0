import { createHash } from "node:crypto";

/** A payload that could not be applied, with the reason, kept in the dead-letter stream. */
export interface DeadLetter {
  /** Where it came from: `commands`, `submit`, `pos`, a CDC source name… (the DLQ subject's last token). */
  readonly origin: string;
  /** What is wrong, naming the field. */
  readonly reason: string;
  /** The payload as received (parsed JSON when it was JSON, else the text). */
  readonly payload: unknown;
  /** Where it was found (stream sequence, line number, LSN…). */
  readonly context: Readonly<Record<string, unknown>>;
  readonly at: string;
}

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
      body = text;
    }
  }
  return { origin, reason, payload: body, context, at: at.toISOString() };
}

/** A dead letter's Nats-Msg-Id: from where it was found and why, so re-finding it after a crash is a duplicate. */
export function deadLetterMsgId(d: DeadLetter): string {
  return `dlq:${d.origin}:${createHash("sha256").update(JSON.stringify(d.context)).update(d.reason).digest("hex").slice(0, 32)}`;
}
