import { existsSync } from "node:fs";
import module from "node:module";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { Either, ParseResult, Schema } from "effect";
import { tsImport } from "tsx/esm/api";
import type { OnHandDeclaration, SnapshotTable, TableMapping } from "../contract/index.ts";
import { CURRENCY_PATTERN, ID_CHARACTERS, ID_MAX_LENGTH, isId, NAME_CHARACTERS, NAME_PATTERN } from "../contract/index.ts";

/** Channel and source names: the one name grammar (src/contract). */
const Name = Schema.String.pipe(Schema.pattern(NAME_PATTERN, { message: () => `expected ${NAME_CHARACTERS}` }));
/** The one id grammar of locations, shared with commands and HTTP routes. */
const Location = Schema.String.pipe(Schema.filter(isId, { message: () => `expected a location id (1 to ${ID_MAX_LENGTH} ${ID_CHARACTERS})` }));

const positiveInt = (fallback: number) => Schema.optionalWith(Schema.Int.pipe(Schema.positive()), { default: () => fallback });

/** An environment variable's name (where a secret is read from). */
const EnvName = Schema.String.pipe(Schema.pattern(/^[A-Z_][A-Z0-9_]*$/, { message: () => "expected an environment variable name" }));

/** An http:// or https:// URL (a channel's webhook, a write-back's ERP endpoint). */
const HttpUrl = Schema.String.pipe(
  Schema.filter(
    (u) => {
      try {
        return ["http:", "https:"].includes(new URL(u).protocol);
      } catch {
        return false; // parse fallback: not a URL at all, reported by the filter's message
      }
    },
    { message: () => "expected an http:// or https:// URL" },
  ),
);

/**
 * Where a channel's availability changes are POSTed (batched, HMAC-signed, retried, dead-lettered
 * when the retries run out). The signing secret comes from the environment: `TALLY_WEBHOOK_<CHANNEL>_SECRET`
 * unless `secretEnv` names another variable.
 */
export const WebhookConfig = Schema.Struct({
  url: HttpUrl,
  secretEnv: Schema.optional(EnvName),
  /** Changes per POST, default 100 (the latest per SKU). */
  batchSize: positiveInt(100),
  /** How long the first change of a batch waits for others, default 200 ms. */
  lingerMs: Schema.optionalWith(Schema.Int.pipe(Schema.nonNegative()), { default: () => 200 }),
  /** Per request, default 5000 ms. */
  timeoutMs: positiveInt(5000),
  /** Attempts before the batch is dead-lettered, default 10. */
  maxAttempts: positiveInt(10),
  /** First retry delay, doubled per attempt with jitter, default 500 ms, capped at maxBackoffMs (default 60 s). */
  backoffMs: positiveInt(500),
  maxBackoffMs: positiveInt(60_000),
  /** Also POST the channel's catalog changes (batches with `"type": "catalog"`), default true. */
  catalog: Schema.optionalWith(Schema.Boolean, { default: () => true }),
});
export type WebhookConfig = typeof WebhookConfig.Type;

/** A sales channel: which locations' stock it may sell, and how much to hold back. */
export const ChannelConfig = Schema.Struct({
  /** Locations whose available stock feeds this channel. */
  locations: Schema.NonEmptyArray(Location),
  /** Units held back from this channel's availability (a safety buffer), default 0. */
  buffer: Schema.optionalWith(Schema.Int.pipe(Schema.nonNegative()), { default: () => 0 }),
  /**
   * True: the channel keeps selling a discontinued item's remaining stock. Default false: a discontinued
   * item shows availability 0. A blocked item shows 0 in every channel whatever this says.
   */
  sellsDiscontinued: Schema.optional(Schema.Boolean),
  webhook: Schema.optional(WebhookConfig),
  /**
   * How long the channel may run an older catalog version than its latest change (not having
   * acknowledged it) before `TallyCatalogChannelBehind` fires, default 300 s.
   */
  catalogLagToleranceSeconds: positiveInt(300),
});
export type ChannelConfig = typeof ChannelConfig.Type;

const Fn = <F extends (...args: never[]) => unknown>(what: string) =>
  Schema.declare((u: unknown): u is F => typeof u === "function", { message: () => `expected ${what} (a function)` });

const TableName = Schema.String.pipe(Schema.pattern(/^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*$/, { message: () => "expected schema.table (lowercase)" }));

/** How one captured table maps to commands. */
export const TableConfig = Schema.Struct({
  map: Fn<TableMapping>("a table mapping"),
  /** `full`: the mapping reads old values on update/delete, so the table needs REPLICA IDENTITY FULL. */
  oldRow: Schema.optionalWith(Schema.Literal("key", "full"), { default: () => "key" as const }),
});
export type TableConfig = typeof TableConfig.Type;

