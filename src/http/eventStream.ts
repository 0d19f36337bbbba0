import type { OutgoingHttpHeaders, ServerResponse } from "node:http";
import type { FastifyReply } from "fastify";

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
