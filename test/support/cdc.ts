import postgres from "postgres";
import { enableSource } from "../../cdc/admin.ts";
import { findSource } from "../../cdc/index.ts";
import { applyDemoSchemas, seedDemo } from "../../cdc/demo/seed.ts";
import { loadTallyConfig, type TallyConfig } from "../../src/platform/configFile.ts";
import type { TestContext } from "./context.ts";
import { ROOT } from "./tally.ts";

export interface DemoSources {
  readonly config: TallyConfig;
  readonly erp: postgres.Sql;
  readonly shop: postgres.Sql;
  /** TALLY_SOURCE_ERP_URL / TALLY_SOURCE_SHOP_URL, for child processes (also set in process.env). */
  readonly env: Record<string, string>;
  close(): Promise<void>;
}

const withDb = (url: string, db: string) => {
  const u = new URL(url);
  u.pathname = `/${db}`;
  return u.toString();
};

/**
 * The demo ERP and shop as two databases of `server` (default: the run's shared Postgres), with the
 * reference schemas, the seed catalog and opening stock, and publications enabled as a DBA would.
 */
export async function demoSources(ctx: TestContext, opts: { adminUrl?: string; orders?: boolean } = {}): Promise<DemoSources> {
  const adminUrl = opts.adminUrl ?? ctx.adminUrl;
  const admin = postgres(adminUrl, { max: 1, onnotice: () => {} });
  await admin.unsafe(`create database erp_${ctx.env}`);
  await admin.unsafe(`create database shop_${ctx.env}`);
  await admin.end();
  const env = {
    TALLY_SOURCE_ERP_URL: withDb(adminUrl, `erp_${ctx.env}`),
    TALLY_SOURCE_SHOP_URL: withDb(adminUrl, `shop_${ctx.env}`),
  };
  Object.assign(process.env, env);
  const erp = postgres(env.TALLY_SOURCE_ERP_URL, { max: 3, onnotice: () => {} });
  const shop = postgres(env.TALLY_SOURCE_SHOP_URL, { max: 3, onnotice: () => {} });
  await applyDemoSchemas(erp, shop);
  await seedDemo(erp, shop, { orders: opts.orders ?? false });
  const config = await loadTallyConfig(`${ROOT}/tally.config.ts`);
  await enableSource(erp, findSource(config, "erp", ctx.env));
  await enableSource(shop, findSource(config, "shop", ctx.env));
  return {
    config,
    erp,
    shop,
    env,
    close: async () => {
      await erp.end({ timeout: 5 });
      await shop.end({ timeout: 5 });
    },
  };
}
