// The server harness moved to src/app/devStack/ (`tally dev` starts these servers too).
export { freePort } from "../../src/app/devStack/index.ts";
