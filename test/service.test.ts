import { describe, expect, it } from "vitest";
import { Lifetime, LongRunningService, Wakeup, retry, sleep } from "../src/platform/index.ts";
import { createLogger } from "../src/platform/index.ts";
import { Writable } from "node:stream";

/** Counts its loop's rounds; each round sleeps `pauseMs` (woken by stop). */
class Ticker extends LongRunningService {
  rounds = 0;
  runs = 0;
  stopHooks = 0;
  constructor(readonly pauseMs: number) {
    super();
  }
  protected async run(signal: AbortSignal): Promise<void> {
    this.runs++;
    while (!signal.aborted) {
      this.rounds++;
      await sleep(this.pauseMs, signal);
    }
  }
  protected override onStop(): void {
    this.stopHooks++;
  }
}

/** A logger whose lines are kept. */
function capturingLogger() {
  const lines: Array<Record<string, unknown>> = [];
  const out = new Writable({
    write(chunk, _enc, done) {
      for (const l of String(chunk).split("\n")) if (l.trim()) lines.push(JSON.parse(l) as Record<string, unknown>);
      done();
    },
  });
  return { log: createLogger("test", "debug", out), lines };
}

describe("LongRunningService", () => {
  it("a constructor starts nothing; start() does, once", async () => {
    const t = new Ticker(60_000);
    await sleep(20);
    expect(t.runs).toBe(0);
    expect(t.rounds).toBe(0);
    t.start();
    t.start();
    await sleep(20);
    expect(t.runs).toBe(1);
    expect(t.rounds).toBe(1);
    await t.stop();
  });

  it("stop() wakes a sleeping loop at once and waits for it to end; a second stop is harmless", async () => {
    const t = new Ticker(60_000).start();
    await sleep(10);
    const from = performance.now();
    expect(await t.stop()).toBe(true);
    expect(performance.now() - from).toBeLessThan(1000);
    expect(t.stopping).toBe(true);
    expect(t.stopHooks).toBe(1);
    await t.stop();
    expect(t.stopHooks).toBe(1);
    // Stopped: start() does nothing any more.
    t.start();
    expect(t.runs).toBe(1);
  });

  it("stop() before start() resolves, and the loop never runs", async () => {
    const t = new Ticker(10);
    expect(await t.stop()).toBe(true);
    t.start();
    await sleep(20);
    expect(t.runs).toBe(0);
  });

  it("stop(timeoutMs) gives up on a loop that ignores its signal", async () => {
    class Stubborn extends LongRunningService {
      protected async run(): Promise<void> {
        await sleep(300);
      }
    }
    const s = new Stubborn().start();
    expect(await s.stop(20)).toBe(false);
    await s.done;
  });

  it("a failing loop rejects stop()", async () => {
    class Failing extends LongRunningService {
      protected async run(): Promise<void> {
        throw new Error("boom");
      }
    }
    const f = new Failing().start();
    await expect(f.stop()).rejects.toThrow("boom");
  });
});

describe("sleep and Wakeup", () => {
  it("sleep ends at its time, or at once when the signal aborts", async () => {
    const from = performance.now();
    await sleep(30);
    expect(performance.now() - from).toBeGreaterThanOrEqual(25);
    const abort = new AbortController();
    const waiting = sleep(60_000, abort.signal);
    abort.abort();
    await waiting;
    await sleep(60_000, abort.signal); // already aborted: returns at once
  });

  it("wake() ends the current wait; a wake with nobody waiting is lost", async () => {
    const w = new Wakeup();
    w.wake();
    const from = performance.now();
    const waiting = w.wait(60_000);
    setTimeout(() => w.wake(), 10);
    await waiting;
    expect(performance.now() - from).toBeLessThan(1000);
  });
});

describe("retry", () => {
  it("logs every failed attempt, backs off growing, and returns the first success", async () => {
    const { log, lines } = capturingLogger();
    const delays: Array<number> = [];
    const abort = new AbortController();
    let calls = 0;
    const value = await retry(
      async (attempt) => {
        calls++;
        if (attempt < 4) throw new Error(`fail ${attempt}`);
        return "ok";
      },
      {
        signal: abort.signal,
        backoff: (attempt) => 5 * 2 ** attempt,
        onError: (err, attempt, delayMs) => {
          delays.push(delayMs);
          log.warn({ err, attempt }, "round failed");
        },
      },
    );
    expect(value).toBe("ok");
    expect(calls).toBe(4);
    expect(delays).toEqual([10, 20, 40]);
    expect(lines.map((l) => [l.attempt, (l.err as { message: string }).message])).toEqual([
      [1, "fail 1"],
      [2, "fail 2"],
      [3, "fail 3"],
    ]);
  });

  it("ends with undefined when stopped during a backoff, and rethrows after maxAttempts", async () => {
    const abort = new AbortController();
    const pending = retry(() => Promise.reject(new Error("down")), { signal: abort.signal, backoff: () => 60_000, onError: () => {} });
    await sleep(10);
    abort.abort();
    expect(await pending).toBeUndefined();
    const errors: Array<number> = [];
    await expect(
      retry(() => Promise.reject(new Error("still down")), {
        signal: new AbortController().signal,
        backoff: () => 1,
        maxAttempts: 3,
        onError: (_e, a) => void errors.push(a),
      }),
    ).rejects.toThrow("still down");
    expect(errors).toEqual([1, 2]);
  });
});

describe("Lifetime", () => {
  it("releases last acquired first, every release even when one fails, and once", async () => {
    const { log, lines } = capturingLogger();
    const order: Array<string> = [];
    const life = new Lifetime(log);
    life.defer(() => order.push("first"));
    life.use({ close: async () => void order.push("closable") });
    life.defer(() => {
      throw new Error("release failed");
    });
    life.use({ stop: () => order.push("stoppable") });
    const closing = life.close();
    await expect(closing).rejects.toThrow("release failed");
    await expect(life.close()).rejects.toThrow("release failed");
    expect(order).toEqual(["stoppable", "closable", "first"]);
    expect(lines.some((l) => l.msg === "releasing a resource failed")).toBe(true);
    expect(() => life.defer(() => {})).toThrow(/closed/);
  });
});
