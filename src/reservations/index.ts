/** The public surface of src/reservations/: other folders import only from here. */
export { Reservations } from "./service.ts";
export type { LineRequest } from "./service.ts";
