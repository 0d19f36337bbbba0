// The server harness moved to src/devStack/ (`tally dev` starts these servers too).
export { startNats } from '../../src/devStack/index.ts';
export type { NatsServer, StartNatsOptions } from '../../src/devStack/index.ts';