/** Who wins a (SKU, location) when reconciliation finds drift. */
const Owner = Schema.Literal("erp", "tally");

/** A duration in a config file: a whole number and a unit, `s`, `m`, `h` or `d` (`15m`). */
const DURATION_PATTERN = /^[1-9][0-9]{0,8}(s|m|h|d)$/;

/** The milliseconds of a duration that matched DURATION_PATTERN. */
export function durationMs(text: string): number {
  const unit = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[text.slice(-1) as "s" | "m" | "h" | "d"];
  return Number(text.slice(0, -1)) * unit;
}

/**
 * Write-back: the movements that did not come from the source (and the GL journal) sent into its
 * inbound interface, exactly once per (command, leg). Either inbound tables in the source database
 * (`movements`, optional `journal`) or signed POSTs to `http.url` (secret in `TALLY_WRITEBACK_<SOURCE>_SECRET`
 * unless `http.secretEnv` names another variable).
 */
export const WriteBackConfig = Schema.Struct({
  movements: Schema.optional(TableName),
  journal: Schema.optional(TableName),
  /** Replenishment requests (low_stock events) as purchase-requisition suggestions (inbound tables only). */
  requisitions: Schema.optional(TableName),
  http: Schema.optional(Schema.Struct({ url: HttpUrl, secretEnv: Schema.optional(EnvName), timeoutMs: positiveInt(5000) })),
  /** The crosswalk system of the source's item numbers (a SKU without one is dead-lettered), default `erp_item`. */
  itemSystem: Schema.optionalWith(Schema.String.pipe(Schema.minLength(1)), { default: () => "erp_item" }),
  /** Tally base unit → the source's stock unit and how many base units make one (default: same name, 1). */
  units: Schema.optionalWith(
    Schema.Record({ key: Schema.String, value: Schema.Struct({ unit: Schema.String, factor: Schema.Int.pipe(Schema.positive()) }) }),
    {
      default: () => ({}),
    },
  ),
  /** Rows per insert or POST, default 500. */
  batchSize: positiveInt(500),
  /** Attempts per batch before it is dead-lettered, default 20. */
  maxAttempts: positiveInt(20),
  /** First retry delay, doubled per attempt with jitter, default 500 ms, capped at maxBackoffMs (default 60 s). */
  backoffMs: positiveInt(500),
  maxBackoffMs: positiveInt(60_000),
  /** How often an idle writer looks for new movements, default 1000 ms. */
  intervalMs: positiveInt(1000),
}).pipe(
  Schema.filter((w) => (w.movements !== undefined) !== (w.http !== undefined) || "expected either movements (inbound tables) or http, not both"),
  Schema.filter(
    (w) => w.journal === undefined || w.movements !== undefined || "journal: needs movements (inbound tables); over http the journal is POSTed too",
  ),
  Schema.filter((w) => w.requisitions === undefined || w.movements !== undefined || "requisitions: needs movements (inbound tables)"),
);
export type WriteBackConfig = typeof WriteBackConfig.Type;

