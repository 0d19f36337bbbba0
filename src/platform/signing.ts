/**
 * HMAC-SHA256 signatures of HTTP bodies Tally POSTs (channel webhooks, write-back to an ERP over
 * HTTP): `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`. The timestamp is signed with the
 * body, so a receiver can refuse a replayed old request.
 */
import { createHmac, timingSafeEqual } from "node:crypto";

/** The signature header of a body signed with `secret` at `at`. */
export function signPayload(secret: string, body: string, at: Date = new Date()): string {
  const t = Math.floor(at.getTime() / 1000);
  return `t=${t},v1=${createHmac("sha256", secret).update(`${t}.${body}`).digest("hex")}`;
}

/** What a receiver does: checks the signature (constant time) and that it is recent. */
export function verifyPayload(secret: string, header: string | undefined, body: string, toleranceSeconds = 300, now: Date = new Date()): boolean {
  if (!header) return false;
  const parts = Object.fromEntries(header.split(",").map((p) => p.split("=", 2) as [string, string]));
  const t = Number(parts.t);
  if (!Number.isInteger(t) || Math.abs(now.getTime() / 1000 - t) > toleranceSeconds || typeof parts.v1 !== "string") return false;
  const expected = Buffer.from(createHmac("sha256", secret).update(`${t}.${body}`).digest("hex"));
  const got = Buffer.from(parts.v1);
  return got.length === expected.length && timingSafeEqual(got, expected);
}
