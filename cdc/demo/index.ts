/** The public surface of cdc/demo/: other folders import only from here. */
export { erpSource, shopSource } from "./mappings.ts";
export { applyDemoSchemas, seedDemo } from "./seed.ts";
export { DemoSimulator, Zipf, onboardCatalog, simItem, storeIds } from "./simulator.ts";
export { demoInit } from "./init.ts";
export type { DemoCatalog } from "./init.ts";
