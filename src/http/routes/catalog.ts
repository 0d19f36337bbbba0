import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { InvalidCatalogAck, catalogVersions, ensureCatalogStream, recordCatalogAck } from "../../../cdc/index.ts";
import { ID_JSON_PATTERN } from "../../contract/index.ts";
import type { ApiContext } from "../context.ts";
import { ApiError, errors, invalidField } from "../errors.ts";
import { lastEventId, streamFeed } from "../eventStream.ts";
import { ACCESS_TOKEN_PARAM, STREAM_TOKEN_ROUTE, may } from "../auth.ts";

const MAX_PAGE = 1000;
const DEFAULT_PAGE = 500;

/** What a channel shows of an item's catalog: the fields of CatalogItem that GET /v1/products/:sku answers too. */
export const catalogShown = {
  name: { type: "string", description: "the item's name (its SKU until the item master names it)" },
  status: { type: "string", enum: ["active", "discontinued", "blocked"], description: "a channel sells active items only" },
  unit: { type: "string", description: "the unit the price is for (EA, kg …)" },
  price: {
    type: ["object", "null"],
    description: "null: the channel has no price for the item now",
    required: ["amount", "currency"],
    properties: {
      amount: { type: ["integer", "string"], description: "integer minor units of the currency (cents for EUR); past 2^53, a decimal string" },
      currency: { type: "string", description: "ISO 4217" },
      priceList: { type: "string", description: "the price list it comes from" },
    },
  },
  validUntil: { type: ["string", "null"], format: "date-time", description: "when this price ends or another takes over (null: open-ended)" },
} as const;

const CatalogItem = {
  $id: "CatalogItem",
  type: "object",
  description: "What one channel shows of one item: the KV value under <channel>.<sku> in tally_<env>_catalog",
  required: ["channel", "sku", "name", "status", "unit", "price", "validUntil", "catalogVersion"],
  properties: {
    channel: { type: "string" },
    sku: { type: "string" },
    name: catalogShown.name,
    description: { type: ["string", "null"] },
    status: catalogShown.status,
    unit: catalogShown.unit,
    price: catalogShown.price,
    validUntil: catalogShown.validUntil,
    attributes: { type: "object", additionalProperties: true },
    identifiers: {
      type: "array",
      description: "every identifier of the item in other systems, from the item master (barcode = GTIN/EAN, plu, erp_item, shop_sku …)",
      items: {
        type: "object",
        required: ["system", "id"],
        properties: {
          system: { type: "string" },
          id: { type: "string" },
          uom: { type: "string", description: "the unit it implies (a case barcode)" },
        },
      },
    },
    components: {
      type: "array",
      description: "a bundle's (kit's) components and quantities per bundle; empty for any other item",
      items: { type: "object", required: ["sku", "qty"], properties: { sku: { type: "string" }, qty: { type: "integer" } } },
    },
    catalogVersion: {
      type: "integer",
      description: "the catalog version this projection changed at; every channel's projection of one change carries the same",
    },
    removed: { type: "boolean", description: "in the delta feed: the item left the catalog" },
  },
} as const;

const ChannelCatalogVersion = {
  type: "object",
  required: ["channel", "ackedVersion", "ackedAt", "latestVersion", "behindBy", "behindSince", "lagSeconds", "toleranceSeconds"],
  properties: {
    channel: { type: "string" },
    ackedVersion: { type: "integer", description: "the highest catalog version the channel acknowledged having applied (0: none yet)" },
    ackedAt: { type: ["string", "null"], format: "date-time", description: "when it acknowledged that version" },
    latestVersion: { type: "integer", description: "the last catalog version that changed this channel's catalog (0: none)" },
    behindBy: { type: "integer", description: "catalog versions that changed this channel's catalog above its acknowledged one" },
    behindSince: {
      type: ["string", "null"],
      format: "date-time",
      description: "when the oldest of those versions was recorded (null: the channel runs its latest version)",
    },
    lagSeconds: { type: "number", description: "seconds since behindSince (0: not behind); what tally_catalog_version_lag exports" },
    toleranceSeconds: { type: "integer", description: "the channel's catalogLagToleranceSeconds: the alert fires when lagSeconds exceeds it" },
  },
} as const;

