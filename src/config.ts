/**
 * The public entry point of the `tally` package (`import { defineConfig } from "tally/config"`): what a
 * `tally.config.ts` needs to declare channels and sources and to write its own table mappings.
 * Everything else in the package is private and may change between versions.
 */
export { defineConfig } from "./platform/index.ts";
export type { TallyConfigInput } from "./platform/index.ts";
export { MappingError, RowView } from "./contract/index.ts";
export type { Change, ItemDefinition, ItemRef, MappedCommand, MappingResult, RawRow, SnapshotTable, TableMapping } from "./contract/index.ts";
