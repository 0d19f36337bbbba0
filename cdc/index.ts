/** Postgres sources: mapping API, crosswalk, streaming reader, snapshot, admin. */
export { Crosswalk, ITEMS_CHANNEL, scaleExact } from "./crosswalk.ts";
export type { Resolution, ResolveContext } from "./crosswalk.ts";
export { changeFrom, mapChange, mapWith } from "./mapper.ts";
export type { ChangePayload, MapOutcome } from "./mapper.ts";
export { SourceReader, HEARTBEAT_PREFIX } from "./reader.ts";
export { CatalogPublisher, ensureCatalogStream } from "./catalogPublisher.ts";
export { recordCatalogVersion } from "./catalog.ts";
export { CatalogAckSubscriber, InvalidCatalogAck, catalogVersions, recordCatalogAck } from "./catalogAcks.ts";
export type { CatalogVersions, ChannelCatalogVersion } from "./catalogAcks.ts";
export type { ReaderMetrics, ReaderOptions } from "./reader.ts";
export { runSnapshot } from "./snapshot.ts";
export { judgeSlot } from "./slotIdentity.ts";
export type { HaltReason, SlotGap, SlotVerdict } from "./slotIdentity.ts";
export { configuredSources, findSource, resolveSource, sourceUrlSetting } from "./sources.ts";
export type { ResolvedSource } from "./sources.ts";
export { formatLsn, parseLsn } from "./lsn.ts";
export {
  checkSource,
  dropSource,
  enableSource,
  enableSql,
  formatChecks,
  formatStatuses,
  quoteIdent,
  replicationRoleSql,
  sourceStatus,
} from "./admin.ts";
export { ReconcileError, readSourceOnHand, reconcileReport, reconciliationCommands, waitForLedger } from "./reconcile.ts";
export type { Drift, ReconcileReport } from "./reconcile.ts";
export type { InFlight } from "./reconcile.ts";
export { lastRuns, runReconciliation, runSince } from "./reconcileRun.ts";
export type { CorrectSource, ReconcileOutcome, RecordedRun } from "./reconcileRun.ts";
export { Reconciler } from "./reconciler.ts";
export type { ReconcilerOptions } from "./reconciler.ts";
export { ownerAt } from "./sources.ts";
export type { Owner, SystemOfRecord } from "./sources.ts";
export { WriteBack, WRITE_BACK_DEAD_LETTER_ORIGIN } from "./writeBack.ts";
export type { WriteBackMetrics, WriteBackOptions } from "./writeBack.ts";
export { writeBackCorrection, writeBackInFlight, writeBackMark } from "./writeBackReconcile.ts";
export { writeBackSecret } from "./writeBackSinks.ts";
export type { Correction, InFlight as WriteBackInFlight, WriteBackMark } from "./writeBackReconcile.ts";
