// The server harness moved to src/app/devStack/ (`tally dev` starts these servers too).
export { startNats } from "../../src/app/devStack/index.ts";
export type { NatsServer } from "../../src/app/devStack/index.ts";
