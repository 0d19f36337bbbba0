// The server harness moved to src/devStack/ (`tally dev` starts these servers too).
export { cleanupOnExit, ServerProcess, ServerStartError } from '../../src/devStack/index.ts';
export type { ServerProcessOptions } from '../../src/devStack/index.ts';
