import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { readFile } from "node:fs/promises";
import { Either, ParseResult, Schema } from "effect";
import type { Settings } from "../platform/index.ts";

/** What a token may do. `admin` implies every other scope. */
export const SCOPES = ["pos:write", "availability:read", "reservations:write", "ledger:read", "admin"] as const;
export type Scope = (typeof SCOPES)[number];

/**
 * One configured API token. Only its SHA-256 is configured, never the token itself:
 * `{"id": "pos-s01", "sha256": "<64 hex>", "scopes": ["pos:write"], "channel": "store_s01"}`.
 */
export const ApiToken = Schema.Struct({
  /** Names the token in logs, metrics and rate limits; never secret. */
  id: Schema.String.pipe(Schema.pattern(/^[A-Za-z0-9_.:-]{1,100}$/, { message: () => "expected letters, digits, _ . : - (at most 100)" })),
  sha256: Schema.String.pipe(Schema.pattern(/^[0-9a-f]{64}$/, { message: () => "expected the token's SHA-256 as 64 lowercase hex digits" })),
  scopes: Schema.NonEmptyArray(Schema.Literal(...SCOPES)),
  /** When set, the token only sees this channel (its availability, its locations' stock, its reservations, its stores). */
  channel: Schema.optional(Schema.String),
});
export type ApiToken = typeof ApiToken.Type;

const ApiTokens = Schema.Array(ApiToken);

/** The token list could not be decoded: the message names the bad entry and field. */
export class TokenConfigError extends Error {
  override readonly name = "TokenConfigError";
}

/** Decodes a token list (JSON text); throws TokenConfigError naming every bad field. */
export function decodeTokens(json: string, origin: string): ReadonlyArray<ApiToken> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(json);
  } catch (cause) {
    throw new TokenConfigError(`${origin}: not valid JSON (${(cause as Error).message})`, { cause });
  }
  const result = Schema.decodeUnknownEither(ApiTokens, { errors: "all", onExcessProperty: "error" })(parsed);
  if (Either.isLeft(result)) {
    const issues = ParseResult.ArrayFormatter.formatErrorSync(result.left).map(
      (i) =>
        `${
          i.path
            .map((p) => (typeof p === "number" ? `[${p}]` : `.${String(p)}`))
            .join("")
            .replace(/^\./, "") || "(root)"
        }: ${i.message}`,
    );
    throw new TokenConfigError(`${origin}: ${issues.join("; ")}`);
  }
  const ids = new Set<string>();
  for (const t of result.right) {
    if (ids.has(t.id)) throw new TokenConfigError(`${origin}: token id ${JSON.stringify(t.id)} appears twice`);
    ids.add(t.id);
  }
  return result.right;
}

/** The tokens configured by `TALLY_API_TOKENS` and `TALLY_API_TOKENS_FILE` (both may be set). */
export async function loadTokens(settings: Pick<Settings, "apiTokens" | "apiTokensFile">): Promise<ReadonlyArray<ApiToken>> {
  const out: Array<ApiToken> = [];
  if (settings.apiTokens) out.push(...decodeTokens(settings.apiTokens, "TALLY_API_TOKENS"));
  if (settings.apiTokensFile) {
    let text: string;
    try {
      text = await readFile(settings.apiTokensFile, "utf8");
    } catch (cause) {
      throw new TokenConfigError(`TALLY_API_TOKENS_FILE: cannot read ${settings.apiTokensFile}: ${(cause as Error).message}`, { cause });
    }
    out.push(...decodeTokens(text, settings.apiTokensFile));
  }
  return out;
}

export const sha256Hex = (token: string): string => createHash("sha256").update(token, "utf8").digest("hex");

/** A fresh random token (what a client sends) and the entry to configure for it. */
export function newToken(id: string, scopes: ReadonlyArray<Scope>, channel?: string): { token: string; entry: ApiToken } {
  const token = `tly_${randomBytes(24).toString("base64url")}`;
  return { token, entry: { id, sha256: sha256Hex(token), scopes: scopes as [Scope, ...Scope[]], ...(channel ? { channel } : {}) } };
}

/** Who made a request: the token's id, what it may do and which channel it is limited to. */
export interface Principal {
  readonly id: string;
  readonly scopes: ReadonlySet<Scope>;
  readonly channel: string | null;
}

export const may = (p: Principal, scope: Scope): boolean => p.scopes.has(scope) || p.scopes.has("admin");

/**
 * Finds the token whose hash matches, comparing against every configured hash in constant time
 * (no early exit), so timing reveals neither which token nor how much of it matched.
 */
export class TokenVerifier {
  readonly #entries: ReadonlyArray<{ hash: Buffer; principal: Principal }>;

  constructor(tokens: ReadonlyArray<ApiToken>) {
    this.#entries = tokens.map((t) => ({
      hash: Buffer.from(t.sha256, "hex"),
      principal: { id: t.id, scopes: new Set(t.scopes), channel: t.channel ?? null },
    }));
  }

  get size(): number {
    return this.#entries.length;
  }

  verify(presented: string): Principal | null {
    const hash = createHash("sha256").update(presented, "utf8").digest();
    let found: Principal | null = null;
    for (const e of this.#entries) if (timingSafeEqual(hash, e.hash) && found === null) found = e.principal;
    return found;
  }
}

/** The bearer token of an Authorization header, or null when there is none or it is not `Bearer <token>`. */
export function bearerToken(header: string | undefined): string | null {
  if (!header) return null;
  const m = /^Bearer[ ]+([^\s]{1,512})\s*$/i.exec(header);
  return m ? m[1]! : null;
}
