/** The public surface of src/reservations/: other folders import only from here. */
export { Reservations } from "./service.ts";
export { ReservationSweeper } from "./sweeper.ts";
export type { Answer, CreateRequest, Decision, LineRequest, ReservationMetrics, ReservationOutcome, ReservationRow } from "./service.ts";
export { ReservationError } from "./errors.ts";
export type { ReservationErrorCode, ReservationProblem, WithheldLine } from "./errors.ts";
export { INITIAL_STATUS, RESERVATION_STATUSES, isFinal, movesFrom, nextStatus as nextReservationStatus } from "./lifecycle.ts";
export type { LifecycleEvent, LifecycleEventType, LifecycleStep, ReservationStatus } from "./lifecycle.ts";
