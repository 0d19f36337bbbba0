// The server harness moved to src/app/devStack/ (`tally dev` starts these servers too).
export { startPostgres } from "../../src/app/devStack/index.ts";
export type { PostgresServer } from "../../src/app/devStack/index.ts";
