// The server harness moved to src/app/devStack/ (`tally dev` starts these servers too).
export { findPostgresBin, startPostgres } from '../../src/app/devStack/index.ts';
export type { PostgresServer, StartPostgresOptions } from '../../src/app/devStack/index.ts';
