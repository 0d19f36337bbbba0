import { defineConfig } from "tally/config";
import { erpSource, shopSource } from "./cdc/demo/mappings.ts";

// The demo retailer: one distribution centre and ten stores (S01 and S02 are seeded with the demo
// catalog; the simulator of `tally dev` onboards 2,000 more items into all of them).
const stores = Array.from({ length: 10 }, (_, i) => `S${String(i + 1).padStart(2, "0")}`);

export default defineConfig({
  channels: {
    // The web shop ships from the DC and from store S01 (ship-from-store), holding 2 units back.
    web: { locations: ["DC1", "S01"], buffer: 2 },
    // Each store's POS sells what that store has.
    ...Object.fromEntries(stores.map((s) => [`store_${s.toLowerCase()}`, { locations: [s] }])),
  },
  // The demo ERP and shop (cdc/demo/*.sql), captured when TALLY_SOURCE_ERP_URL / TALLY_SOURCE_SHOP_URL are set.
  sources: { erp: erpSource, shop: shopSource },
});