/** The named component schemas of these routes. */
export const catalogSchemas = [
  CatalogItem,
  {
    $id: "CatalogVersions",
    type: "object",
    required: ["headVersion", "at", "channels"],
    properties: {
      headVersion: { type: "integer", description: "the environment's current catalog version" },
      at: { type: "string", format: "date-time", description: "when these figures were read" },
      channels: { type: "array", items: ChannelCatalogVersion },
    },
  },
  {
    $id: "CatalogAckRequest",
    type: "object",
    required: ["version"],
    additionalProperties: false,
    properties: {
      version: {
        type: "integer",
        minimum: 0,
        maximum: 999_999_999_999_999,
        description: "the catalog version the channel has applied (a catalogVersion it received, or the delta feed's); at most the current one",
      },
    },
  },
  {
    $id: "CatalogAck",
    type: "object",
    required: ["channel", "ackedVersion", "ackedAt", "headVersion"],
    properties: {
      channel: { type: "string" },
      ackedVersion: { type: "integer", description: "the channel's acknowledged version now: never lower than before (a late ack changes nothing)" },
      ackedAt: { type: "string", format: "date-time" },
      headVersion: { type: "integer", description: "the environment's current catalog version" },
    },
  },
  {
    $id: "CatalogDelta",
    type: "object",
    required: ["channel", "catalogVersion", "items", "nextCursor"],
    properties: {
      channel: { type: "string" },
      catalogVersion: {
        type: "integer",
        description: "the environment's catalog version this page was read at: once nextCursor is null, pass it as sinceVersion next time",
      },
      items: {
        type: "array",
        items: { $ref: "CatalogItem#" },
        description: "projections changed after sinceVersion, in version order (an item changed again appears once, at its last version)",
      },
      nextCursor: { type: ["string", "null"], description: "pass as cursor (with the same sinceVersion) for the next page; null on the last page" },
    },
  },
] as const;

const config = { scope: "availability:read" as const };
const CURSOR = /^([0-9]{1,15})\.(.+)$/;

/** The cursor of the page after the row `version`, `sku` (opaque to clients). */
const encodeCursor = (version: string, sku: string): string => Buffer.from(`${version}.${sku}`, "utf8").toString("base64url");

function decodeCursor(text: string): { version: string; sku: string } {
  const m = CURSOR.exec(Buffer.from(text, "base64url").toString("utf8"));
  if (!m || !new RegExp(ID_JSON_PATTERN).test(m[2]!)) throw invalidField("querystring.cursor", "not a cursor this feed gave out");
  return { version: m[1]!, sku: m[2]! };
}

/**
 * The catalog per channel: one item (`GET /v1/catalog/:sku`), the delta feed (`GET /v1/catalog`), its
 * server-sent events (`GET /v1/catalog/stream`), and which version each channel runs (its
 * acknowledgements, `GET /v1/catalog/versions`).
 */
