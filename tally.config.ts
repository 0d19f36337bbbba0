import { defineConfig } from "./src/configFile.ts";
import { erpSource, shopSource } from "./cdc/demo/mappings.ts";

// The demo retailer: one distribution centre and two stores.
export default defineConfig({
  channels: {
    // The web shop ships from the DC and from store S01 (ship-from-store), holding 2 units back.
    web: { locations: ["DC1", "S01"], buffer: 2 },
    // Each store's POS sells what that store has.
    store_s01: { locations: ["S01"] },
    store_s02: { locations: ["S02"] },
  },
  // The demo ERP and shop (cdc/demo/*.sql), captured when TALLY_SOURCE_ERP_URL / TALLY_SOURCE_SHOP_URL are set.
  sources: { erp: erpSource, shop: shopSource },
});
