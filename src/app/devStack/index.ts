/** Real Postgres and nats-server processes, started by `tally dev` and by the test harness; the terminal, logs and status of `tally dev`. */
export { freePort, isPortFree, preferredPort } from "./ports.ts";
export { cleanupOnExit, serversUsing, ServerProcess, ServerStartError } from "./serverProcess.ts";
export type { ServerProcessOptions } from "./serverProcess.ts";
export { embeddedPostgresRoot, findPostgresBin, startPostgres } from "./postgresServer.ts";
export type { PostgresServer, StartPostgresOptions } from "./postgresServer.ts";
export { findNatsServer, startNats } from "./natsServer.ts";
export type { NatsServer, StartNatsOptions } from "./natsServer.ts";
export { openDevLogs } from "./devLogs.ts";
export { DevTerminal } from "./devTerminal.ts";
export { devEnvironment, envFileText, statusLine } from "./devStatus.ts";
