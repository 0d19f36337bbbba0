/** Shared setup of the API tests: a worker + relay in process, and `buildApp` on its own pool. */
import type { FastifyInstance, InjectOptions, LightMyRequestResponse as InjectResponse } from "fastify";
import type { ItemDefinition } from "../src/contract/mapping.ts";
import { Crosswalk } from "../cdc/index.ts";
import { connectPostgres, type Sql } from "../src/platform/db.ts";
import { buildApp, type ApiOptions } from "../src/http/server.ts";
import { sha256Hex, type ApiToken, type Scope } from "../src/http/auth.ts";
import type { TallyConfig } from "../src/platform/configFile.ts";
import { createLogger } from "../src/platform/log.ts";
import type { TestContext } from "./support/context.ts";
import { TEST_CHANNELS, harness, startInProcess, type Harness, type TestEnvOptions } from "./support/tally.ts";

/** Test tokens: name → [scopes, channel?]. The token text is `secret-<name>`. */
const TOKEN_SPECS: Record<string, [ReadonlyArray<Scope>, string?]> = {
  admin: [["admin"]],
  pos: [["pos:write"]],
  posS01: [["pos:write"], "store_s01"],
  reader: [["availability:read"]],
  webReader: [["availability:read"], "web"],
  storeReader: [["availability:read"], "store_s01"],
  catalogAcker: [["availability:read", "catalog:ack"]],
  reserver: [["reservations:write"]],
  webReserver: [["reservations:write"], "web"],
  storeReserver: [["reservations:write"], "store_s01"],
  ledger: [["ledger:read"]],
  storeLedger: [["ledger:read"], "store_s01"],
};
export type TokenName = keyof typeof TOKEN_SPECS;

export const TOKENS: ReadonlyArray<ApiToken> = Object.entries(TOKEN_SPECS).map(([id, [scopes, channel]]) => ({
  id,
  sha256: sha256Hex(`secret-${id}`),
  scopes: scopes as [Scope, ...Scope[]],
  ...(channel ? { channel } : {}),
}));

export const auth = (name: TokenName): Record<string, string> => ({ authorization: `Bearer secret-${name}` });

export interface ApiFixture {
  readonly h: Harness;
  readonly sql: Sql;
  app: FastifyInstance;
  tally: Awaited<ReturnType<typeof startInProcess>> | null;
  /** `app.inject` with a token. */
  call(opts: InjectOptions & { as?: TokenName }): Promise<InjectResponse>;
  /** Rebuilds the app (a restart of the api role). */
  restartApp(options?: ApiOptions): Promise<void>;
  close(): Promise<void>;
}

export async function startApi(
  ctx: TestContext,
  options: ApiOptions = {},
  roles: ReadonlyArray<"worker" | "relay"> = ["worker", "relay"],
  env: TestEnvOptions = {},
  config: TallyConfig = TEST_CHANNELS,
): Promise<ApiFixture> {
  const h = await harness(ctx, env);
  const tally = roles.length > 0 ? await startInProcess(ctx, roles, env, config) : null;
  const sql = connectPostgres(ctx.databaseUrl, { max: 10, application: "test-api" });
  const log = createLogger("test-api", process.env.TALLY_LOG_LEVEL ?? "warn");
  const make = (o: ApiOptions) =>
    buildApp({
      settings: h.settings,
      config,
      topology: h.topology,
      sql,
      nats: h.nats,
      log,
      tokens: TOKENS,
      worker: tally?.worker ?? null,
      // The in-process roles' metrics, served on this app's /metrics as `tally start` does.
      ...(tally ? { registry: tally.metrics.registry } : {}),
      options: o,
    });
  const fixture: ApiFixture = {
    h,
    sql,
    app: await make(options),
    tally,
    call: ({ as, headers, ...rest }) =>
      fixture.app.inject({ ...rest, headers: { ...(as ? auth(as) : {}), ...(headers ?? {}) } }) as Promise<InjectResponse>,
    async restartApp(o = options) {
      await fixture.app.close();
      fixture.app = await make(o);
    },
    async close() {
      await fixture.app.close();
      await fixture.tally?.close();
      await sql.end({ timeout: 5 });
      await h.close();
    },
  };
  return fixture;
}

/** Defines items in the crosswalk, as the ERP's item master would. */
export async function defineItems(sql: Sql, defs: ReadonlyArray<ItemDefinition>): Promise<void> {
  await Crosswalk.persist(sql, "erp", defs);
}

export { settle } from "./support/tally.ts";

/** The quantity in one bucket. */
export async function balance(sql: Sql, sku: string, location: string, bucket = "on_hand"): Promise<number> {
  const [row] = await sql<Array<{ qty: number }>>`select qty from balances where sku = ${sku} and location = ${location} and bucket = ${bucket}`;
  return row?.qty ?? 0;
}

/** Dead letters of one origin, oldest first (read directly from the stream). */
export async function deadLetters(
  h: Harness,
  origin: string,
): Promise<Array<{ seq: number; reason: string; payload: unknown; context: Record<string, unknown> }>> {
  const state = (await h.nats.jsm.streams.info(h.topology.dlqStream)).state;
  const out = [];
  if (state.messages === 0) return [];
  for (let seq = state.first_seq; seq <= state.last_seq; seq++) {
    const m = await h.nats.jsm.streams.getMessage(h.topology.dlqStream, { seq }).catch(() => null);
    if (m && m.subject === h.topology.dlqSubject(origin))
      out.push({ seq, ...m.json<{ reason: string; payload: unknown; context: Record<string, unknown> }>() });
  }
  return out;
}
