import type { Msg, NatsConnection, Subscription } from "@nats-io/transport-node";
import type { Logger } from "pino";
import { JsonTextError, parseJsonText } from "../platform/index.ts";
import type { Topology } from "../wire/index.ts";
import { InvalidBatch, type PosIngest } from "./posIngest.ts";

/** Most POS messages handled at once by one process (the rest wait in the subscription). */
const CONCURRENCY = 16;

/**
 * POS terminals may publish to `tally.<env>.pos.<store>` (a batch, or one transaction) instead of
 * HTTP: the same validation, dead letters and idempotency. A request (with a reply subject) gets the
 * same result JSON as the HTTP reply. API processes share the subject through a queue group.
 */
export class PosSubscriber {
  #sub: Subscription | null = null;
  #running = new Set<Promise<void>>();
  #loop: Promise<void> | null = null;

  constructor(
    readonly deps: {
      nc: NatsConnection;
      topology: Topology;
      ingest: PosIngest;
      log: Logger /** How long a message may wait for its PubAcks (default none). */;
      requestTimeoutMs?: number;
    },
  ) {}

  start(): void {
    const sub = this.deps.nc.subscribe(this.deps.topology.posSubject(), { queue: this.deps.topology.posQueue });
    this.#sub = sub;
    this.#loop = (async () => {
      for await (const msg of sub) {
        while (this.#running.size >= CONCURRENCY) await Promise.race(this.#running);
        const p = this.#handle(msg).finally(() => this.#running.delete(p));
        this.#running.add(p);
      }
    })();
  }

  async stop(): Promise<void> {
    if (!this.#sub) return;
    await this.#sub.drain().catch(() => {}); // connection already closed: nothing left to drain
    await this.#loop;
    await Promise.all(this.#running);
    this.#sub = null;
  }

  async #handle(msg: Msg): Promise<void> {
    const store = this.deps.topology.storeOfPosSubject(msg.subject) ?? msg.subject;
    const ctx = {
      via: "nats",
      by: msg.subject,
      subjectStore: store,
      ...(this.deps.requestTimeoutMs !== undefined ? { deadline: Date.now() + this.deps.requestTimeoutMs } : {}),
    } as const;
    const text = msg.string();
    let body: unknown;
    try {
      let payload: unknown;
      try {
        payload = parseJsonText(text);
      } catch (e) {
        if (!(e instanceof JsonTextError)) throw e;
        const err = await this.deps.ingest.rejectUnparsable(text, e.problem, ctx);
        body = { accepted: 0, rejected: 1, results: [], error: "invalid_request", message: err.message, errors: err.issues };
      }
      if (body === undefined) body = await this.deps.ingest.ingest(payload, ctx);
    } catch (error) {
      if (error instanceof InvalidBatch)
        body = { accepted: 0, rejected: 1, results: [], error: "invalid_request", message: error.message, errors: error.issues };
      else {
        this.deps.log.error({ err: error, subject: msg.subject }, "POS message failed; the terminal should resend it");
        body = { error: "unavailable", message: "a dependency failed; resend the transactions" };
      }
    }
    if (msg.reply) msg.respond(JSON.stringify(body));
  }
}
