import type { Registry } from "prom-client";
import type { FastifyRequest } from "fastify";
import type { Sql } from "postgres";
import type { Logger } from "pino";
import type { Worker } from "../../actors/index.ts";
import type { SourceReader } from "../../cdc/index.ts";
import type { WebhookDispatcher } from "../channels/index.ts";
import type { PosIngest } from "../ingest/index.ts";
import type { Settings, TallyConfig } from "../platform/index.ts";
import type { Reservations } from "../reservations/index.ts";
import type { NatsHandles, OutcomeWaiter, Topology } from "../wire/index.ts";
import type { ApiToken } from "./auth.ts";
import type { ApiMetrics } from "./metrics.ts";

/** Knobs tests and operators may turn; the defaults suit production. */
export interface ApiOptions {
  /** Write requests per minute per token (default settings.apiRateLimit). */
  readonly rateLimitPerMinute?: number;
  /** How long a reservation waits for the actors' decision before answering 503 (default 10 s). */
  readonly decisionTimeoutMs?: number;
  /** How often the sweeper looks for expired holds (default 1 s). */
  readonly sweepIntervalMs?: number;
  /** Start the reservation sweeper and the NATS POS subscription (default true). */
  readonly background?: boolean;
  /** Request body limit in bytes (default 256 KiB; POS batches 1 MiB), enforced while the body arrives, before parsing. */
  readonly bodyLimit?: number;
  readonly posBodyLimit?: number;
  /** How deep a JSON body may nest (default 32): checked before parsing, deeper is 400. */
  readonly maxJsonDepth?: number;
  /** How long a request may wait on Postgres or NATS before it is answered 503 + Retry-After (default settings.requestTimeoutMs). */
  readonly requestTimeoutMs?: number;
  /** Hold lag above which new reservations are shed, 503 `overloaded` (default settings.reservationShedLagMs; 0: never). */
  readonly reservationShedLagMs?: number;
}

/** Everything the API needs; `buildApp` acquires nothing else but its own subscriptions and timers. */
export interface ApiDeps {
  readonly settings: Settings;
  readonly config: TallyConfig;
  readonly topology: Topology;
  readonly sql: Sql;
  readonly nats: NatsHandles;
  readonly log: Logger;
  readonly tokens: ReadonlyArray<ApiToken>;
  /** This process's worker and CDC readers, if it runs them (readiness, metrics). */
  readonly worker?: Worker | null;
  readonly readers?: ReadonlyArray<SourceReader>;
  /** This process's webhook senders, if it runs the relay role (metrics). */
  readonly webhooks?: ReadonlyArray<WebhookDispatcher>;
  /** The process's metrics registry, served at /metrics (a fresh one when absent). */
  readonly registry?: Registry;
  readonly options?: ApiOptions;
}

/** What the route plugins share. */
export interface ApiContext extends ApiDeps {
  readonly metrics: ApiMetrics;
  readonly outcomes: OutcomeWaiter;
  readonly pos: PosIngest;
  readonly reservations: Reservations;
  readonly opts: Required<ApiOptions>;
  /** The channel a request may see: the token's, or the one asked for; throws 400/403. */
  channelFor(req: FastifyRequest, asked: string | undefined): string;
  /** Locations a request may see (its token's channel's), or null for all. */
  locationsFor(req: FastifyRequest): ReadonlySet<string> | null;
  /** Closers of open event streams: ended when the app closes, so shutdown never waits on a client. */
  readonly streams: Set<() => void>;
}
