/** The public surface of src/app/: other folders import only from here. */
export { startTally } from "./roles.ts";
