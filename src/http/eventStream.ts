import type { OutgoingHttpHeaders, ServerResponse } from "node:http";
import type { FastifyReply, FastifyRequest } from "fastify";
import { AckPolicy, DeliverPolicy, type ConsumerConfig } from "@nats-io/jetstream";
import { DeliveryOrder } from "../wire/index.ts";
import type { ApiContext } from "./context.ts";

/**
 * Takes the response over from Fastify and opens a server-sent event stream on it: 200, no caching or
 * proxy buffering, and a client that reconnects after a second. Headers the hooks already set on the reply
 * (CORS's `Access-Control-Allow-Origin` and `Vary`) are kept. The caller writes the events.
 */
export function openEventStream(reply: FastifyReply): ServerResponse {
  const set: OutgoingHttpHeaders = {};
  for (const [name, value] of Object.entries(reply.getHeaders())) if (value !== undefined) set[name] = value;
  reply.hijack();
  const res = reply.raw;
  res.writeHead(200, {
    ...set,
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache, no-transform",
    connection: "keep-alive",
    "x-accel-buffering": "no",
  });
  res.write("retry: 1000\n\n");
  return res;
}

/** Where a feed starts and what it carries (see `streamFeed`). */
export interface FeedOptions {
  /** The JetStream stream whose messages are the events; their ids are its sequences. */
  readonly stream: string;
  /** The subjects of the one channel the request may see. */
  readonly filterSubject: string;
  /** The SSE event name (`availability`, `catalog`); also names the stream in the log. */
  readonly event: string;
  /** The last event the client has (Last-Event-ID, see `lastEventId`); undefined: from now on. */
  readonly after: number | undefined;
  /** A narrower filter than the subjects (a message whose subject it refuses is not sent). */
  readonly accept?: (subject: string) => boolean;
}

/** The client's resume position: the Last-Event-ID header (EventSource's reconnect), else `?lastEventId=`. */
export function lastEventId(
  req: FastifyRequest<{ Querystring: { lastEventId?: number }; Headers: { "last-event-id"?: string } }>,
): number | undefined {
  const header = req.headers["last-event-id"];
  return header !== undefined ? Number(header) : req.query.lastEventId;
}

const HEARTBEAT_MS = 15_000;

/**
 * A JetStream stream as server-sent events: each message after `after` (or from now on) whose subject matches,
 * as `id: <stream sequence>`, `event: <event>`, `data: <the message>`, in order; a comment every 15 s keeps
 * proxies from closing it. When the history to resume from has expired it starts from the oldest message kept,
 * after an `event: reset`. It ends when the client goes, when the app closes (`ctx.streams`), or when deliveries
 * were lost in transit (the client reconnects with Last-Event-ID and gets them again).
 */
export async function streamFeed(ctx: ApiContext, req: FastifyRequest, reply: FastifyReply, feed: FeedOptions): Promise<void> {
  const { stream, filterSubject, event, after, accept } = feed;
  const { jsm, js } = ctx.nats;
  const info = await jsm.streams.info(stream);
  const expired = after !== undefined && after + 1 < info.state.first_seq;
  const start: Partial<ConsumerConfig> =
    after === undefined
      ? { deliver_policy: DeliverPolicy.New }
      : expired
        ? { deliver_policy: DeliverPolicy.All }
        : { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: after + 1 };
  // A plain ephemeral consumer (no ack): nats-server 2.9 has no multi-filter ordered consumers.
  const ci = await jsm.consumers.add(stream, {
    filter_subject: filterSubject,
    ack_policy: AckPolicy.None,
    inactive_threshold: 60_000_000_000,
    ...start,
  });
  const consumer = await js.consumers.get(stream, ci.name);
  const res = openEventStream(reply);
  if (expired) res.write(`event: reset\ndata: ${JSON.stringify({ reason: "history_expired", firstSeq: info.state.first_seq })}\n\n`);
  const messages = await consumer.consume({ max_messages: 256 });
  const heartbeat = setInterval(() => res.write(": keepalive\n\n"), HEARTBEAT_MS);
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    clearInterval(heartbeat);
    messages.stop();
    void jsm.consumers.delete(stream, ci.name).catch(() => {}); // best effort: the ephemeral consumer expires by itself
    if (!res.writableEnded) res.end();
    ctx.streams.delete(close);
  };
  ctx.streams.add(close);
  req.raw.on("close", close);
  res.on("error", close);
  void (async () => {
    try {
      const order = new DeliveryOrder();
      for await (const m of messages) {
        if (closed) break;
        const gap = order.next(m);
        if (gap) {
          // Deliveries lost in transit: end the stream; the client reconnects with Last-Event-ID
          // (the last event it got) and the missing changes come again.
          req.log.warn({ err: gap }, `${event} stream skipped deliveries; closing it so the client resumes`);
          break;
        }
        if (accept && !accept(m.subject)) continue;
        const ok = res.write(`id: ${m.seq}\nevent: ${event}\ndata: ${new TextDecoder().decode(m.data)}\n\n`);
        if (!ok) await new Promise<void>((r) => res.once("drain", r));
      }
    } catch (err) {
      req.log.warn({ err }, `${event} stream ended`);
    } finally {
      close();
    }
  })();
}
