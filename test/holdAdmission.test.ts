/** Hold admission control's rule, on a clock the test moves: shed while a partition is behind, one probe at a time, open again when fast. */
import { describe, expect, it } from "vitest";
import { HoldAdmission, isShed, type Ticket } from "../src/reservations/admission.ts";

function setup(limitMs = 1000) {
  let now = 0;
  const a = new HoldAdmission(limitMs, () => now);
  const admit = (...ps: Array<number>) => {
    const r = a.admit(ps);
    if (isShed(r)) throw new Error(`shed: ${JSON.stringify(r)}`);
    return r;
  };
  return { a, admit, tick: (ms: number) => (now += ms) };
}

describe("HoldAdmission", () => {
  it("admits every hold while decisions are fast", () => {
    const { a, admit, tick } = setup();
    const t = Array.from({ length: 100 }, () => admit(0));
    tick(900);
    for (const x of t) a.decided(x);
    expect(isShed(a.admit([0]))).toBe(false);
  });

  it("sheds a partition whose oldest undecided hold is past the limit, with its lag and a Retry-After; other partitions still admit", () => {
    const { a, admit, tick } = setup();
    admit(0);
    tick(2500);
    const shed = a.admit([0]);
    expect(shed).toEqual({ lagMs: 2500, limitMs: 1000, retryAfterSeconds: 3 });
    expect(isShed(a.admit([1]))).toBe(false);
    // A cart touching the lagging partition is shed whole.
    expect(isShed(a.admit([1, 0]))).toBe(true);
    expect(a.maxLagMs()).toBe(2500);
  });

  it("after a slow decision lets one probe through at a time; a fast probe opens the partition again", () => {
    const { a, admit, tick } = setup();
    const slow = admit(0);
    tick(5000);
    a.decided(slow);
    const probe = admit(0); // nothing undecided: the probe goes
    expect(isShed(a.admit([0]))).toBe(true); // while it is in flight, the rest is shed
    tick(50);
    a.decided(probe);
    expect(a.lagMs(0)).toBe(50);
    admit(0);
    admit(0);
  });

  it("a slow probe keeps the partition shed; a dropped hold (never published) measures nothing", () => {
    const { a, admit, tick } = setup();
    const slow = admit(0);
    tick(3000);
    a.decided(slow);
    const probe = admit(0);
    tick(4000);
    a.decided(probe);
    const next: Ticket = admit(0); // the next probe
    expect(isShed(a.admit([0]))).toBe(true);
    a.drop(next);
    expect(a.lagMs(0)).toBe(4000);
  });

  it("stops waiting for a hold undecided past expireMs (a call that never settled): it counts as that late, and the next hold goes as a probe", () => {
    let now = 0;
    const a = new HoldAdmission(1000, () => now, 60_000);
    a.admit([0]); // never decided nor dropped
    now += 30_000;
    expect(isShed(a.admit([0]))).toBe(true);
    now += 30_000;
    const probe = a.admit([0]);
    expect(isShed(probe)).toBe(false);
    expect(a.lagMs(0)).toBe(60_000);
    expect(isShed(a.admit([0]))).toBe(true); // the probe is in flight
    now += 20;
    a.decided(probe as Ticket);
    expect(isShed(a.admit([0]))).toBe(false);
  });

  it("never sheds with the limit at 0", () => {
    const { a, admit, tick } = setup(0);
    admit(0);
    tick(60_000);
    expect(isShed(a.admit([0]))).toBe(false);
  });
});
