import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { AckPolicy, DeliverPolicy, type ConsumerConfig } from "@nats-io/jetstream";
import { DeliveryOrder } from "../../wire/index.ts";
import { ID_JSON_PATTERN, locationAvailable } from "../../contract/index.ts";
import type { ApiContext } from "../context.ts";
import { ApiError, errors, invalidField } from "../errors.ts";
import { openEventStream } from "../eventStream.ts";

/** The one id grammar (see src/contract/command.ts). */
const SKU = ID_JSON_PATTERN;
const MAX_SKUS = 1000;

const Availability = {
  type: "object",
  required: ["channel", "sku", "available", "onHand", "reserved", "status", "seq", "updatedAt"],
  properties: {
    channel: { type: "string" },
    sku: { type: "string" },
    available: {
      type: ["integer", "string"],
      description: "what the channel may sell: its locations' available (clamped at 0) less its buffer. Quantities past 2^53 are decimal strings",
    },
    onHand: { type: ["integer", "string"] },
    reserved: { type: ["integer", "string"] },
    status: { type: "string", enum: ["in_stock", "low", "out"] },
    seq: { type: "integer", description: "the SKU's ledger sequence: drop a projection older than one you have" },
    version: { type: "integer" },
    updatedAt: { type: ["string", "null"], format: "date-time", description: "null for a SKU no projection has reached yet" },
  },
} as const;

/** The named component schemas of these routes (registered with addSchema, referenced as `<$id>#`). */
export const availabilitySchemas = [
  { $id: "Availability", description: "What one channel may sell of one SKU", ...Availability },
  {
    $id: "AvailabilityList",
    type: "object",
    required: ["channel", "items", "unknown"],
    properties: {
      channel: { type: "string" },
      items: { type: "array", items: { $ref: "Availability#" } },
      unknown: { type: "array", items: { type: "string" }, description: "SKUs the ledger has never seen" },
    },
  },
  {
    $id: "LocationStock",
    type: "object",
    properties: {
      location: { type: "string" },
      onHand: { type: ["integer", "string"], description: "past 2^53, a decimal string (as every quantity)" },
      reserved: { type: ["integer", "string"] },
      inTransit: { type: ["integer", "string"] },
      damaged: { type: ["integer", "string"] },
      available: { type: ["integer", "string"], description: "on hand − reserved − safety stock (may be negative)" },
      safetyStock: { type: "integer" },
      reorderPoint: { type: "integer" },
      status: { type: "string" },
      updatedAt: { type: ["string", "null"], format: "date-time" },
    },
  },
  {
    $id: "Stock",
    type: "object",
    required: ["sku", "seq", "locations"],
    properties: { sku: { type: "string" }, seq: { type: "integer" }, locations: { type: "array", items: { $ref: "LocationStock#" } } },
  },
] as const;

interface AvailabilityView {
  channel: string;
  sku: string;
  available: number;
  onHand: number;
  reserved: number;
  status: string;
  seq: number;
  version: number;
  updatedAt: string | null;
}

/** Availability per channel (one SKU, many, a live SSE stream) and stock per location. */
export async function availabilityRoutes(app: FastifyInstance, { ctx }: { ctx: ApiContext }): Promise<void> {
  channelAvailabilityRoutes(app, ctx);
  stockRoute(app, ctx);
  streamRoute(app, ctx);
}

const config = { scope: "availability:read" as const };

/** The channel's availability of the SKUs from the KV bucket; a SKU the ledger knows but no projection has yet shows 0. */
async function lookup(ctx: ApiContext, channel: string, skus: ReadonlyArray<string>): Promise<Map<string, AvailabilityView>> {
  const out = new Map<string, AvailabilityView>();
  const kv = ctx.nats.availability;
  const queue = [...new Set(skus)];
  await Promise.all(
    Array.from({ length: Math.min(32, queue.length) }, async () => {
      for (let sku = queue.pop(); sku !== undefined; sku = queue.pop()) {
        const e = await kv.get(ctx.topology.availabilityKey(channel, sku)).catch(() => null); // unreadable: answered as unknown, like a missing key
        if (e && e.operation === "PUT" && e.length > 0) out.set(sku, e.json<AvailabilityView>());
      }
    }),
  );
  // A SKU the ledger knows but that has never had stock in this channel's locations: nothing to sell.
  const missing = skus.filter((s) => !out.has(s));
  if (missing.length > 0) {
    const known = await ctx.sql<Array<{ sku: string; seq: number; version: number }>>`
      select sku, seq, version from sku_heads where sku = any(${ctx.sql.array(missing)}::text[])`;
    for (const k of known)
      out.set(k.sku, { channel, sku: k.sku, available: 0, onHand: 0, reserved: 0, status: "out", seq: k.seq, version: k.version, updatedAt: null });
  }
  return out;
}

