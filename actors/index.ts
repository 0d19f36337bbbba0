/** Apply: the pure per-SKU rules (decide/evolve, status and hold charts), the live SKU state cache, the partition runners and the worker that leases them. */
export { decide, evolve } from "./decider.ts";
export type { Decision, Rejection } from "./decider.ts";
export type { Bucket, LocationState, SkuEvent, SkuState, StockStatus } from "./state.ts";
export { initialSkuState } from "./state.ts";
export { channelAvailability, planBatch } from "./batch.ts";
export type { LiveSku, ChannelView } from "./batch.ts";
export { Worker } from "./worker.ts";
export type { WorkerOptions } from "./worker.ts";
export type { PartitionStatus, WorkerMetrics } from "./partitionRunner.ts";
