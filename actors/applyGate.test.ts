import { describe, expect, it } from "vitest";
import { ApplyGate } from "./applyGate.ts";

const tick = () => new Promise((r) => setImmediate(r));

/** A permit, which the gate must grant (no signal given). */
async function permit(gate: ApplyGate): Promise<() => void> {
  const release = await gate.acquire();
  if (!release) throw new Error("no permit");
  return release;
}

describe("ApplyGate", () => {
  it("lets at most `permits` holders in, hands permits over in arrival order, and counts a double release once", async () => {
    const gate = new ApplyGate(2);
    const order: Array<string> = [];
    const a = await permit(gate);
    const b = await permit(gate);
    const c = permit(gate).then((r) => {
      order.push("c");
      return r;
    });
    const d = permit(gate).then((r) => {
      order.push("d");
      return r;
    });
    await tick();
    expect(order).toEqual([]);
    a();
    a(); // a second release of the same permit gives nothing more
    await tick();
    expect(order).toEqual(["c"]);
    b();
    const releaseD = await d;
    expect(order).toEqual(["c", "d"]);
    (await c)();
    releaseD();
    expect(gate.maxInUse).toBe(2);
    // All permits are free again: two holders at once without waiting.
    const e = await permit(gate);
    const f = await permit(gate);
    e();
    f();
  });

  it("gives up a wait when its signal aborts, holding nothing, and skips that waiter on release", async () => {
    const gate = new ApplyGate(1);
    const held = await permit(gate);
    const stopping = new AbortController();
    const waiting = gate.acquire(stopping.signal);
    const next = permit(gate);
    stopping.abort();
    expect(await waiting).toBeNull();
    held(); // goes to the waiter behind the aborted one
    const release = await next;
    expect(await gate.acquire(AbortSignal.abort())).toBeNull(); // already aborted: no wait at all
    release();
    (await permit(gate))(); // the permit came back: nothing leaked to the aborted waiter
    expect(gate.maxInUse).toBe(1);
  });

  it("refuses a concurrency that is not a whole number of at least 1", () => {
    expect(() => new ApplyGate(0)).toThrow(/whole number ≥ 1, got 0/);
    expect(() => new ApplyGate(1.5)).toThrow(/got 1.5/);
  });
});
