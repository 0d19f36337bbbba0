import { createHash, createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { readFile } from "node:fs/promises";
import { Either, ParseResult, Schema } from "effect";
import type { Settings } from "../platform/index.ts";

/**
 * What a token may do. `admin` implies every other scope. `catalog:ack` lets a token without a channel acknowledge
 * the catalog version of any channel (a channel's own token does so for its channel with `availability:read`).
 */
export const SCOPES = ["pos:write", "availability:read", "reservations:write", "ledger:read", "catalog:ack", "admin"] as const;
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

/** How long a stream token lives unless the mint request asks for less or more, and the most it may. */
export const STREAM_TOKEN_TTL_SECONDS = { default: 300, min: 30, max: 900 } as const;
const STREAM_TOKEN_PREFIX = "tlys_";

/** What a stream token proves: who minted it, for which channel, until when (seconds since the epoch). */
interface StreamClaims {
  readonly v: 1;
  readonly sub: string;
  readonly ch: string;
  readonly exp: number;
}

/**
 * Short-lived, read-only, channel-bound tokens a shop's backend mints for its web pages, which cannot send an
 * Authorization header from `EventSource`. A token is `tlys_<claims>.<HMAC-SHA256>`, both base64url, signed with a
 * key derived from `TALLY_STREAM_TOKEN_SECRET`, so every API replica with the same secret accepts every other's
 * tokens and nothing is stored. Only the read routes a page needs take one (as `?access_token=`): the availability
 * snapshot and stream, the catalog delta feed and stream (`STREAM_TOKEN_ROUTE`).
 */
export class StreamTokens {
  readonly #key: Buffer | null;

  constructor(secret: string | undefined) {
    this.#key = secret ? createHmac("sha256", secret).update("tally stream token v1").digest() : null;
  }

  get enabled(): boolean {
    return this.#key !== null;
  }

  /** A token for `channel` minted by the token `issuer`, living `ttlSeconds`. */
  mint(issuer: string, channel: string, ttlSeconds: number, now = Date.now()): { token: string; expiresAt: string } {
    if (!this.#key) throw new Error("stream tokens need TALLY_STREAM_TOKEN_SECRET");
    const exp = Math.floor(now / 1000) + ttlSeconds;
    const claims: StreamClaims = { v: 1, sub: issuer, ch: channel, exp };
    const body = Buffer.from(JSON.stringify(claims), "utf8").toString("base64url");
    return { token: `${STREAM_TOKEN_PREFIX}${body}.${this.#sign(body)}`, expiresAt: new Date(exp * 1000).toISOString() };
  }

  /** The reader a token stands for; "invalid" when it is malformed or its signature is not ours, "expired" past its expiry. */
  verify(token: string, now = Date.now()): Principal | "invalid" | "expired" {
    if (!this.#key || !token.startsWith(STREAM_TOKEN_PREFIX) || token.length > 1024) return "invalid";
    const [body, signature, ...rest] = token.slice(STREAM_TOKEN_PREFIX.length).split(".");
    if (!body || !signature || rest.length > 0) return "invalid";
    const expected = Buffer.from(this.#sign(body), "utf8");
    const presented = Buffer.from(signature, "utf8");
    if (presented.length !== expected.length || !timingSafeEqual(presented, expected)) return "invalid";
    let claims: Partial<StreamClaims>;
    try {
      claims = JSON.parse(Buffer.from(body, "base64url").toString("utf8")) as Partial<StreamClaims>;
    } catch {
      return "invalid";
    }
    if (claims.v !== 1 || typeof claims.ch !== "string" || typeof claims.sub !== "string" || typeof claims.exp !== "number") return "invalid";
    if (claims.exp * 1000 <= now) return "expired";
    return { id: `stream:${claims.sub}`, scopes: new Set<Scope>(["availability:read"]), channel: claims.ch };
  }

  #sign(body: string): string {
    return createHmac("sha256", this.#key!).update(body, "utf8").digest("base64url");
  }
}

declare module "fastify" {
  interface FastifyContextConfig {
    /** The route also takes a stream token as `?access_token=` (the availability and catalog snapshots and streams only). */
    streamToken?: boolean;
  }
}

/** The config of a route a page reads with a stream token: availability:read, or a stream token for the channel it asks. */
export const STREAM_TOKEN_ROUTE = { scope: "availability:read" as const, streamToken: true };

/** The `access_token` query parameter of those routes. */
export const ACCESS_TOKEN_PARAM = {
  type: "string",
  maxLength: 1024,
  description: "a stream token from POST /v1/stream-tokens, for browsers (EventSource cannot send headers); instead of the Authorization header",
} as const;

/** Who is asking, or why not: the status, the message and the WWW-Authenticate challenge of a refusal. */
export type AuthOutcome = { readonly principal: Principal } | { readonly status: 401 | 403; readonly message: string; readonly challenge?: string };

/**
 * Authenticates a request to a route that needs `scope`: a bearer token in the Authorization header, or, on a
 * route that allows it and without that header, a stream token in `?access_token=`. A stream token anywhere else
 * (or in the header) is not a configured token, so it is refused as unknown.
 */
export function authenticate(
  request: { readonly authorization: string | undefined; readonly accessToken: unknown; readonly streamTokenRoute: boolean },
  scope: Scope,
  verifier: TokenVerifier,
  streamTokens: StreamTokens,
): AuthOutcome {
  const token = bearerToken(request.authorization);
  if (token === null && typeof request.accessToken === "string" && request.streamTokenRoute) {
    const verdict = streamTokens.verify(request.accessToken);
    if (verdict === "invalid") return { status: 401, message: "invalid stream token", challenge: 'Bearer realm="tally", error="invalid_token"' };
    if (verdict === "expired")
      return { status: 401, message: "expired stream token: mint a new one", challenge: 'Bearer realm="tally", error="invalid_token"' };
    return may(verdict, scope) ? { principal: verdict } : { status: 403, message: `a stream token lacks scope ${scope}` };
  }
  if (token === null) {
    const hint =
      request.accessToken !== undefined
        ? " (a stream token in ?access_token= is accepted only by the availability and catalog snapshots and streams)"
        : "";
    return { status: 401, message: `missing bearer token (Authorization: Bearer <token>)${hint}`, challenge: 'Bearer realm="tally"' };
  }
  const principal = verifier.verify(token);
  if (!principal) return { status: 401, message: "unknown or revoked token", challenge: 'Bearer realm="tally", error="invalid_token"' };
  if (!may(principal, scope)) return { status: 403, message: `this token lacks scope ${scope}` };
  return { principal };
}
