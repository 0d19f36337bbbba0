// The server harness moved to src/app/devStack/ (`tally dev` starts these servers too).
export { freePort, isPortFree, preferredPort } from '../../src/app/devStack/index.ts';
