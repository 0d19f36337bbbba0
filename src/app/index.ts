/** The public surface of src/app/: other folders import only from here. */
export { startTally } from "./roles.ts";
export { ConfigFileError, decodeTallyConfig, knownStores } from "./configFile.ts";
export type { ChannelConfig, SourceConfig, TableConfig, TallyConfig } from "./configFile.ts";
