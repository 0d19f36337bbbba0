/**
 * What the reservation service refuses, in its own terms: a tagged error the HTTP routes (or any
 * other caller) translate. The message is the sentence a client is shown.
 */
import type { Withheld } from "../contract/index.ts";
import type { LifecycleEventType, ReservationStatus } from "./lifecycle.ts";

/** A line of a reservation request whose item the reservation's channel may not sell (the status rule, `withheldBy`). */
export interface WithheldLine {
  /** The line's position in the request's lines (0-based, bundles expanded). */
  readonly index: number;
  /** The item withheld: the line's SKU, or the bundle it is a component of. */
  readonly sku: string;
  readonly reason: Withheld;
}

export type ReservationProblem =
  /** No reservation with this id. */
  | { readonly code: "not_found"; readonly id: string }
  /** The idempotency key was used for another request. */
  | { readonly code: "idempotency_conflict"; readonly id: string }
  /** The first request with this idempotency key is still being decided. */
  | { readonly code: "in_progress"; readonly id: string }
  /**
   * The lifecycle refuses `action` from the reservation's status; `status` is what a client sees
   * (a held reservation past its expiry, not yet swept, is `expired`).
   */
  | { readonly code: "wrong_status"; readonly id: string; readonly action: LifecycleEventType; readonly status: ReservationStatus }
  /**
   * A line names an item the channel may not sell (blocked, or discontinued where the channel does not
   * sell remaining stock): the whole request refused before anything was written or published.
   */
  | { readonly code: "item_withheld"; readonly channel: string | null; readonly lines: ReadonlyArray<WithheldLine> }
  /**
   * The apply path is behind (a partition's holds take longer than the limit to be decided): the request
   * was shed before anything was written or published; retry after `retryAfterSeconds`, with the same
   * Idempotency-Key or a new one.
   */
  | { readonly code: "overloaded"; readonly lagMs: number; readonly limitMs: number; readonly retryAfterSeconds: number };

export type ReservationErrorCode = ReservationProblem["code"];

export class ReservationError extends Error {
  override readonly name = "ReservationError";
  readonly _tag = "ReservationError" as const;

  constructor(
    readonly problem: ReservationProblem,
    message: string,
  ) {
    super(message);
  }

  get code(): ReservationErrorCode {
    return this.problem.code;
  }

  static notFound(id: string): ReservationError {
    return new ReservationError({ code: "not_found", id }, `no reservation ${id}`);
  }

  static idempotencyConflict(id: string, idempotencyKey: string): ReservationError {
    return new ReservationError(
      { code: "idempotency_conflict", id },
      `Idempotency-Key ${JSON.stringify(idempotencyKey)} was used for a different request`,
    );
  }

  static inProgress(id: string): ReservationError {
    return new ReservationError({ code: "in_progress", id }, "a request with this Idempotency-Key is still being decided; retry shortly");
  }

  static withheld(channel: string | null, lines: ReadonlyArray<WithheldLine>): ReservationError {
    const what = lines.map((l) => `lines[${l.index}]: ${l.sku} is ${l.reason}`).join("; ");
    return new ReservationError(
      { code: "item_withheld", channel, lines },
      `${what}: ${channel === null ? "it may not be held" : `channel ${channel} may not hold it`}`,
    );
  }

  static overloaded(shed: { readonly lagMs: number; readonly limitMs: number; readonly retryAfterSeconds: number }): ReservationError {
    return new ReservationError(
      { code: "overloaded", lagMs: shed.lagMs, limitMs: shed.limitMs, retryAfterSeconds: shed.retryAfterSeconds },
      `holds are taking ${shed.lagMs} ms to be decided (limit ${shed.limitMs} ms): nothing was held; retry after ${shed.retryAfterSeconds} s`,
    );
  }

  /** `action` refused for a reservation that is `status` (a `held` one refuses only because its hold lapsed). */
  static wrongStatus(id: string, status: ReservationStatus, action: LifecycleEventType): ReservationError {
    if (status === "held")
      return new ReservationError({ code: "wrong_status", id, action, status: "expired" }, `reservation ${id} has expired (release pending)`);
    if (status === "pending") return new ReservationError({ code: "wrong_status", id, action, status }, `reservation ${id} is still being decided`);
    return new ReservationError({ code: "wrong_status", id, action, status }, `cannot ${action} reservation ${id}: it is ${status}`);
  }
}