/** A Postgres database Tally captures by logical replication. Its URL is `TALLY_SOURCE_<NAME>_URL`. */
export const SourceConfig = Schema.Struct({
  /** Default `tally_<env>_<source>`. */
  publication: Schema.optional(Schema.String.pipe(Schema.pattern(/^[a-z_][a-z0-9_]*$/))),
  /** Default `tally_<env>_<source>`. */
  slot: Schema.optional(Schema.String.pipe(Schema.pattern(/^[a-z0-9_]+$/))),
  tables: Schema.Record({ key: TableName, value: TableConfig }),
  /** Opening-balance tables read inside the slot's exported snapshot on first start. */
  snapshot: Schema.optionalWith(
    Schema.Array(
      Schema.Struct({ table: TableName, key: Schema.NonEmptyArray(Schema.String), map: Fn<SnapshotTable["map"]>("a snapshot row mapping") }),
    ),
    { default: () => [] },
  ),
  /** Where the source keeps its stock on hand, for `tally reconcile` (none: the source cannot be reconciled). */
  onHand: Schema.optional(Schema.Struct({ table: TableName, map: Fn<OnHandDeclaration["map"]>("an on-hand row mapping") })),
  /**
   * Who wins when reconciliation finds drift: `erp` (the source; default) or `tally`, for the whole
   * source, or `{ default, locations: { S01: "tally" } }` per location.
   */
  systemOfRecord: Schema.optionalWith(
    Schema.Union(Owner, Schema.Struct({ default: Owner, locations: Schema.Record({ key: Location, value: Owner }) })),
    {
      default: () => "erp" as const,
    },
  ),
  /** How often the cdc role reconciles the source (`onHand` required): a duration like `90s`, `15m`, `6h`, `1d`. Default: never (only on demand). */
  reconcileEvery: Schema.optional(
    Schema.String.pipe(Schema.pattern(DURATION_PATTERN, { message: () => "expected a duration: a whole number and s, m, h or d (like 15m)" })),
  ),
  /** Pairs whose |difference| is at most this many base units are not drift (scheduled runs and the alert), default 0. */
  reconcileTolerance: Schema.optionalWith(Schema.Int.pipe(Schema.nonNegative()), { default: () => 0 }),
  /** Whether a scheduled run also applies what it finds, as `tally reconcile --apply` does (per systemOfRecord), default false (report only). */
  reconcileApply: Schema.optionalWith(Schema.Boolean, { default: () => false }),
  /** Seconds between heartbeats written to an idle source (pg_logical_emit_message), default 10. */
  heartbeatSeconds: Schema.optionalWith(Schema.Number.pipe(Schema.positive()), { default: () => 10 }),
  /** Seconds between standby status updates; each asks the server for a keepalive so an idle slot advances. Default 10. */
  statusSeconds: Schema.optionalWith(Schema.Number.pipe(Schema.positive()), { default: () => 10 }),
  /** Replication lag (bytes) above which an alert event is raised, default 64 MiB. */
  lagAlertBytes: Schema.optionalWith(Schema.Int.pipe(Schema.positive()), { default: () => 64 * 1024 * 1024 }),
  /** Send Tally's movements (and journal) back into this source (none: capture only). */
  writeBack: Schema.optional(WriteBackConfig),
});
export type SourceConfig = typeof SourceConfig.Type;

/** A GL account number or code, as the ERP's chart of accounts writes it. */
const Account = Schema.String.pipe(
  Schema.pattern(/^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$/, { message: () => "expected a GL account (1 to 40 letters, digits, . _ -)" }),
);
const account = (fallback: string) => Schema.optionalWith(Account, { default: () => fallback });

/** The GL accounts movements post to; each has a default (the README lists them). */
export const FinanceAccounts = Schema.Struct({
  inventory: account("1400"),
  goodsReceivedNotInvoiced: account("2100"),
  costOfGoodsSold: account("5000"),
  shrinkage: account("5100"),
  damaged: account("1450"),
  inTransit: account("1410"),
  salesRevenue: account("4000"),
  salesTaxPayable: account("2300"),
  /** Cash and card clearing: where POS tenders post until the bank settles them. */
  tenderClearing: account("1010"),
  giftCardLiability: account("2400"),
});
export type FinanceAccounts = typeof FinanceAccounts.Type;

/**
 * The company's books: one currency, one valuation method, the posting accounts, and the cost
 * center of each location (default: the location id itself).
 */
export const FinanceConfig = Schema.Struct({
  /** ISO 4217: every value and journal is in this currency, default EUR. */
  currency: Schema.optionalWith(
    Schema.String.pipe(Schema.pattern(CURRENCY_PATTERN, { message: () => "expected an ISO 4217 currency code (3 uppercase letters, like EUR)" })),
    {
      default: () => "EUR",
    },
  ),
  /** `moving_average` (moving weighted average cost per SKU and location; default) or `fifo` (by receipt layer). */
  method: Schema.optionalWith(Schema.Literal("moving_average", "fifo"), { default: () => "moving_average" as const }),
  /** IANA time zone whose calendar gives a movement's business date (and so its GL period), default UTC. */
  timeZone: Schema.optionalWith(
    Schema.String.pipe(
      Schema.filter(
        (z) => {
          try {
            new Intl.DateTimeFormat("en", { timeZone: z });
            return true;
          } catch {
            return false; // an unknown zone: reported by the filter's message
          }
        },
        { message: () => "expected an IANA time zone (like Europe/Berlin or UTC)" },
      ),
    ),
    { default: () => "UTC" },
  ),
  accounts: Schema.optionalWith(FinanceAccounts, { default: () => Schema.decodeSync(FinanceAccounts)({}) }),
  /** Cost center per location; a location not listed is its own cost center. */
  costCenters: Schema.optionalWith(Schema.Record({ key: Location, value: Account }), { default: () => ({}) }),
});
export type FinanceConfig = typeof FinanceConfig.Type;

