import cors from "@fastify/cors";
import type { FastifyInstance } from "fastify";

/**
 * Lets web pages of the configured origins (`TALLY_CORS_ORIGINS`, exact `scheme://host[:port]` matches) call the
 * API: their requests get `Access-Control-Allow-Origin` and preflights are answered; any other origin gets no CORS
 * header, so its browser refuses the answer. No origin configured: no CORS at all. Registered before the drain and
 * auth hooks, so refusals (401, 403, 503) carry the header too and a page can read why.
 */
export async function allowOrigins(app: FastifyInstance, origins: ReadonlyArray<string>): Promise<void> {
  if (origins.length === 0) return;
  await app.register(cors, {
    origin: [...origins],
    methods: ["GET", "HEAD", "POST"],
    allowedHeaders: ["authorization", "content-type", "last-event-id"],
    // No cookies: a page authenticates with a stream token in the URL or a bearer token it was given.
    credentials: false,
    maxAge: 600,
  });
}
