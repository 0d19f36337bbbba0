/** The public surface of src/contract/: other folders import only from here. */
export {
  Command,
  EARLIEST_OCCURRED_AT,
  ID_CHARACTERS,
  ID_JSON_PATTERN,
  ID_LIST_JSON_PATTERN,
  ID_MAX_LENGTH,
  ID_PATTERN,
  LATEST_OCCURRED_AT,
  NAME_CHARACTERS,
  NAME_PATTERN,
  POS_ID_CHARACTERS,
  POS_ID_PATTERN,
  decodeCommand,
  encodeCommand,
  isId,
  isIsoDateTimeWithZone,
  isStorableDateTime,
} from "./command.ts";
export type { CommandType, LocationId, ReserveScope, Sku } from "./command.ts";
export { MappingError, RowView, UnknownItem } from "./mapping.ts";
export type { CatalogFact, CatalogStatus, Change, ItemDefinition, ItemRef, MappedCommand, MappingResult, RawRow, SnapshotTable } from "./mapping.ts";
export type { OnHandDeclaration, OnHandRow, TableMapping } from "./mapping.ts";
export {
  RESOLVE_PROBE_COMMAND_ID,
  bundleComponentCommandId,
  cdcChangeCommandId,
  holdExpiryCommandId,
  bundleHoldReleaseCommandId,
  mappedCommandId,
  posLineCommandId,
  reserveCommandId,
  settleCommandId,
  snapshotCommandId,
  snapshotKeyText,
} from "./commandIds.ts";
export { CURRENCY_PATTERN, fromMinorUnits, minorDigits, toMinorUnits } from "./money.ts";
export { applyWithheld, bundleAvailable, locationAvailable, withheldBy } from "./availability.ts";
export type { Availability, AvailabilityJson, BundlePart, ItemStatus, StatusPolicy, StockAtLocation, Withheld } from "./availability.ts";
export {
  AlertEvent,
  AvailabilityValue,
  CatalogValue,
  CommandRejectedEvent,
  DateTime,
  EVENT_SCHEMAS,
  FulfillUnreservedEvent,
  HoldRefusedEvent,
  quantityValue,
} from "./natsPayloads.ts";
export type { StatusEvent } from "./natsPayloads.ts";
