import type { FastifyInstance } from "fastify";
import { ID_JSON_PATTERN } from "../../contract/index.ts";
import type { ApiContext } from "../context.ts";
import { ApiError, errors, invalidField } from "../errors.ts";

const MAX_PAGE = 1000;
const DEFAULT_PAGE = 500;

const CatalogItem = {
  $id: "CatalogItem",
  type: "object",
  description: "What one channel shows of one item: the KV value under <channel>.<sku> in tally_<env>_catalog",
  required: ["channel", "sku", "name", "status", "unit", "price", "validUntil", "catalogVersion"],
  properties: {
    channel: { type: "string" },
    sku: { type: "string" },
    name: { type: "string", description: "the item's name (its SKU until the item master names it)" },
    description: { type: ["string", "null"] },
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
    attributes: { type: "object", additionalProperties: true },
    catalogVersion: {
      type: "integer",
      description: "the catalog version this projection changed at; every channel's projection of one change carries the same",
    },
    removed: { type: "boolean", description: "in the delta feed: the item left the catalog" },
  },
} as const;

/** The named component schemas of these routes. */
export const catalogSchemas = [
  CatalogItem,
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

/** The catalog per channel: one item (`GET /v1/catalog/:sku`) and the delta feed (`GET /v1/catalog`). */
export async function catalogRoutes(app: FastifyInstance, { ctx }: { ctx: ApiContext }): Promise<void> {
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
      config,
      schema: {
        operationId: "listCatalogChanges",
        tags: ["catalog"],
        summary: "A channel's catalog changes after a catalog version, paged",
        description:
          "Every projection of the channel that changed after `sinceVersion` (0 or absent: the whole catalog), in version order. " +
          "Follow `nextCursor` until it is null, then keep `catalogVersion` and ask again with it as `sinceVersion`.",
        querystring: {
          type: "object",
          properties: {
            channel: { type: "string", description: "default: the token's channel" },
            sinceVersion: { type: "integer", minimum: 0, maximum: 999_999_999_999_999, description: "default 0" },
            cursor: { type: "string", maxLength: 1024, description: "from the previous page's nextCursor" },
            limit: { type: "integer", minimum: 1, maximum: MAX_PAGE, description: `items per page, default ${DEFAULT_PAGE}` },
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
