import { usableWebhookTargets } from "../../channels/index.ts";
import type { FastifyInstance } from "fastify";
import { Crosswalk, configuredSources, type ResolvedSource } from "../../../cdc/index.ts";
import { sourceStatus } from "../../../cdc/index.ts";
import { connectPostgres } from "../../platform/index.ts";
import { activeLayout, listStuck, requestSkip } from "../../../ledger/index.ts";
import { discardDeadLetter, getDeadLetter, listDeadLetters, replayDeadLetter } from "../../operations/index.ts";
import type { ApiContext } from "../context.ts";
import { ApiError, errors, invalidField } from "../errors.ts";

const Letter = {
  $id: "DeadLetter",
  type: "object",
  description: "A message that could not be applied or mapped, kept with its reason for an operator",
  properties: {
    id: { type: "integer", description: "its sequence in the dead-letter stream" },
    origin: { type: "string", description: "pos, commands, submit, or a CDC source" },
    reason: { type: "string" },
    payload: {},
    context: { type: "object", additionalProperties: true },
    at: { type: "string", format: "date-time" },
    payloadStored: {
      type: "object",
      description: "set when the payload was too large for NATS: it is kept in Postgres (payload is then null; a replay reads it back)",
      properties: {
        in: { type: "string" },
        table: { type: "string" },
        key: { type: "string" },
        bytes: { type: "integer" },
        json: { type: "boolean" },
      },
    },
  },
} as const;

const StuckPartition = {
  $id: "StuckPartition",
  type: "object",
  properties: {
    partition: { type: "integer" },
    streamSeq: { type: "integer" },
    attempts: { type: "integer" },
    error: { type: "string", description: "the last failure's message" },
    since: { type: "string", format: "date-time" },
    updatedAt: { type: "string", format: "date-time" },
  },
} as const;

/** The named component schemas of these routes. */
export const operatorSchemas = [
  Letter,
  StuckPartition,
  {
    $id: "DeadLetterList",
    type: "object",
    properties: { total: { type: "integer" }, letters: { type: "array", items: { $ref: "DeadLetter#" } } },
  },
  {
    $id: "DeadLetterReplayed",
    type: "object",
    properties: { id: { type: "integer" }, ok: { type: "boolean" }, commands: { type: "integer" } },
  },
  { $id: "DeadLetterDiscarded", type: "object", properties: { id: { type: "integer" }, discarded: { type: "boolean" } } },
  { $id: "StuckPartitionList", type: "object", properties: { stuck: { type: "array", items: { $ref: "StuckPartition#" } } } },
  {
    $id: "SkipRequest",
    type: "object",
    properties: { seq: { type: "integer", minimum: 1, maximum: Number.MAX_SAFE_INTEGER, description: "default: the message it is stuck at" } },
    additionalProperties: false,
  },
  {
    $id: "SkipRequested",
    type: "object",
    properties: { partition: { type: "integer" }, seq: { type: "integer" }, requested: { type: "boolean" } },
  },
  {
    $id: "SourceList",
    type: "object",
    properties: {
      sources: {
        type: "array",
        items: { type: "object", additionalProperties: true, description: "a source's slot, lag, last event, snapshot, counters (or its error)" },
      },
    },
  },
] as const;

const IdParams = { type: "object", required: ["id"], properties: { id: { type: "integer", minimum: 1 } } } as const;

/** Dead letters (list, replay, discard), stuck partitions (list, skip) and CDC sources; the `admin` scope. */
export async function operatorRoutes(app: FastifyInstance, { ctx }: { ctx: ApiContext }): Promise<void> {
  deadLetterRoutes(app, ctx);
  stuckPartitionRoutes(app, ctx);
  sourceRoutes(app, ctx);
}

const read = { scope: "admin" as const };
const writeConfig = (ctx: ApiContext) => ({ scope: "admin" as const, rateLimit: { max: ctx.opts.rateLimitPerMinute, timeWindow: 60_000 } });