/** The typed contents of `tally.config.ts`. */
export const TallyConfig = Schema.Struct({
  channels: Schema.Record({ key: Name, value: ChannelConfig }),
  /** Store locations no channel sells from; every channel's locations are known stores too. POS posts for any other store are refused. */
  stores: Schema.optional(Schema.Array(Location)),
  sources: Schema.optionalWith(Schema.Record({ key: Name, value: SourceConfig }), { default: () => ({}) }),
  /** Valuation and the GL: currency, method, accounts, cost centers (every part has a default). */
  finance: Schema.optionalWith(FinanceConfig, { default: () => Schema.decodeSync(FinanceConfig)({}) }),
});
export type TallyConfig = typeof TallyConfig.Type;
export type TallyConfigInput = typeof TallyConfig.Encoded;

/** The locations POS may post for: every channel's locations and the listed stores. */
export function knownStores(config: Pick<TallyConfig, "channels" | "stores">): ReadonlySet<string> {
  return new Set([...Object.values(config.channels).flatMap((c) => c.locations), ...(config.stores ?? [])]);
}

/** Identity helper that gives `tally.config.ts` its types. */
export const defineConfig = (config: TallyConfigInput): TallyConfigInput => config;

export class ConfigFileError extends Error {
  override readonly name = "ConfigFileError";
}

/** Validates a config object; throws a ConfigFileError naming every bad field. */
export function decodeTallyConfig(input: unknown, origin = "tally.config.ts"): TallyConfig {
  const result = Schema.decodeUnknownEither(TallyConfig, { errors: "all", onExcessProperty: "error" })(input);
  if (Either.isRight(result)) return result.right;
  const issues = ParseResult.ArrayFormatter.formatErrorSync(result.left).map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`);
  throw new ConfigFileError(`${origin}: ${issues.join("; ")}`);
}

/** The package's public entry point for config files (package.json `exports["./config"]`). */
const OWN_CONFIG_ENTRY = new URL("../config.ts", import.meta.url).href;
let ownEntryFallback = false;

/**
 * A config file imports `tally/config`. In a project that has tally as a dependency, or in this
 * repository (a package may import itself by name), Node resolves it; a `tally` installed globally
 * is in no node_modules above the config, so that import falls back to the running Tally's own entry point.
 * `module.registerHooks` (Node ≥ 22.15) covers both `import` and the `require` a CommonJS-compiled config makes.
 */
function resolveTallyConfigToSelf(): void {
  if (ownEntryFallback || typeof module.registerHooks !== "function") return;
  ownEntryFallback = true;
  module.registerHooks({
    resolve(specifier, context, nextResolve) {
      try {
        return nextResolve(specifier, context);
      } catch (error) {
        const code = (error as { code?: unknown }).code;
        if (specifier !== "tally/config" || (code !== "ERR_MODULE_NOT_FOUND" && code !== "MODULE_NOT_FOUND")) throw error;
        return { url: OWN_CONFIG_ENTRY, format: "module", shortCircuit: true };
      }
    },
  });
}

/**
 * The config file a setting names, resolved against the working directory (`tally.config.ts` there by
 * default, or `TALLY_CONFIG` / `--config`); a ConfigFileError naming the absolute path when it is missing.
 */
export function resolveConfigPath(file: string, cwd = process.cwd()): string {
  const abs = path.resolve(cwd, file);
  if (!existsSync(abs))
    throw new ConfigFileError(
      `config file ${abs} not found (TALLY_CONFIG or --config is ${JSON.stringify(file)}, resolved against the working directory ${cwd})`,
    );
  return abs;
}

/** Imports and validates the config file (TypeScript is loaded through the tsx loader). */
export async function loadTallyConfig(file: string): Promise<TallyConfig> {
  const abs = resolveConfigPath(file);
  resolveTallyConfigToSelf();
  let mod: { default?: unknown };
  try {
    // tsImport loads the file as an ES module wherever it lives (a plain import of a .ts file outside a
    // "type": "module" package would go through require(esm) and fail).
    mod = (await tsImport(pathToFileURL(abs).href, import.meta.url)) as { default?: unknown };
  } catch (cause) {
    throw new ConfigFileError(`${abs}: cannot be loaded: ${(cause as Error).message}`, { cause });
  }
  // Outside a "type": "module" package the file is compiled as CommonJS: its default export is wrapped once more.
  let value = mod.default;
  if (value && typeof value === "object" && "__esModule" in value && "default" in value) value = (value as { default: unknown }).default;
  return decodeTallyConfig(value, file);
}
