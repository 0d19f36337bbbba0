import type { FastifyInstance } from "fastify";
import { listStuck } from "../../../ledger/index.ts";
import { isNotFound } from "../../wire/index.ts";
import { publishHealth } from "../../wire/index.ts";
import type { ApiContext } from "../context.ts";

const Check = {
  $id: "ReadinessCheck",
  type: "object",
  required: ["ok"],
  properties: { ok: { type: "boolean" }, detail: { type: "string" } },
  additionalProperties: true,
} as const;

/** The named component schemas of these routes. */
export const healthSchemas = [
  { $id: "Health", type: "object", required: ["ok"], properties: { ok: { type: "boolean" } } },
  Check,
  {
    $id: "Readiness",
    type: "object",
    required: ["ready", "checks"],
    properties: {
      ready: { type: "boolean" },
      checks: { type: "object", additionalProperties: { $ref: "ReadinessCheck#" }, description: "postgres, nats, jetstream, stuck, leases, cdc" },
    },
  },
] as const;

/** `/healthz` (the process is up), `/readyz` (dependencies and the roles this process runs), `/metrics` (Prometheus). No auth. */
export async function healthRoutes(app: FastifyInstance, { ctx }: { ctx: ApiContext }): Promise<void> {
  app.get(
    "/healthz",
    {
      schema: {
        operationId: "getHealth",
        tags: ["health"],
        summary: "The process is up",
        security: [],
        response: { 200: { $ref: "Health#" } },
      },
    },
    async () => ({ ok: true }),
  );

  app.get(
    "/readyz",
    {
      schema: {
        operationId: "getReadiness",
        tags: ["health"],
        summary:
          "Dependencies answer (Postgres, NATS, JetStream's commands stream); per role: every partition held and none stuck (worker), sources streaming (cdc)",
        security: [],
        response: {
          200: { description: "ready", $ref: "Readiness#" },
          503: { description: "not ready: the checks say why", $ref: "Readiness#" },
        },
      },
    },
    async (_req, reply) => {
      const { ready, checks } = await readiness(ctx);
      return reply.code(ready ? 200 : 503).send({ ready, checks });
    },
  );

  app.get(
    "/metrics",
    {
      schema: {
        operationId: "getMetrics",
        tags: ["health"],
        summary: "Prometheus metrics",
        security: [],
        response: {
          200: {
            description: "the Prometheus text exposition format (version 0.0.4)",
            content: { "text/plain": { schema: { type: "string" } } },
          },
        },
      },
    },
    async (_req, reply) => {
      reply.type(ctx.metrics.registry.contentType);
      return ctx.metrics.registry.metrics();
    },
  );
}

type Check = { ok: boolean; detail?: string; [k: string]: unknown };

const CHECK_TIMEOUT_MS = 2000;
const within = <T>(p: Promise<T>, ms = CHECK_TIMEOUT_MS) =>
  Promise.race([p, new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms).unref())]);
const failed = (e: unknown): Check => ({ ok: false, detail: (e as Error)?.message ?? String(e) });

/**
 * What `/readyz` checks. Every role: Postgres answers, NATS answers, and JetStream holds the
 * commands stream (it is missing after a wiped store, and a full store refuses its writes). The
 * worker role: every partition is held by some worker (a lease is live), and none of the partitions
 * this worker holds is stuck. The cdc role: every source's replication stream is open. Stuck
 * partitions (recorded by whichever worker holds them) are listed by every role; they make only a
 * worker unready — an API that is taken out of rotation does not unstick a partition.
 */