/** GET /v1/dlq, POST /v1/dlq/:id/replay, DELETE /v1/dlq/:id. */
function deadLetterRoutes(app: FastifyInstance, ctx: ApiContext): void {
  const write = writeConfig(ctx);
  app.get<{ Querystring: { origin?: string; limit: number } }>(
    "/v1/dlq",
    {
      config: read,
      schema: {
        operationId: "listDeadLetters",
        tags: ["operators"],
        summary: "Dead letters, oldest first",
        querystring: {
          type: "object",
          properties: {
            origin: { type: "string", pattern: "^[A-Za-z0-9_-]{1,64}$" },
            limit: { type: "integer", minimum: 1, maximum: 10_000, default: 1000 },
          },
        },
        response: {
          200: { $ref: "DeadLetterList#" },
          ...errors(400, 401, 403),
        },
      },
    },
    async (req) => {
      const letters = await listDeadLetters(ctx.nats, ctx.topology, req.query.origin);
      return { total: letters.length, letters: letters.slice(0, req.query.limit) };
    },
  );

  app.post<{ Params: { id: number } }>(
    "/v1/dlq/:id/replay",
    {
      config: write,
      schema: {
        operationId: "replayDeadLetter",
        tags: ["operators"],
        summary: "Map or decode a dead letter again and publish it; removes it on success",
        params: IdParams,
        response: {
          200: { $ref: "DeadLetterReplayed#" },
          ...errors(401, 403, 404, 409, 429),
        },
      },
    },
    async (req) => {
      const letter = await getDeadLetter(ctx.nats, ctx.topology, req.params.id);
      if (!letter) throw new ApiError(404, "not_found", `no dead letter ${req.params.id}`);
      const sources = new Map<string, ResolvedSource>(configuredSources(ctx.config, ctx.topology.env).map((s) => [s.name, s]));
      const r = await replayDeadLetter(
        { sql: ctx.sql, nats: ctx.nats, topology: ctx.topology, sources, pos: ctx.pos, webhooks: usableWebhookTargets(ctx.config) },
        letter,
        letter.origin === "pos" ? undefined : await Crosswalk.load(ctx.sql),
      );
      if (!r.ok) throw new ApiError(409, "replay_failed", r.reason, { id: letter.id });
      req.log.info({ dlqId: letter.id, origin: letter.origin }, "dead letter replayed");
      return r;
    },
  );

  app.delete<{ Params: { id: number } }>(
    "/v1/dlq/:id",
    {
      config: write,
      schema: {
        operationId: "discardDeadLetter",
        tags: ["operators"],
        summary: "Discard a dead letter for good",
        params: IdParams,
        response: { 200: { $ref: "DeadLetterDiscarded#" }, ...errors(401, 403, 404, 429) },
      },
    },
    async (req) => {
      const letter = await getDeadLetter(ctx.nats, ctx.topology, req.params.id);
      if (!letter) throw new ApiError(404, "not_found", `no dead letter ${req.params.id}`);
      await discardDeadLetter(ctx.nats, ctx.topology, letter.id);
      req.log.info({ dlqId: letter.id, origin: letter.origin, reason: letter.reason }, "dead letter discarded");
      return { id: letter.id, discarded: true };
    },
  );
}

/** GET /v1/partitions/stuck, POST /v1/partitions/:partition/skip. */
function stuckPartitionRoutes(app: FastifyInstance, ctx: ApiContext): void {
  const write = writeConfig(ctx);
  app.get(
    "/v1/partitions/stuck",
    {
      config: read,
      schema: {
        operationId: "listStuckPartitions",
        tags: ["operators"],
        summary: "Partitions not advancing: the stream message each is stuck at, the failed attempts in a row and the last error",
        response: {
          200: { $ref: "StuckPartitionList#" },
          ...errors(401, 403),
        },
      },
    },
    async () => ({ stuck: await listStuck(ctx.sql) }),
  );

  app.post<{ Params: { partition: number }; Body: { seq?: number } | undefined }>(
    "/v1/partitions/:partition/skip",
    {
      config: write,
      schema: {
        operationId: "skipStuckMessage",
        tags: ["operators"],
        summary: "Ask the worker holding a stuck partition to dead-letter the message it is stuck at (or `seq`) and move on",
        params: {
          type: "object",
          required: ["partition"],
          // No maximum here: the partition count can change while the API runs (`tally partitions resize`).
          properties: { partition: { type: "integer", minimum: 0 } },
        },
        body: { $ref: "SkipRequest#" },
        response: {
          202: { $ref: "SkipRequested#" },
          ...errors(400, 401, 403, 409, 429),
        },
      },
    },
    async (req, reply) => {
      const { partition } = req.params;
      const partitions = (await activeLayout(ctx.sql))?.partitions ?? ctx.topology.basePartitions;
      if (partition >= partitions)
        throw invalidField("partition", `expected a partition from 0 to ${partitions - 1} (the layout workers apply), got ${partition}`);
      const seq = req.body?.seq ?? (await listStuck(ctx.sql)).find((s) => s.partition === partition)?.streamSeq;
      if (seq === undefined) throw new ApiError(409, "not_stuck", `partition ${partition} is not stuck; give seq to skip a message anyway`);
      const requested = await requestSkip(ctx.sql, partition, seq, `${req.principal?.id ?? "admin"}@api`);
      req.log.warn({ partition, seq }, "operator asked to skip a partition's message");
      return reply.code(202).send({ partition, seq, requested });
    },
  );
}

/** GET /v1/sources. */
function sourceRoutes(app: FastifyInstance, ctx: ApiContext): void {
  app.get(
    "/v1/sources",
    {
      config: read,
      schema: {
        operationId: "listSources",
        tags: ["operators"],
        summary: "Per CDC source whose URL is set: slot, lag, last event, snapshot, counters",
        response: {
          200: { $ref: "SourceList#" },
          ...errors(401, 403),
        },
      },
    },
    async () => {
      const sources = configuredSources(ctx.config, ctx.topology.env);
      const reading = new Map((ctx.readers ?? []).map((r) => [r.name, r]));
      const out = await Promise.all(
        sources.map(async (source) => {
          const sql = connectPostgres(source.url, { max: 1, application: "tally-api-sources" });
          try {
            const status = await sourceStatus(sql, ctx.sql, source);
            const reader = reading.get(source.name);
            return { ...status, reader: reader ? { streaming: reader.streaming, metrics: reader.metrics } : null };
          } catch (error) {
            return { source: source.name, error: (error as Error).message };
          } finally {
            await sql.end({ timeout: 5 });
          }
        }),
      );
      return { sources: out };
    },
  );
}
