import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { sleep } from "../../platform/index.ts";
import { ID_JSON_PATTERN, bundleAvailable, locationAvailable, quantityValue } from "../../contract/index.ts";
import type { ApiContext } from "../context.ts";
import { ApiError, errors, invalidField } from "../errors.ts";
import { lastEventId, streamFeed } from "../eventStream.ts";
import { ACCESS_TOKEN_PARAM, STREAM_TOKEN_ROUTE, STREAM_TOKEN_TTL_SECONDS, StreamTokens } from "../auth.ts";

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
    reason: {
      type: "string",
      enum: ["discontinued", "blocked"],
      description:
        "present when the item's status withholds it from this channel: available is 0 and status out whatever the stock " +
        "(blocked: every channel; discontinued: channels that do not sell remaining stock). Republished when the status changes, " +
        "with the same seq and version (no stock moved)",
    },
    stock: {
      type: "object",
      required: ["available", "status"],
      description: "with reason: what the stock alone would allow (shown again once the item is active)",
      properties: { available: { type: ["integer", "string"] }, status: { type: "string", enum: ["in_stock", "low", "out"] } },
    },
    components: {
      type: "array",
      items: { $ref: "BundleComponentAvailability#" },
      description:
        "only for a bundle: its components, each with what the channel may sell of it now. The bundle's available is min over " +
        "them of ⌊component available / qty⌋ (0 when one is out); its onHand likewise; its reserved is 0 (a bundle is held as its " +
        "components); its seq and version count the bundle's own publications",
    },
  },
} as const;

/** The named component schemas of these routes (registered with addSchema, referenced as `<$id>#`). */
export const availabilitySchemas = [
  {
    $id: "BundleComponentAvailability",
    type: "object",
    required: ["sku", "qty", "available"],
    properties: {
      sku: { type: "string" },
      qty: { type: "integer", description: "base units of the component in one bundle" },
      available: {
        type: ["integer", "string"],
        description: "what the channel (or, in a stock answer, the location) may sell of the component: 0 when it has never had stock there",
      },
    },
  },
  { $id: "Availability", description: "What one channel may sell of one SKU (or bundle)", ...Availability },
  {
    $id: "AvailabilityList",
    type: "object",
    required: ["channel", "items", "unknown", "lastEventId"],
    properties: {
      channel: { type: "string" },
      lastEventId: { type: "integer", description: "the stream position of this snapshot: pass it to the stream as ?lastEventId=" },
      items: { type: "array", items: { $ref: "Availability#" } },
      unknown: { type: "array", items: { type: "string" }, description: "SKUs the ledger has never seen" },
    },
  },
  {
    $id: "StreamTokenRequest",
    type: "object",
    additionalProperties: false,
    properties: {
      channel: { type: "string", description: "default: the token's channel" },
      ttlSeconds: {
        type: "integer",
        minimum: STREAM_TOKEN_TTL_SECONDS.min,
        maximum: STREAM_TOKEN_TTL_SECONDS.max,
        description: `default ${STREAM_TOKEN_TTL_SECONDS.default}`,
      },
    },
  },
  {
    $id: "StreamToken",
    type: "object",
    required: ["token", "channel", "expiresAt"],
    properties: {
      token: { type: "string", description: "for ?access_token= on the availability and catalog snapshots and streams of this channel" },
      channel: { type: "string" },
      expiresAt: { type: "string", format: "date-time" },
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
      components: {
        type: "array",
        items: { $ref: "BundleComponentAvailability#" },
        description: "only for a bundle: what the location has available of each component (its available and onHand follow the bundle rule)",
      },
    },
  },
  {
    $id: "Stock",
    type: "object",
    required: ["sku", "seq", "locations"],
    properties: {
      sku: { type: "string" },
      seq: { type: "integer", description: "the SKU's ledger sequence (0 for a bundle: it has no ledger of its own)" },
      locations: { type: "array", items: { $ref: "LocationStock#" } },
    },
  },
] as const;

export interface AvailabilityView {
  channel: string;
  sku: string;
  available: number;
  onHand: number;
  reserved: number;
  status: string;
  seq: number;
  version: number;
  updatedAt: string | null;
  /** A bundle's components: as published (sku, qty), then with what the channel may sell of each now. */
  components?: Array<{ sku: string; qty: number; available?: number | string }>;
}

