/** Real Postgres and nats-server processes, started by `tally dev` and by the test harness. */
export { freePort, isPortFree, preferredPort } from "./ports.ts";
export { cleanupOnExit, serversUsing, ServerProcess, ServerStartError } from "./serverProcess.ts";
export type { ServerProcessOptions } from "./serverProcess.ts";
export { embeddedPostgresRoot, findPostgresBin, startPostgres } from "./postgres.ts";
export type { PostgresServer, StartPostgresOptions } from "./postgres.ts";
export { findNatsServer, startNats } from "./nats.ts";
export type { NatsServer, StartNatsOptions } from "./nats.ts";
