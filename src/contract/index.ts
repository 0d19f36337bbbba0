/** The public surface of src/contract/: other folders import only from here. */
export { EARLIEST_OCCURRED_AT, ID_JSON_PATTERN, ID_MAX_LENGTH, LATEST_OCCURRED_AT, decodeCommand, encodeCommand, isId, isIsoDateTimeWithZone, isStorableDateTime } from "./command.ts";
export type { Command, CommandType, LocationId, ReserveScope, Sku } from "./command.ts";
export { MappingError, RowView, UnknownItem } from "./mapping.ts";
export type { Change, ItemDefinition, ItemRef, MappedCommand, MappingResult, RawRow, SnapshotTable } from "./mapping.ts";
export type { TableMapping } from "./mapping.ts";
