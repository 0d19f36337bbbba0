import type { FastifyInstance } from "fastify";
import { ID_JSON_PATTERN, applyWithheld, withheldBy } from "../../contract/index.ts";
import type { ApiContext } from "../context.ts";
import { ApiError, errors } from "../errors.ts";
import { lookup } from "./availability.ts";
import { catalogShown } from "./catalog.ts";

/** The named component schemas of these routes. */
export const productSchemas = [
  {
    $id: "Product",
    type: "object",
    description:
      "One item as one channel shows it: its catalog (name, status, unit, price, catalogVersion) and what the channel may sell " +
      "of it. The availability follows the status this answer shows (a blocked item, or a discontinued one on a channel that " +
      "does not sell remaining stock, is 0 here even while the change is still on its way to the availability bucket)",
    required: ["channel", "sku", "name", "status", "unit", "price", "validUntil", "catalogVersion", "availability"],
    properties: {
      channel: { type: "string" },
      sku: { type: "string" },
      ...catalogShown,
      catalogVersion: {
        type: "integer",
        description: "the catalog version the item's projection changed at in this channel (0: no catalog fact has reached the item yet)",
      },
      availability: { $ref: "Availability#" },
    },
  },
] as const;

interface CatalogPayload {
  name: string;
  status: string;
  unit: string;
  price: { amount: number | string; currency: string; priceList?: string } | null;
  validUntil: string | null;
  catalogVersion: number;
}

/** `GET /v1/products/:sku`: the catalog and the availability of one item in one channel, in one answer. */
export async function productRoutes(app: FastifyInstance, { ctx }: { ctx: ApiContext }): Promise<void> {
  app.get<{ Params: { sku: string }; Querystring: { channel?: string } }>(
    "/v1/products/:sku",
    {
      config: { scope: "availability:read" as const },
      schema: {
        operationId: "getProduct",
        tags: ["catalog"],
        summary: "An item's catalog and availability in one channel, in one call",
        description:
          "The channel's catalog projection of the item (as `GET /v1/catalog/:sku`) and its availability (as `GET /v1/availability/:sku`, " +
          "components listed for a bundle). The two are read one after the other, catalog first; each carries its own version " +
          "(`catalogVersion`; `availability.seq` and `version`). What one answer guarantees: its availability follows its status. " +
          "A blocked item shows 0, and so does a discontinued one unless the channel sells remaining stock, with " +
          "`availability.reason`; an active item shows what its stock allows, even if the status change has not reached the " +
          "availability bucket yet. 404 when the item is neither in the item master nor in the ledger.",
        params: { type: "object", required: ["sku"], properties: { sku: { type: "string", pattern: ID_JSON_PATTERN } } },
        querystring: { type: "object", properties: { channel: { type: "string", description: "default: the token's channel" } } },
        response: { 200: { $ref: "Product#" }, ...errors(400, 401, 403, 404) },
      },
    },
    async (req) => {
      const channel = ctx.channelFor(req, req.query.channel);
      const { sku } = req.params;
      const [projection] = await ctx.sql<[{ payload: CatalogPayload } | undefined]>`
        select payload from catalog_projections
         where channel = ${channel} and sku = ${sku} and not coalesce((payload ->> 'removed')::boolean, false)`;
      const [item] = await ctx.sql<[{ name: string | null; status: string; unit: string } | undefined]>`
        select name, status, coalesce(price_unit, base_unit) as unit from items where sku = ${sku}`;
      const availability = (await lookup(ctx, channel, [sku])).get(sku);
      if (!availability && !item && !projection)
        throw new ApiError(404, "unknown_sku", `params.sku: ${sku} is neither in the item master nor in the ledger`);
      const catalog: CatalogPayload = projection?.payload ?? {
        name: item?.name ?? sku,
        status: item?.status ?? "active",
        unit: item?.unit ?? "EA",
        price: null,
        validUntil: null,
        catalogVersion: 0,
      };
      const stock = availability ?? { channel, sku, available: 0, onHand: 0, reserved: 0, status: "out", seq: 0, version: 0, updatedAt: null };
      const policy = { sellsDiscontinued: ctx.config.channels[channel]?.sellsDiscontinued ?? false };
      return {
        channel,
        sku,
        name: catalog.name,
        status: catalog.status,
        unit: catalog.unit,
        price: catalog.price,
        validUntil: catalog.validUntil,
        catalogVersion: catalog.catalogVersion,
        availability: applyWithheld(stock, withheldBy(catalog.status, policy)),
      };
    },
  );
}
