import { enableSource } from "../index.ts";
import { findSource } from "../index.ts";
import type { TallyConfig } from "../../src/platform/index.ts";
import { connectPostgres } from "../../src/platform/index.ts";
import { applyDemoSchemas, seedDemo, type SeedSummary } from "./seed.ts";

/**
 * `tally demo init`: creates the reference ERP and shop schemas in the two databases, seeds the demo
 * catalog and opening stock (idempotently), and enables CDC on both (publication and slot), so the
 * `cdc` role can capture them at once.
 */
export async function demoInit(config: TallyConfig, env: string, erpUrl: string, shopUrl: string): Promise<SeedSummary> {
  const erp = connectPostgres(erpUrl, { max: 2, application: "tally-demo" });
  const shop = connectPostgres(shopUrl, { max: 2, application: "tally-demo" });
  try {
    await applyDemoSchemas(erp, shop);
    const seeded = await seedDemo(erp, shop);
    const urls = { TALLY_SOURCE_ERP_URL: erpUrl, TALLY_SOURCE_SHOP_URL: shopUrl };
    await enableSource(erp, findSource(config, "erp", env, urls));
    await enableSource(shop, findSource(config, "shop", env, urls));
    return seeded;
  } finally {
    await erp.end({ timeout: 5 });
    await shop.end({ timeout: 5 });
  }
}
