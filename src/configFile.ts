import { pathToFileURL } from "node:url";
import path from "node:path";
import { Either, ParseResult, Schema } from "effect";

const Name = Schema.String.pipe(
  Schema.pattern(/^[a-z0-9_-]+$/, { message: () => "expected lowercase letters, digits, _ and -" }),
);
const Location = Schema.String.pipe(
  Schema.pattern(/^[A-Za-z0-9_.:-]+$/, { message: () => "expected a location id (letters, digits, _ . : -)" }),
);

/** A sales channel: which locations' stock it may sell, and how much to hold back. */
export const ChannelConfig = Schema.Struct({
  /** Locations whose available stock feeds this channel. */
  locations: Schema.NonEmptyArray(Location),
  /** Units held back from this channel's availability (a safety buffer), default 0. */
  buffer: Schema.optionalWith(Schema.Int.pipe(Schema.nonNegative()), { default: () => 0 }),
});
export type ChannelConfig = typeof ChannelConfig.Type;

/** The typed contents of `tally.config.ts`. */
export const TallyConfig = Schema.Struct({
  channels: Schema.Record({ key: Name, value: ChannelConfig }),
});
export type TallyConfig = typeof TallyConfig.Type;
export type TallyConfigInput = typeof TallyConfig.Encoded;

/** Identity helper that gives `tally.config.ts` its types. */
export const defineConfig = (config: TallyConfigInput): TallyConfigInput => config;

export class ConfigFileError extends Error {
  override readonly name = "ConfigFileError";
}

/** Validates a config object; throws a ConfigFileError naming every bad field. */
export function decodeTallyConfig(input: unknown, origin = "tally.config.ts"): TallyConfig {
  const result = Schema.decodeUnknownEither(TallyConfig, { errors: "all", onExcessProperty: "error" })(input);
  if (Either.isRight(result)) return result.right;
  const issues = ParseResult.ArrayFormatter.formatErrorSync(result.left).map(
    (i) => `${i.path.join(".") || "(root)"}: ${i.message}`,
  );
  throw new ConfigFileError(`${origin}: ${issues.join("; ")}`);
}

/** Imports and validates the config file (TypeScript is loaded through the tsx loader). */
export async function loadTallyConfig(file: string): Promise<TallyConfig> {
  const abs = path.resolve(file);
  let mod: { default?: unknown };
  try {
    mod = (await import(pathToFileURL(abs).href)) as { default?: unknown };
  } catch (cause) {
    throw new ConfigFileError(`${file}: cannot be loaded: ${(cause as Error).message}`, { cause });
  }
  return decodeTallyConfig(mod.default, file);
}
