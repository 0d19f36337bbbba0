import { describe, expect, it } from "vitest";
import { ApplyGate } from "./applyGate.ts";

const tick = () => new Promise((r) => setImmediate(r));

describe("ApplyGate", () => {
  it("lets at most `permits` holders in, hands permits over in arrival order, and counts a double release once", async () => {
    const gate = new ApplyGate(2);
    const order: Array<string> = [];
    const a = await gate.acquire();
    const b = await gate.acquire();
    const c = gate.acquire().then((r) => (order.push("c"), r));
    const d = gate.acquire().then((r) => (order.push("d"), r));
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
    const e = await gate.acquire();
    const f = await gate.acquire();
    e();
    f();
  });

  it("refuses a concurrency that is not a whole number of at least 1", () => {
    expect(() => new ApplyGate(0)).toThrow(/whole number ≥ 1, got 0/);
    expect(() => new ApplyGate(1.5)).toThrow(/got 1.5/);
  });
});
