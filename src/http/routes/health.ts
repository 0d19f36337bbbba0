import type { FastifyInstance } from "fastify";
import type { ApiContext } from "../app.ts";

const Check = { type: "object", properties: { ok: { type: "boolean" }, detail: { type: "string" } }, additionalProperties: true } as const;

/** `/healthz` (the process is up), `/readyz` (Postgres, NATS, leases), `/metrics` (Prometheus). No auth. */
export async function healthRoutes(app: FastifyInstance, { ctx }: { ctx: ApiContext }): Promise<void> {
  app.get(
    "/healthz",
    {
      schema: {
        tags: ["health"],
        summary: "The process is up",
        security: [],
        response: { 200: { type: "object", properties: { ok: { type: "boolean" } }, required: ["ok"] } },
      },
    },
    async () => ({ ok: true }),
  );

  app.get(
    "/readyz",
    {
      schema: {
        tags: ["health"],
        summary: "Postgres and NATS answer; leases held by this process's worker",
        security: [],
        response: {
          200: { type: "object", properties: { ready: { type: "boolean" }, checks: { type: "object", additionalProperties: Check } } },
          503: { type: "object", properties: { ready: { type: "boolean" }, checks: { type: "object", additionalProperties: Check } } },
        },
      },
    },
    async (_req, reply) => {
      const within = <T>(p: Promise<T>, ms: number) =>
        Promise.race([p, new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms).unref())]);
      const checks: Record<string, { ok: boolean; detail?: string; [k: string]: unknown }> = {};
      await Promise.all([
        within(ctx.sql`select 1`, 2000).then(
          () => (checks.postgres = { ok: true }),
          (e: Error) => (checks.postgres = { ok: false, detail: e.message }),
        ),
        (ctx.nats.nc.isClosed() ? Promise.reject(new Error("connection closed")) : within(ctx.nats.nc.rtt(), 2000)).then(
          (rtt) => (checks.nats = { ok: true, rttMs: rtt }),
          (e: Error) => (checks.nats = { ok: false, detail: e.message }),
        ),
      ]);
      if (ctx.worker) {
        const held = ctx.worker.held();
        // A worker may rightly hold none (more workers than partitions); it is reported, not required.
        checks.leases = { ok: true, held: held.length, partitions: held.join(","), detail: `${held.length} of ${ctx.topology.partitions} partitions held by this worker` };
      }
      const ready = Object.values(checks).every((c) => c.ok);
      return reply.code(ready ? 200 : 503).send({ ready, checks });
    },
  );

  app.get(
    "/metrics",
    { schema: { tags: ["health"], summary: "Prometheus metrics", security: [], produces: ["text/plain"], response: { 200: { type: "string" } } } },
    async (_req, reply) => {
      reply.type(ctx.metrics.registry.contentType);
      return ctx.metrics.registry.metrics();
    },
  );
}