/** GET /v1/availability/:sku and GET /v1/availability?skus=. */
function channelAvailabilityRoutes(app: FastifyInstance, ctx: ApiContext): void {
  app.get<{ Params: { sku: string }; Querystring: { channel?: string } }>(
    "/v1/availability/:sku",
    {
      config,
      schema: {
        operationId: "getAvailability",
        tags: ["availability"],
        summary: "What one channel may sell of a SKU",
        params: { type: "object", required: ["sku"], properties: { sku: { type: "string", pattern: SKU } } },
        querystring: { type: "object", properties: { channel: { type: "string", description: "default: the token's channel" } } },
        response: { 200: { $ref: "Availability#" }, ...errors(400, 401, 403, 404) },
      },
    },
    async (req) => {
      const channel = ctx.channelFor(req, req.query.channel);
      const found = (await lookup(ctx, channel, [req.params.sku])).get(req.params.sku);
      if (!found) throw new ApiError(404, "unknown_sku", `the ledger has never seen SKU ${req.params.sku}`);
      return found;
    },
  );

  app.get<{ Querystring: { channel?: string; skus: string } }>(
    "/v1/availability",
    {
      config,
      schema: {
        operationId: "listAvailability",
        tags: ["availability"],
        summary: `What one channel may sell of up to ${MAX_SKUS} SKUs`,
        querystring: {
          type: "object",
          required: ["skus"],
          properties: { channel: { type: "string" }, skus: { type: "string", minLength: 1, description: `comma-separated, at most ${MAX_SKUS}` } },
        },
        response: { 200: { $ref: "AvailabilityList#" }, ...errors(400, 401, 403, 404) },
      },
    },
    async (req) => {
      const channel = ctx.channelFor(req, req.query.channel);
      const skus = parseSkus(req.query.skus);
      const found = await lookup(ctx, channel, skus);
      return { channel, items: skus.flatMap((s) => (found.has(s) ? [found.get(s)!] : [])), unknown: skus.filter((s) => !found.has(s)) };
    },
  );
}

/** GET /v1/stock/:sku. */
function stockRoute(app: FastifyInstance, ctx: ApiContext): void {
  app.get<{ Params: { sku: string } }>(
    "/v1/stock/:sku",
    {
      config,
      schema: {
        operationId: "getStock",
        tags: ["availability"],
        summary: "Every location and bucket of a SKU (a channel token sees its channel's locations only)",
        params: { type: "object", required: ["sku"], properties: { sku: { type: "string", pattern: SKU } } },
        response: {
          200: { $ref: "Stock#" },
          ...errors(400, 401, 403, 404),
        },
      },
    },
    async (req) => {
      const { sku } = req.params;
      const only = ctx.locationsFor(req);
      const rows = await stockRows(ctx, sku);
      if (rows.length === 0) throw new ApiError(404, "unknown_sku", `no stock has ever been recorded for SKU ${sku}`);
      const [head] = await ctx.sql<Array<{ seq: number }>>`select seq from sku_heads where sku = ${sku}`;
      return { sku, seq: head?.seq ?? 0, locations: rows.filter((r) => !only || only.has(r.location)) };
    },
  );
}

/** GET /v1/availability/stream. */
function streamRoute(app: FastifyInstance, ctx: ApiContext): void {
  app.get<{ Querystring: { channel?: string; skus?: string; lastEventId?: number }; Headers: { "last-event-id"?: string } }>(
    "/v1/availability/stream",
    {
      config,
      schema: {
        operationId: "streamAvailability",
        tags: ["availability"],
        summary: "Server-sent events of a channel's availability changes, resumable with Last-Event-ID",
        description:
          "Each event is `event: availability`, `id: <availability stream sequence>`, `data: <Availability JSON>`, in order. " +
          "Reconnect with the Last-Event-ID header (or ?lastEventId=) to resume after the last event seen; without it the stream starts " +
          "with changes from now on. `event: reset` means the history needed to resume has expired: re-read the snapshot.",
        querystring: {
          type: "object",
          properties: {
            channel: { type: "string" },
            skus: { type: "string", description: `comma-separated filter, at most ${MAX_SKUS}` },
            lastEventId: { type: "integer", minimum: 0, maximum: 999_999_999_999_999, description: "as Last-Event-ID: the last event seen" },
          },
        },
        headers: { type: "object", properties: { "last-event-id": { type: "string", pattern: "^[0-9]{1,15}$" } } },
        response: {
          200: { description: "server-sent events", content: { "text/event-stream": { schema: { type: "string" } } } },
          ...errors(400, 401, 403, 404),
        },
      },
    },
    async (req, reply) => streamAvailability(ctx, req, reply),
  );
}

function parseSkus(text: string): Array<string> {
  const skus = [
    ...new Set(
      text
        .split(",")
        .map((s) => s.trim())
        .filter(Boolean),
    ),
  ];
  if (skus.length === 0) throw invalidField("querystring.skus", "expected at least one SKU");
  if (skus.length > MAX_SKUS) throw invalidField("querystring.skus", `at most ${MAX_SKUS} SKUs, got ${skus.length}`);
  const bad = skus.find((s) => !new RegExp(SKU).test(s));
  if (bad !== undefined) throw invalidField("querystring.skus", `${JSON.stringify(bad.slice(0, 60))} is not a SKU`);
  return skus;
}

