/** The per-SKU rules, the actor registry, partition consumers and leases. */
export {
  COMMAND_TYPES,
  Command,
  CommandId,
  EARLIEST_OCCURRED_AT,
  LATEST_OCCURRED_AT,
  ID_JSON_PATTERN,
  ID_MAX_LENGTH,
  InvalidCommand,
  LocationId,
  Sku,
  decodeCommand,
  isId,
  isIsoDateTimeWithZone,
  isStorableDateTime,
} from "../src/contract/command.ts";
export type { CommandType, ReserveScope } from "../src/contract/command.ts";
export { decide, evolve } from "./decider.ts";
export type { Decision, Rejection } from "./decider.ts";
export type { Bucket, LocationState, SkuEvent, SkuState, StockStatus } from "./state.ts";
export { initialSkuState, locationAvailable } from "./state.ts";
export { channelAvailability, planBatch } from "./batch.ts";
export type { ActorState, Availability, ChannelView } from "./batch.ts";
export { decodeEnvelope, encodeEnvelope, envelopeMsgId } from "../src/wire/envelope.ts";
export { LeaseStore } from "../src/wire/leases.ts";
export type { HeldLease, LeaseValue } from "../src/wire/leases.ts";
export { Worker } from "./worker.ts";
export type { WorkerOptions } from "./worker.ts";
export type { PartitionStatus, WorkerMetrics } from "./partitionRunner.ts";
