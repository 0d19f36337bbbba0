import type { OnHandDeclaration, SnapshotTable } from "../src/contract/index.ts";
import type { SourceConfig, TableConfig, TallyConfig, WriteBackConfig } from "../src/platform/index.ts";
import { durationMs, SettingsError } from "../src/platform/index.ts";

/** Who wins a (SKU, location) when reconciliation finds drift. */
export type Owner = "erp" | "tally";

/** The system of record of a source: one owner for every location, but those listed. */
export interface SystemOfRecord {
  readonly default: Owner;
  readonly locations: Readonly<Record<string, Owner>>;
}

/** Who wins at `location`. */
export const ownerAt = (sor: SystemOfRecord, location: string): Owner => sor.locations[location] ?? sor.default;

/** A source from `tally.config.ts` with its connection and defaults resolved. */
export interface ResolvedSource {
  readonly name: string;
  /** `TALLY_SOURCE_<NAME>_URL` */
  readonly url: string;
  readonly urlSetting: string;
  readonly publication: string;
  readonly slot: string;
  readonly tables: Readonly<Record<string, TableConfig>>;
  readonly snapshot: ReadonlyArray<SnapshotTable>;
  /** Where the source keeps its stock on hand (`tally reconcile`), if declared. */
  readonly onHand: OnHandDeclaration | undefined;
  /** Who wins when reconciliation finds drift, per location. */
  readonly systemOfRecord: SystemOfRecord;
  /** Between scheduled reconciliations in the cdc role; null: none scheduled. */
  readonly reconcileEveryMs: number | null;
  readonly reconcileTolerance: number;
  /** Whether scheduled runs apply what they find (as `tally reconcile --apply`). */
  readonly reconcileApply: boolean;
  readonly heartbeatMs: number;
  readonly statusMs: number;
  readonly lagAlertBytes: number;
  /** Where Tally's own movements are written back to (none: capture only). */
  readonly writeBack: WriteBackConfig | undefined;
}

export const sourceUrlSetting = (name: string) => `TALLY_SOURCE_${name.toUpperCase().replace(/-/g, "_")}_URL`;

export function resolveSource(
  name: string,
  config: SourceConfig,
  env: string,
  processEnv: Record<string, string | undefined> = process.env,
): ResolvedSource {
  const urlSetting = sourceUrlSetting(name);
  const url = processEnv[urlSetting];
  if (!url) throw new SettingsError(`${urlSetting}: is not set (the connection URL of source ${name})`);
  if (!/^postgres(ql)?:\/\//.test(url)) throw new SettingsError(`${urlSetting}: expected a URL starting with postgres:// or postgresql://`);
  const fallback = `tally_${env}_${name.replace(/-/g, "_")}`;
  return {
    name,
    url,
    urlSetting,
    publication: config.publication ?? fallback,
    slot: config.slot ?? fallback,
    tables: config.tables,
    snapshot: config.snapshot,
    onHand: config.onHand,
    systemOfRecord: typeof config.systemOfRecord === "string" ? { default: config.systemOfRecord, locations: {} } : config.systemOfRecord,
    reconcileEveryMs: config.reconcileEvery === undefined ? null : durationMs(config.reconcileEvery),
    reconcileTolerance: config.reconcileTolerance,
    reconcileApply: config.reconcileApply,
    heartbeatMs: config.heartbeatSeconds * 1000,
    statusMs: config.statusSeconds * 1000,
    lagAlertBytes: config.lagAlertBytes,
    writeBack: config.writeBack,
  };
}

/** The named source, resolved; a SettingsError names what is missing. */
export function findSource(config: TallyConfig, name: string, env: string, processEnv = process.env): ResolvedSource {
  const source = config.sources[name];
  if (!source)
    throw new SettingsError(
      `source ${JSON.stringify(name)} is not declared in tally.config.ts (declared: ${Object.keys(config.sources).join(", ") || "none"})`,
    );
  return resolveSource(name, source, env, processEnv);
}

/** Every declared source whose URL is set (sources without a URL are skipped by `start`). */
export function configuredSources(config: TallyConfig, env: string, processEnv = process.env): Array<ResolvedSource> {
  return Object.entries(config.sources)
    .filter(([name]) => Boolean(processEnv[sourceUrlSetting(name)]))
    .map(([name, s]) => resolveSource(name, s, env, processEnv));
}
