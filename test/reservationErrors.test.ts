import { describe, expect, it } from "vitest";
import { reservationHttpError } from "../src/http/routes/reservations.ts";
import { ReservationError } from "../src/reservations/index.ts";

const ID = `r_${"c".repeat(32)}`;

/** What a client receives: status and body, as the API's error handler sends an ApiError. */
const reply = (e: ReservationError) => {
  const http = reservationHttpError(e);
  return { status: http.status, body: { error: http.code, message: http.message, ...http.extra } };
};

describe("ReservationError → HTTP", () => {
  it("not_found is 404 not_found", () => {
    expect(reply(ReservationError.notFound(ID))).toEqual({ status: 404, body: { error: "not_found", message: `no reservation ${ID}` } });
  });

  it("idempotency_conflict is 422 with the reservation's id", () => {
    expect(reply(ReservationError.idempotencyConflict(ID, "k1"))).toEqual({
      status: 422,
      body: { error: "idempotency_conflict", message: 'Idempotency-Key "k1" was used for a different request', id: ID },
    });
  });

  it("in_progress is 409 request_in_progress with the reservation's id", () => {
    expect(reply(ReservationError.inProgress(ID))).toEqual({
      status: 409,
      body: { error: "request_in_progress", message: "a request with this Idempotency-Key is still being decided; retry shortly", id: ID },
    });
  });

  it("wrong_status is 409 reservation_<status>; a held reservation refused is one whose hold lapsed", () => {
    expect(reply(ReservationError.wrongStatus(ID, "held", "commit"))).toEqual({
      status: 409,
      body: { error: "reservation_expired", message: `reservation ${ID} has expired (release pending)` },
    });
    expect(reply(ReservationError.wrongStatus(ID, "pending", "fulfill"))).toEqual({
      status: 409,
      body: { error: "reservation_pending", message: `reservation ${ID} is still being decided` },
    });
    expect(reply(ReservationError.wrongStatus(ID, "fulfilled", "release"))).toEqual({
      status: 409,
      body: { error: "reservation_fulfilled", message: `cannot release reservation ${ID}: it is fulfilled` },
    });
    expect(reply(ReservationError.wrongStatus(ID, "released", "commit"))).toEqual({
      status: 409,
      body: { error: "reservation_released", message: `cannot commit reservation ${ID}: it is released` },
    });
  });

  it("is a tagged domain error, not an HTTP one", () => {
    const e = ReservationError.wrongStatus(ID, "expired", "fulfill");
    expect(e).toBeInstanceOf(ReservationError);
    expect(e._tag).toBe("ReservationError");
    expect(e.code).toBe("wrong_status");
    expect(e.problem).toEqual({ code: "wrong_status", id: ID, action: "fulfill", status: "expired" });
    expect("status" in e).toBe(false);
  });
});
