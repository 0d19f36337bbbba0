/** The public surface of src/platform/: other folders import only from here. */
export { connectPostgres, describeError, isPermanentDataError, isTransientDbError } from "./db.ts";
export type { Sql } from "./db.ts";
export { backoffDelay } from "./backoff.ts";
export { COMPUTED_DEFAULTS, DEFAULTS, SettingsError, WITHOUT_DEFAULT, loadSettings, requireDatabaseUrl, urlCredentials } from "./settings.ts";
export type { NatsAccess, RetentionSettings, Settings } from "./settings.ts";
export { createLogger } from "./log.ts";
export type { Logger } from "./log.ts";
export { maskSecrets } from "./redact.ts";
export { JsonTextError, MAX_JSON_DEPTH, jsonDepthExceeds, parseJsonText } from "./jsonText.ts";
export { pauser } from "./cooperative.ts";
export { DriverPatchError, assertDriverPatches } from "./driverPatches.ts";
export { ConfigFileError, decodeTallyConfig, defineConfig, durationMs, knownStores, loadTallyConfig } from "./configFile.ts";
export type { ChannelConfig, FinanceAccounts, FinanceConfig, SourceConfig, TableConfig, TallyConfig, TallyConfigInput } from "./configFile.ts";
export type { WriteBackConfig } from "./configFile.ts";
export { LongRunningService, Lifetime, Wakeup, retry, sleep, untilAborted } from "./service.ts";
export { signPayload, verifyPayload } from "./signing.ts";