/** A quantity as JSON carries it: a number, or a decimal string past 2^53 (the driver reads those as bigints). */
const quantity = (q: number | bigint): number | string => (typeof q === "bigint" ? q.toString() : q);
/** An exact quantity as the ledger's int8 parser gives it: a number when that is exact, else a bigint. */
const int8 = (q: bigint): number | bigint => (q >= BigInt(Number.MIN_SAFE_INTEGER) && q <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(q) : q);

async function stockRows(ctx: ApiContext, sku: string) {
  const rows = await ctx.sql<
    Array<{
      location: string;
      on_hand: number | bigint;
      reserved: number | bigint;
      in_transit: number | bigint;
      damaged: number | bigint;
      safety_stock: number;
      reorder_point: number;
      status: string | null;
      updated_at: Date | null;
    }>
  >`
    with b as (
      select location,
             coalesce(sum(qty) filter (where bucket = 'on_hand'), 0)    as on_hand,
             coalesce(sum(qty) filter (where bucket = 'reserved'), 0)   as reserved,
             coalesce(sum(qty) filter (where bucket = 'in_transit'), 0) as in_transit,
             coalesce(sum(qty) filter (where bucket = 'damaged'), 0)    as damaged,
             max(updated_at) as updated_at
        from balances where sku = ${sku} group by location)
    select coalesce(b.location, l.location) as location,
           coalesce(b.on_hand, 0)::bigint as on_hand, coalesce(b.reserved, 0)::bigint as reserved,
           coalesce(b.in_transit, 0)::bigint as in_transit, coalesce(b.damaged, 0)::bigint as damaged,
           coalesce(l.safety_stock, 0) as safety_stock, coalesce(l.reorder_point, 0) as reorder_point, l.status, b.updated_at
      from b full join (select * from sku_locations where sku = ${sku}) l on l.location = b.location
     order by 1`;
  return rows.map((r) => ({
    location: r.location,
    onHand: quantity(r.on_hand),
    reserved: quantity(r.reserved),
    inTransit: quantity(r.in_transit),
    damaged: quantity(r.damaged),
    available: quantity(int8(locationAvailable({ onHand: BigInt(r.on_hand), reserved: BigInt(r.reserved), safetyStock: r.safety_stock }))),
    safetyStock: r.safety_stock,
    reorderPoint: r.reorder_point,
    status: r.status ?? "out",
    updatedAt: r.updated_at ? r.updated_at.toISOString() : null,
  }));
}

const HEARTBEAT_MS = 15_000;

async function streamAvailability(
  ctx: ApiContext,
  req: FastifyRequest<{ Querystring: { channel?: string; skus?: string; lastEventId?: number }; Headers: { "last-event-id"?: string } }>,
  reply: FastifyReply,
): Promise<void> {
  const channel = ctx.channelFor(req, req.query.channel);
  const only = req.query.skus !== undefined ? new Set(parseSkus(req.query.skus)) : null;
  const header = req.headers["last-event-id"];
  const after = header !== undefined ? Number(header) : req.query.lastEventId;
  const { jsm, js } = ctx.nats;
  const stream = ctx.topology.availabilityStream;
  const info = await jsm.streams.info(stream);
  const start: Partial<ConsumerConfig> =
    after === undefined
      ? { deliver_policy: DeliverPolicy.New }
      : after + 1 < info.state.first_seq
        ? { deliver_policy: DeliverPolicy.All }
        : { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: after + 1 };
  // A plain ephemeral consumer (no ack): nats-server 2.9 has no multi-filter ordered consumers.
  const ci = await jsm.consumers.add(stream, {
    filter_subject: ctx.topology.availabilitySubjects(channel),
    ack_policy: AckPolicy.None,
    inactive_threshold: 60_000_000_000,
    ...start,
  });
  const consumer = await js.consumers.get(stream, ci.name);
  const res = openEventStream(reply);
  if (after !== undefined && after + 1 < info.state.first_seq)
    res.write(`event: reset\ndata: ${JSON.stringify({ reason: "history_expired", firstSeq: info.state.first_seq })}\n\n`);
  const messages = await consumer.consume({ max_messages: 256 });
  const heartbeat = setInterval(() => res.write(`: keepalive\n\n`), HEARTBEAT_MS);
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
          req.log.warn({ err: gap }, "availability stream skipped deliveries; closing it so the client resumes");
          break;
        }
        const sku = ctx.topology.skuOfAvailabilitySubject(channel, m.subject);
        if (only && (sku === null || !only.has(sku))) continue;
        const ok = res.write(`id: ${m.seq}\nevent: availability\ndata: ${new TextDecoder().decode(m.data)}\n\n`);
        if (!ok) await new Promise<void>((r) => res.once("drain", r));
      }
    } catch (err) {
      req.log.warn({ err }, "availability stream ended");
    } finally {
      close();
    }
  })();
}
