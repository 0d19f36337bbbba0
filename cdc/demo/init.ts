import { enableSource } from "../index.ts";
import { findSource } from "../index.ts";
import type { TallyConfig } from "../../src/platform/index.ts";
import { connectPostgres } from "../../src/platform/index.ts";
import { applyDemoSchemas, seedDemo, type SeedSummary } from "./seed.ts";
import { onboardCatalog } from "./simulator.ts";

/** The simulated catalog `tally dev` onboards for its traffic simulator. */
export interface DemoCatalog {
  readonly skus: number;
  readonly stores: number;
}

/**
 * `tally demo init`: creates the reference ERP and shop schemas in the two databases, seeds the demo
 * catalog and opening stock (idempotently), and enables CDC on both (publication and slot), so the
 * `cdc` role can capture them at once. With `catalog`, the simulated catalog too: before the ERP's
 * slot exists its opening stock goes into `stock_on_hand`, read in bulk by the initial snapshot;
 * afterwards (items added on a later run) as goods receipts, which stream.
 */
export async function demoInit(
  config: TallyConfig,
  env: string,
  erpUrl: string,
  shopUrl: string,
  catalog?: DemoCatalog,
): Promise<SeedSummary & { readonly catalog: number }> {
  const erp = connectPostgres(erpUrl, { max: 2, application: "tally-demo" });
  const shop = connectPostgres(shopUrl, { max: 2, application: "tally-demo" });
  try {
    await applyDemoSchemas(erp, shop);
    const seeded = await seedDemo(erp, shop);
    const urls = { TALLY_SOURCE_ERP_URL: erpUrl, TALLY_SOURCE_SHOP_URL: shopUrl };
    const erpSource = findSource(config, "erp", env, urls);
    let added = 0;
    if (catalog) {
      const [slot] = await erp<Array<{ n: number }>>`select count(*)::int as n from pg_replication_slots where slot_name = ${erpSource.slot}`;
      const opening = (slot?.n ?? 0) > 0 ? "goods_receipts" : "stock_on_hand";
      // Policies at the DC only (the web's reorder point): a store's item is replenished when it runs out.
      // One command per item and store fewer (2,000 × 10 of 44,000 for the default catalog) before the demo is ready.
      added = await onboardCatalog(erp, catalog.skus, catalog.stores, { opening, storePolicies: false, currency: config.finance.currency });
    }
    await enableSource(erp, erpSource);
    await enableSource(shop, findSource(config, "shop", env, urls));
    return { ...seeded, catalog: added };
  } finally {
    await erp.end({ timeout: 5 });
    await shop.end({ timeout: 5 });
  }
}