export async function readiness(ctx: ApiContext): Promise<{ ready: boolean; checks: Record<string, Check> }> {
  const checks: Record<string, Check> = {};
  const { topology, nats, worker, readers } = ctx;
  await Promise.all([
    within(ctx.sql`select 1`).then(
      () => (checks.postgres = { ok: true }),
      (e: unknown) => (checks.postgres = failed(e)),
    ),
    (nats.nc.isClosed() ? Promise.reject(new Error("connection closed")) : within(nats.nc.rtt())).then(
      (rtt) => (checks.nats = { ok: true, rttMs: rtt }),
      (e: unknown) => (checks.nats = failed(e)),
    ),
    within(jetstreamCheck(ctx)).then(
      (c) => (checks.jetstream = c),
      (e: unknown) => (checks.jetstream = failed(e)),
    ),
    within(listStuck(ctx.sql)).then(
      (stuck) =>
        (checks.stuck = {
          ok: stuck.length === 0 || !worker,
          partitions: stuck.map((s) => s.partition).join(","),
          detail:
            stuck.length === 0
              ? "no partition is stuck"
              : stuck.map((s) => `partition ${s.partition} stuck at message ${s.streamSeq} after ${s.attempts} attempts: ${s.error}`).join("; "),
        }),
      (e: unknown) => (checks.stuck = failed(e)),
    ),
    ...(worker
      ? [
          within(worker.partitionsHeld()).then(
            (heldAnywhere) => {
              const held = worker.held();
              // The layout this worker applies (after a resize, not TALLY_PARTITIONS; while one drains, the old one).
              const partitions = worker.layout()?.partitions ?? topology.partitions;
              const stuckHere = worker.statuses().filter((s) => s.stuck);
              checks.leases = {
                ok: heldAnywhere >= partitions && stuckHere.length === 0,
                held: held.length,
                heldByAnyWorker: heldAnywhere,
                partitions: held.join(","),
                // A worker may rightly hold none (more workers than partitions); what must hold is that someone holds each.
                detail:
                  `${held.length} of ${partitions} partitions held by this worker, ${Math.min(heldAnywhere, partitions)} by some worker` +
                  (stuckHere.length > 0
                    ? `; stuck here: ${stuckHere.map((s) => `${s.partition} (${s.attempts} attempts: ${s.lastError})`).join(", ")}`
                    : ""),
              };
            },
            (e: unknown) => (checks.leases = failed(e)),
          ),
        ]
      : []),
  ]);
  if (readers && readers.length > 0) {
    const idle = readers.filter((r) => !r.streaming).map((r) => r.name);
    checks.cdc = {
      ok: idle.length === 0,
      detail: idle.length === 0 ? `${readers.length} sources streaming` : `not streaming (snapshotting, reconnecting or stopped): ${idle.join(", ")}`,
    };
  }
  return { ready: Object.values(checks).every((c) => c.ok), checks };
}

/** A refused publish counts until a later one succeeds, or this long has passed without another. */
const REFUSAL_MEMORY_MS = 60_000;

/** Less room left than 2% of the limit (at least 1 KiB): the next publishes are refused, or old commands dropped. */
const nearlyFull = (used: number, limit: number): boolean => limit - used < Math.max(limit * 0.02, 1024);

/** The commands stream exists, and its store has room (a stream or account limit reached refuses publishes). */
async function jetstreamCheck(ctx: ApiContext): Promise<Check> {
  const { nats, topology } = ctx;
  const info = await nats.jsm.streams.info(topology.commandsStream).catch((e: unknown) => {
    if (isNotFound(e)) throw new Error(`the commands stream ${topology.commandsStream} is missing (was the NATS store lost?)`);
    throw e;
  });
  const account = await nats.jsm.getAccountInfo();
  const maxStorage = account.limits?.max_storage ?? -1;
  if (maxStorage > 0 && nearlyFull(account.storage, maxStorage))
    return { ok: false, detail: `JetStream storage full: ${account.storage} of ${maxStorage} bytes used`, messages: info.state.messages };
  const maxBytes = info.config.max_bytes ?? -1;
  if (maxBytes > 0 && nearlyFull(info.state.bytes, maxBytes))
    return { ok: false, detail: `the commands stream is full: ${info.state.bytes} of ${maxBytes} bytes`, messages: info.state.messages };
  const refusal = publishHealth.lastRefusal;
  if (refusal && refusal.at > publishHealth.lastSuccessAt && Date.now() - refusal.at < REFUSAL_MEMORY_MS)
    return {
      ok: false,
      detail: `JetStream refused a command publish ${Math.round((Date.now() - refusal.at) / 1000)} s ago for want of room: ${refusal.message}`,
      messages: info.state.messages,
    };
  return { ok: true, messages: info.state.messages, created: info.created };
}