/** Availability per channel (one SKU, many, a live SSE stream) and stock per location. */
export async function availabilityRoutes(app: FastifyInstance, { ctx }: { ctx: ApiContext }): Promise<void> {
  channelAvailabilityRoutes(app, ctx);
  stockRoute(app, ctx);
  streamRoute(app, ctx);
  mintRoute(app, ctx);
}

const config = { scope: "availability:read" as const };

/** The channel's availability of the SKUs from the KV bucket; a SKU the ledger knows but no projection has yet shows 0. */
export async function lookup(ctx: ApiContext, channel: string, skus: ReadonlyArray<string>): Promise<Map<string, AvailabilityView>> {
  const out = await kvValues(ctx, channel, skus);
  await addKnownSkus(ctx, channel, skus, out);
  await withComponents(ctx, channel, out);
  return out;
}

/** The channel's availability of the SKUs as the KV bucket has it (a SKU without a value is left out). */
async function kvValues(ctx: ApiContext, channel: string, skus: ReadonlyArray<string>): Promise<Map<string, AvailabilityView>> {
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
  return out;
}

/** A SKU the ledger knows but that has never had stock in this channel's locations: nothing to sell. So is a bundle not yet derived. */
async function addKnownSkus(ctx: ApiContext, channel: string, skus: ReadonlyArray<string>, out: Map<string, AvailabilityView>): Promise<void> {
  const missing = skus.filter((s) => !out.has(s));
  if (missing.length === 0) return;
  const known = await ctx.sql<Array<{ sku: string; seq: number; version: number }>>`
    select sku, seq, version from sku_heads where sku = any(${ctx.sql.array(missing)}::text[])`;
  for (const k of known)
    out.set(k.sku, { channel, sku: k.sku, available: 0, onHand: 0, reserved: 0, status: "out", seq: k.seq, version: k.version, updatedAt: null });
  const bundles = await bundleDefinitions(
    ctx,
    missing.filter((s) => !out.has(s)),
  );
  for (const [sku, components] of bundles)
    out.set(sku, { channel, sku, available: 0, onHand: 0, reserved: 0, status: "out", seq: 0, version: 0, updatedAt: null, components });
}

/** The bundles among the SKUs, with their well-formed components in the item master's order (repeats summed). */
async function bundleDefinitions(ctx: ApiContext, skus: ReadonlyArray<string>): Promise<Map<string, Array<{ sku: string; qty: number }>>> {
  const out = new Map<string, Array<{ sku: string; qty: number }>>();
  if (skus.length === 0) return out;
  const rows = await ctx.sql<Array<{ sku: string; components: unknown }>>`
    select sku, components from items where kind = 'bundle' and sku = any(${ctx.sql.array([...skus])}::text[])`;
  for (const r of rows) {
    const summed = new Map<string, number>();
    for (const c of Array.isArray(r.components) ? (r.components as Array<{ sku?: unknown; qty?: unknown }>) : [])
      if (typeof c?.sku === "string" && typeof c.qty === "number" && Number.isSafeInteger(c.qty) && c.qty > 0)
        summed.set(c.sku, (summed.get(c.sku) ?? 0) + c.qty);
    out.set(
      r.sku,
      [...summed].map(([sku, qty]) => ({ sku, qty })),
    );
  }
  return out;
}

/** Each bundle's components with what the channel may sell of each now (the KV bucket; 0 where never published). */
async function withComponents(ctx: ApiContext, channel: string, views: Map<string, AvailabilityView>): Promise<void> {
  const bundles = [...views.values()].filter((v) => v.components !== undefined);
  if (bundles.length === 0) return;
  const parts = await kvValues(ctx, channel, [...new Set(bundles.flatMap((b) => b.components!.map((c) => c.sku)))]);
  for (const b of bundles) b.components = b.components!.map((c) => ({ sku: c.sku, qty: c.qty, available: parts.get(c.sku)?.available ?? 0 }));
}

/** How often a snapshot is read again when a SKU changed while it was read, and how recent a change counts as in flight. */
const SNAPSHOT_ATTEMPTS = 6;
const IN_FLIGHT_MS = 5000;

/**
 * The channel's availability of the SKUs as of one position of the availability stream (`lastEventId`, the id
 * of the last event it includes): a stream opened after that id delivers every later change exactly once and
 * nothing already in the snapshot. Each SKU's value is the last stream message on its subject; a SKU with none
 * left in the stream (unchanged for longer than the stream keeps) comes from the KV bucket, or is known-but-never-
 * stocked (0). When a SKU changed while the snapshot was read (its message is past the position, or a KV value
 * has no stream message yet) the snapshot is read again; if it keeps changing, the newer value is kept and the
 * stream may repeat it (same `seq`), which clients take as they take any projection not older than theirs.
 */
