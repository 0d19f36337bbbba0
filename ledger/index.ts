/** The ledger store: append, idempotency, balances, hash chain, verification. */
export { GENESIS_HASH, canonicalEntry, entryHash } from "./hash.ts";
export type { HashedEntry } from "./hash.ts";
export {
  LeaseLost,
  OUTBOX_CHANNEL,
  claimPartition,
  commitBatch,
  commitGroup,
  knownCommandIds,
  loadHolds,
  loadSkus,
  quantityJson,
  readCheckpoint,
} from "./store.ts";
export type {
  BalanceRow,
  BatchWrite,
  HoldRow,
  LedgerEntry,
  OutboxRow,
  OutcomeRow,
  SkuHeadRow,
  SkuLocationRow,
  StoredSku,
  TransferRow,
} from "./store.ts";
export {
  clearStuck,
  ensureStreamIdentity,
  listStuck,
  markSkipsDone,
  pendingSkips,
  recordStuck,
  requestSkip,
} from "./partitionHealth.ts";
export type { StreamIdentityCheck, StuckPartition } from "./partitionHealth.ts";
export { verifyLedger } from "./verify.ts";
export { ArchiveRefused, archiveLedger, archivedMonths, ensureLedgerPartitions, parseMonth, verifyArchive } from "./archive.ts";
export type { ArchivedMonth, ArchiveProblem, ArchiveReport } from "./archive.ts";
export {
  archiveOutcomes,
  outcomesHorizon,
  pruneCatalogChannelVersions,
  pruneCatalogDue,
  pruneCatalogVersions,
  pruneClosedHolds,
  pruneDeadLetterPayloads,
  pruneEndedPrices,
  pruneOutcomesArchive,
  prunePosClaims,
  pruneReservations,
} from "./retention.ts";
export { chainHeads, checkAnchors } from "./anchors.ts";
export { APPEND_ONLY_TABLES, READ_ONLY_TABLES, RoleNameError, runtimeGrants } from "./grants.ts";
export type { Anchor, AnchorProblem, AnchorReport } from "./anchors.ts";
export type { VerifyProblem, VerifyReport } from "./verify.ts";
export { EnvironmentMismatch, MigrationError, assertEnvironment, instanceId, migrate } from "./migrate.ts";
export type { MigrateResult } from "./migrate.ts";
export { EXPORT_CURSOR_HEADER, EXPORT_CURSOR_PATTERN, EXPORT_SUMMARY_TRAILER, openExport } from "./export.ts";
export type { ExportSummary } from "./export.ts";
export { entryJson } from "./entryRow.ts";
export type { EntryRow } from "./entryRow.ts";
export {
  currentCost,
  noValue,
  roundDiv,
  valueLeg,
  type CostLayer,
  type LocationValue,
  type ValuationFlag,
  type ValuationMethod,
} from "./valuation.ts";
export { ValuationMethodMismatch, recordValuationMethod } from "./valuationMethod.ts";
export { businessDate, costCenterOf, journalOf, journalsOf } from "./journal.ts";
export type { Journal, JournalLeg, JournalLine } from "./journal.ts";
export { insertJournals } from "./journalInsert.ts";
export type { JournalInsert, JournalInsertLine } from "./journalInsert.ts";
export { JournalPoster, oldestUnposted, postRound } from "./journalPoster.ts";
export type { PostRound } from "./journalPoster.ts";
export { PERIOD_PATTERN, closePeriod, closedPeriods } from "./journalPeriods.ts";
export type { ClosedPeriod } from "./journalPeriods.ts";
export {
  GL_EXPORT_COLUMNS,
  GL_EXPORT_CURSOR_PATTERN,
  decodeJournalCursor,
  encodeJournalCursor,
  glDate,
  glLineJson,
  openGlExport,
  readJournalPage,
} from "./glExport.ts";
export type { GlExportSummary, GlLineRow, JournalCursor, JournalPage } from "./glExport.ts";
export { stockValueByLocation, trialBalance } from "./financeReports.ts";
export type { LocationStockValue, TrialBalance } from "./financeReports.ts";
export { MONEY_JOURNAL_PREFIX, postMoneyJournals } from "./posMoneyJournal.ts";
export type { MoneyJournal, MoneyJournalLine } from "./posMoneyJournal.ts";
export { activeLayout, beginResize, checkpointsOf, drainingLayout, switchLayout } from "./partitionLayouts.ts";
export type { LayoutRow } from "./partitionLayouts.ts";