export async function catalogRoutes(app: FastifyInstance, { ctx }: { ctx: ApiContext }): Promise<void> {
  versionRoutes(app, ctx);
  streamRoute(app, ctx);
  app.get<{ Params: { sku: string }; Querystring: { channel?: string } }>(
    "/v1/catalog/:sku",
    {
      config,
      schema: {
        operationId: "getCatalogItem",
        tags: ["catalog"],
        summary: "What one channel shows of an item: name, status, unit, its price now and the catalog version",
        params: { type: "object", required: ["sku"], properties: { sku: { type: "string", pattern: ID_JSON_PATTERN } } },
        querystring: { type: "object", properties: { channel: { type: "string", description: "default: the token's channel" } } },
        response: { 200: { $ref: "CatalogItem#" }, ...errors(400, 401, 403, 404) },
      },
    },
    async (req) => {
      const channel = ctx.channelFor(req, req.query.channel);
      const [row] = await ctx.sql<[{ payload: Record<string, unknown> } | undefined]>`
        select payload from catalog_projections
         where channel = ${channel} and sku = ${req.params.sku} and not coalesce((payload ->> 'removed')::boolean, false)`;
      if (!row) throw new ApiError(404, "not_in_catalog", `params.sku: ${req.params.sku} is not in channel ${channel}'s catalog`);
      return row.payload;
    },
  );

  app.get<{ Querystring: { channel?: string; sinceVersion?: number; cursor?: string; limit?: number } }>(
    "/v1/catalog",
    {
      config: STREAM_TOKEN_ROUTE, // also a stream token (`?access_token=`), for browsers
      schema: {
        operationId: "listCatalogChanges",
        tags: ["catalog"],
        summary: "A channel's catalog changes after a catalog version, paged",
        description:
          "Every projection of the channel that changed after `sinceVersion` (0 or absent: the whole catalog), in version order. " +
          "Follow `nextCursor` until it is null, then keep `catalogVersion` and ask again with it as `sinceVersion`. " +
          "A browser passes a stream token as `?access_token=` (for the token's channel only).",
        querystring: {
          type: "object",
          properties: {
            channel: { type: "string", description: "default: the token's channel" },
            sinceVersion: { type: "integer", minimum: 0, maximum: 999_999_999_999_999, description: "default 0" },
            cursor: { type: "string", maxLength: 1024, description: "from the previous page's nextCursor" },
            limit: { type: "integer", minimum: 1, maximum: MAX_PAGE, description: `items per page, default ${DEFAULT_PAGE}` },
            access_token: ACCESS_TOKEN_PARAM,
          },
        },
        response: { 200: { $ref: "CatalogDelta#" }, ...errors(400, 401, 403, 404) },
      },
    },
    async (req) => {
      const channel = ctx.channelFor(req, req.query.channel);
      const since = req.query.sinceVersion ?? 0;
      const after = req.query.cursor === undefined ? null : decodeCursor(req.query.cursor);
      const limit = req.query.limit ?? DEFAULT_PAGE;
      // One snapshot for the head and the page: every version up to the head is in it (versions commit in order).
      return ctx.sql.begin("isolation level repeatable read read only", async (tx) => {
        const [head] = await tx<[{ version: string }]>`select version::text from catalog_head`;
        const rows = await tx<Array<{ sku: string; version: string; payload: Record<string, unknown> }>>`
          select sku, version::text, payload from catalog_projections
           where channel = ${channel} and version > ${since}
             ${after ? tx`and (version, sku) > (${after.version}::bigint, ${after.sku})` : tx``}
           order by version, sku limit ${limit + 1}`;
        const page = rows.slice(0, limit);
        const last = page[page.length - 1];
        return {
          channel,
          catalogVersion: Number(head.version),
          items: page.map((r) => r.payload),
          nextCursor: rows.length > limit && last ? encodeCursor(last.version, last.sku) : null,
        };
      });
    },
  );
}