async function snapshot(ctx: ApiContext, channel: string, skus: ReadonlyArray<string>) {
  for (let attempt = 1; ; attempt++) {
    const lastEventId = (await ctx.nats.jsm.streams.info(ctx.topology.availabilityStream)).state.last_seq;
    const { found, moved } = await readAsOf(ctx, channel, skus, lastEventId);
    if (!moved || attempt >= SNAPSHOT_ATTEMPTS) {
      await addKnownSkus(ctx, channel, skus, found);
      await withComponents(ctx, channel, found);
      return { lastEventId, found };
    }
    await sleep(20 * attempt);
  }
}

/** Each SKU's last availability message at or before `position`; `moved` when one has a newer change (see `snapshot`). */
async function readAsOf(ctx: ApiContext, channel: string, skus: ReadonlyArray<string>, position: number) {
  const found = new Map<string, AvailabilityView>();
  let moved = false;
  const { jsm, availability: kv } = ctx.nats;
  const queue = [...new Set(skus)];
  const one = async (sku: string) => {
    const last_by_subj = ctx.topology.availabilitySubject(channel, sku);
    const m = await jsm.streams.getMessage(ctx.topology.availabilityStream, { last_by_subj }); // null: none left in the stream
    if (m) {
      if (m.seq > position) moved = true;
      found.set(sku, m.json<AvailabilityView>());
      return;
    }
    const e = await kv.get(ctx.topology.availabilityKey(channel, sku));
    if (e?.operation !== "PUT" || e.length === 0) return;
    if (Date.now() - e.created.getTime() < IN_FLIGHT_MS) moved = true; // its stream message may land after the position
    found.set(sku, e.json<AvailabilityView>());
  };
  await Promise.all(
    Array.from({ length: Math.min(32, queue.length) }, async () => {
      for (let sku = queue.pop(); sku !== undefined; sku = queue.pop()) await one(sku);
    }),
  );
  return { found, moved };
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
      config: STREAM_TOKEN_ROUTE, // also a stream token (`?access_token=`), for browsers
      schema: {
        operationId: "listAvailability",
        tags: ["availability"],
        summary: `What one channel may sell of up to ${MAX_SKUS} SKUs: a snapshot to stream on from`,
        description:
          "`lastEventId` is the availability stream's position the snapshot is as of: open the stream with `?lastEventId=` set " +
          "to it and every later change arrives exactly once, none already in the snapshot (see docs/browser.md).",
        querystring: {
          type: "object",
          required: ["skus"],
          properties: {
            channel: { type: "string" },
            skus: { type: "string", minLength: 1, description: `comma-separated, at most ${MAX_SKUS}` },
            access_token: ACCESS_TOKEN_PARAM,
          },
        },
        response: { 200: { $ref: "AvailabilityList#" }, ...errors(400, 401, 403, 404) },
      },
    },
    async (req) => {
      const channel = ctx.channelFor(req, req.query.channel);
      const skus = parseSkus(req.query.skus);
      const { lastEventId, found } = await snapshot(ctx, channel, skus);
      return {
        channel,
        lastEventId,
        items: skus.flatMap((s) => (found.has(s) ? [found.get(s)!] : [])),
        unknown: skus.filter((s) => !found.has(s)),
      };
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
      if (rows.length === 0) {
        const bundle = (await bundleDefinitions(ctx, [sku])).get(sku);
        if (bundle) return { sku, seq: 0, locations: (await bundleStock(ctx, bundle)).filter((r) => !only || only.has(r.location)) };
        throw new ApiError(404, "unknown_sku", `no stock has ever been recorded for SKU ${sku}`);
      }
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
      config: STREAM_TOKEN_ROUTE, // also a stream token (`?access_token=`), for browsers
      schema: {
        operationId: "streamAvailability",
        tags: ["availability"],
        summary: "Server-sent events of a channel's availability changes, resumable with Last-Event-ID",
        description:
          "Each event is `event: availability`, `id: <availability stream sequence>`, `data: <Availability JSON>`, in order. " +
          "Reconnect with the Last-Event-ID header (or ?lastEventId=) to resume after the last event seen; without it the stream starts " +
          "with changes from now on. `event: reset` means the history needed to resume has expired: re-read the snapshot. " +
          "A browser opens it as `new EventSource(url + '?access_token=<stream token>&lastEventId=<snapshot lastEventId>')`.",
        querystring: {
          type: "object",
          properties: {
            channel: { type: "string" },
            skus: { type: "string", description: `comma-separated filter, at most ${MAX_SKUS}` },
            lastEventId: {
              type: "integer",
              minimum: 0,
              maximum: 999_999_999_999_999,
              description: "as Last-Event-ID (which wins when both are sent): the last event seen, or a snapshot's lastEventId",
            },
            access_token: ACCESS_TOKEN_PARAM,
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

/** POST /v1/stream-tokens: a shop's backend mints a short-lived token its web page streams one channel's availability with. */
function mintRoute(app: FastifyInstance, ctx: ApiContext): void {
  const tokens = new StreamTokens(ctx.settings.streamTokenSecret);
  app.post<{ Body: { channel?: string; ttlSeconds?: number } }>(
    "/v1/stream-tokens",
    {
      config,
      schema: {
        operationId: "createStreamToken",
        tags: ["availability"],
        summary: "Mint a short-lived stream token for a web page (read-only, one channel)",
        description:
          "For a shop's backend, with its own token (scope availability:read; a channel token mints for its channel only). The token " +
          "is accepted only as `?access_token=` by GET /v1/availability (the snapshot) and GET /v1/availability/stream, and by " +
          "GET /v1/catalog (the delta feed) and GET /v1/catalog/stream, for that channel, until `expiresAt`; a stream already open " +
          "then stays open. 503 when TALLY_STREAM_TOKEN_SECRET is not set.",
        body: { $ref: "StreamTokenRequest#" },
        response: { 200: { $ref: "StreamToken#" }, ...errors(400, 401, 403, 404, 503) },
      },
    },
    async (req) => {
      const channel = ctx.channelFor(req, req.body?.channel);
      if (!tokens.enabled)
        throw new ApiError(
          503,
          "stream_tokens_disabled",
          "stream tokens are not configured: set TALLY_STREAM_TOKEN_SECRET (the same on every API replica)",
        );
      const { token, expiresAt } = tokens.mint(req.principal!.id, channel, req.body?.ttlSeconds ?? STREAM_TOKEN_TTL_SECONDS.default);
      return { token, channel, expiresAt };
    },
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

/**
 * A bundle per location: the bundle rule over each component's available there (on hand − reserved − safety
 * stock), and over their on hand; a location where a component has never been stocked has none of the bundle.
 */
async function bundleStock(ctx: ApiContext, components: ReadonlyArray<{ sku: string; qty: number }>) {
  const byComponent = await Promise.all(components.map(async (c) => new Map((await stockRows(ctx, c.sku)).map((r) => [r.location, r] as const))));
  const locations = [...new Set(byComponent.flatMap((m) => [...m.keys()]))].sort();
  return locations.map((location) => {
    const at = byComponent.map((m) => m.get(location));
    const rule = (pick: (r: NonNullable<(typeof at)[number]>) => number | string) =>
      bundleAvailable(components.map((c, i) => ({ qty: c.qty, available: at[i] ? BigInt(pick(at[i])) : null })));
    const available = rule((r) => r.available);
    return {
      location,
      available: quantityValue(available),
      onHand: quantityValue(rule((r) => r.onHand)),
      status: available > 0n ? "in_stock" : "out",
      components: components.map((c, i) => ({ sku: c.sku, qty: c.qty, available: at[i]?.available ?? 0 })),
    };
  });
}

/** The channel's availability changes as server-sent events, only those of `?skus=` when given. */
async function streamAvailability(
  ctx: ApiContext,
  req: FastifyRequest<{ Querystring: { channel?: string; skus?: string; lastEventId?: number }; Headers: { "last-event-id"?: string } }>,
  reply: FastifyReply,
): Promise<void> {
  const channel = ctx.channelFor(req, req.query.channel);
  const only = req.query.skus !== undefined ? new Set(parseSkus(req.query.skus)) : null;
  const accept = only
    ? (subject: string) => {
        const sku = ctx.topology.skuOfAvailabilitySubject(channel, subject);
        return sku !== null && only.has(sku);
      }
    : undefined;
  await streamFeed(ctx, req, reply, {
    stream: ctx.topology.availabilityStream,
    filterSubject: ctx.topology.availabilitySubjects(channel),
    event: "availability",
    after: lastEventId(req),
    accept,
  });
}
