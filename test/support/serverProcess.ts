// The server harness moved to src/app/devStack/ (`tally dev` starts these servers too).
export { cleanupOnExit, ServerProcess, ServerStartError } from '../../src/app/devStack/index.ts';
export type { ServerProcessOptions } from '../../src/app/devStack/index.ts';