/** POST /v1/channels/:channel/catalog-ack and GET /v1/catalog/versions. */
function versionRoutes(app: FastifyInstance, ctx: ApiContext): void {
  app.post<{ Params: { channel: string }; Body: { version: number } }>(
    "/v1/channels/:channel/catalog-ack",
    {
      config,
      schema: {
        operationId: "ackCatalogVersion",
        tags: ["catalog"],
        summary: "A channel acknowledges the catalog version it has applied",
        description:
          "Send the highest `catalogVersion` the channel has applied (from its projections, or the delta feed's `catalogVersion` once " +
          "its last page is applied). Acknowledgements never go back: a lower one than the channel's current changes nothing. " +
          "A version above the current catalog version is a 400 naming `body.version`. A channel token acknowledges for its own channel only; " +
          "a token without a channel needs scope catalog:ack as well (or admin), since it would acknowledge for any channel. " +
          "The same over NATS: a request on `tally.<env>.catalog-ack.<channel>` with the same body.",
        params: { type: "object", required: ["channel"], properties: { channel: { type: "string" } } },
        body: { $ref: "CatalogAckRequest#" },
        response: { 200: { $ref: "CatalogAck#" }, ...errors(400, 401, 403, 404) },
      },
    },
    async (req) => {
      const p = req.principal;
      if (p && p.channel === null && !may(p, "catalog:ack"))
        throw new ApiError(
          403,
          "forbidden",
          "this token has no channel: acknowledging for any channel needs scope catalog:ack (a channel's own token acknowledges for its channel)",
        );
      const channel = ctx.channelFor(req, req.params.channel);
      try {
        return await recordCatalogAck(ctx.sql, { channel, version: req.body.version, by: `http:${req.principal?.id ?? "anonymous"}` });
      } catch (error) {
        if (error instanceof InvalidCatalogAck) throw invalidField(`body.${error.field}`, error.detail);
        throw error;
      }
    },
  );

  app.get(
    "/v1/catalog/versions",
    {
      config,
      schema: {
        operationId: "getCatalogVersions",
        tags: ["catalog"],
        summary: "The current catalog version and, per channel, the version it runs and how far behind it is",
        description:
          "A channel is behind while a catalog version that changed its catalog lies above the version it acknowledged; `lagSeconds` " +
          "counts from when the oldest such version was recorded. A channel token sees its own channel only.",
        response: { 200: { $ref: "CatalogVersions#" }, ...errors(401, 403) },
      },
    },
    async (req) => {
      const tolerances = Object.fromEntries(Object.entries(ctx.config.channels).map(([name, c]) => [name, c.catalogLagToleranceSeconds]));
      const all = await catalogVersions(ctx.sql, tolerances);
      const own = req.principal?.channel;
      return own ? { ...all, channels: all.channels.filter((c) => c.channel === own) } : all;
    },
  );
}

/** GET /v1/catalog/stream. */
function streamRoute(app: FastifyInstance, ctx: ApiContext): void {
  app.get<{ Querystring: { channel?: string; lastEventId?: number }; Headers: { "last-event-id"?: string } }>(
    "/v1/catalog/stream",
    {
      config: STREAM_TOKEN_ROUTE, // also a stream token (`?access_token=`), for browsers
      schema: {
        operationId: "streamCatalog",
        tags: ["catalog"],
        summary: "Server-sent events of a channel's catalog changes, resumable with Last-Event-ID",
        description:
          "Each event is `event: catalog`, `id: <catalog stream sequence>`, `data: <CatalogItem JSON>` (with its `catalogVersion`; " +
          "`removed: true` when the item left the catalog), in version order. A separate stream from the availability one: its ids " +
          "are the catalog stream's. Reconnect with Last-Event-ID (or ?lastEventId=) to resume; without it the stream starts with " +
          "changes from now on (read GET /v1/catalog first). `event: reset` means the history needed to resume has expired: " +
          "re-read the delta feed. A browser opens it as `new EventSource(url + '?access_token=<stream token>&lastEventId=<last id>')`.",
        querystring: {
          type: "object",
          properties: {
            channel: { type: "string", description: "default: the token's channel" },
            lastEventId: {
              type: "integer",
              minimum: 0,
              maximum: 999_999_999_999_999,
              description: "as Last-Event-ID (which wins when both are sent)",
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
    async (req, reply) => streamCatalog(ctx, req, reply),
  );
}

/** The channel's catalog changes as server-sent events (the catalog stream is made on first use). */
async function streamCatalog(
  ctx: ApiContext,
  req: FastifyRequest<{ Querystring: { channel?: string; lastEventId?: number }; Headers: { "last-event-id"?: string } }>,
  reply: FastifyReply,
): Promise<void> {
  const channel = ctx.channelFor(req, req.query.channel);
  await ensureCatalogStream(ctx.nats.jsm, ctx.topology, undefined, ctx.settings.retention.catalogMaxAgeMs);
  await streamFeed(ctx, req, reply, {
    stream: ctx.topology.catalogStream,
    filterSubject: ctx.topology.catalogSubjects(channel),
    event: "catalog",
    after: lastEventId(req),
  });
}
