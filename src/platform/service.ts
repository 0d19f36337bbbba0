/**
 * One idiom for long-running work (see docs/lifetimes.md): plain Promises and an AbortSignal.
 *
 * - A {@link LongRunningService} does nothing in its constructor; `start()` begins its loop (once),
 *   `stop()` aborts its signal, wakes whatever it sleeps on and awaits the loop.
 * - {@link sleep} and {@link Wakeup} are the only ways a loop waits: both end early on stop.
 * - {@link retry} is the only retry loop: it logs (through `onError`) every failed attempt and backs off.
 * - {@link Lifetime} releases what a command or a dev stack acquired, last acquired first.
 */
import type { Logger } from "pino";

/** Resolves after `ms`, or at once when `signal` aborts (never rejects). */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = Number.isFinite(ms) ? setTimeout(done, Math.max(0, ms)) : undefined;
    signal?.addEventListener("abort", done, { once: true });
  });
}

/**
 * `work`, unless `signal` aborts first: then rejects with the signal's reason at once. For an await on
 * something the signal cannot reach (a query on a server that stopped answering, a driver's reconnect):
 * the work itself goes on in the background, so the caller must then release what it uses (close the
 * pool, stop the iterator) for it to end.
 */
export function untilAborted<T>(work: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) {
    work.catch(() => {}); // settles unobserved: its failure after the abort is of no interest
    return Promise.reject(signal.reason as Error);
  }
  return new Promise<T>((resolve, reject) => {
    const abort = () => {
      work.catch(() => {});
      reject(signal.reason as Error);
    };
    signal.addEventListener("abort", abort, { once: true });
    work.then(
      (value) => {
        signal.removeEventListener("abort", abort);
        resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener("abort", abort);
        reject(error as Error);
      },
    );
  });
}

/**
 * A sleep that something else can cut short (new data arrived, a notification): `wait` resolves on
 * the first of its timeout, `wake()` or the signal aborting. A `wake()` with nobody waiting is lost,
 * as a notification during a round is: the round reads everything anyway.
 */
export class Wakeup {
  #wake: (() => void) | null = null;

  wait(ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      if (signal?.aborted) return resolve();
      const done = () => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", done);
        if (this.#wake === done) this.#wake = null;
        resolve();
      };
      const timer = Number.isFinite(ms) ? setTimeout(done, Math.max(0, ms)) : undefined;
      signal?.addEventListener("abort", done, { once: true });
      this.#wake = done;
    });
  }

  wake(): void {
    this.#wake?.();
  }
}

export interface RetryOptions {
  /** Ends the retries: `retry` then resolves with undefined (a failure after the abort is not reported). */
  readonly signal: AbortSignal;
  /** The wait before attempt n + 1 after the n-th failure in a row (n = 1, 2, …), e.g. `(n) => backoffDelay(n, 200, 10_000)`. */
  readonly backoff: (attempt: number) => number;
  /** Called for every failed attempt before the backoff: log it here. Throwing ends the retries with that error. */
  readonly onError: (error: unknown, attempt: number, delayMs: number) => void | Promise<void>;
  /** Gives up after this many failures in a row, rejecting with the last error (default: never). */
  readonly maxAttempts?: number;
  /** Waits the backoff on this (so that it can be woken early); default {@link sleep}. */
  readonly wait?: (ms: number, signal: AbortSignal) => Promise<void>;
}

/**
 * Runs `fn` until it resolves (its value) or the signal aborts (undefined), backing off after each
 * failure. `attempt` counts failures in a row, from 1; it starts over with every call of `retry`.
 */
export async function retry<T>(fn: (attempt: number) => Promise<T>, opts: RetryOptions): Promise<T | undefined> {
  const { signal, backoff, onError, maxAttempts = Infinity, wait = sleep } = opts;
  for (let attempt = 1; !signal.aborted; attempt++) {
    try {
      return await fn(attempt);
    } catch (error) {
      if (signal.aborted) return undefined;
      if (attempt >= maxAttempts) throw error;
      const delay = backoff(attempt);
      await onError(error, attempt, delay);
      await wait(delay, signal);
    }
  }
  return undefined;
}

/**
 * A loop that runs from `start()` until `stop()`. Subclasses implement `run(signal)`, which must
 * return soon after `signal` aborts (wait only through {@link sleep}, {@link Wakeup} or `signal`),
 * and may override `onStop()` to wake anything else they wait on. A constructor starts nothing.
 */
export abstract class LongRunningService {
  readonly #abort = new AbortController();
  #done: Promise<void> | null = null;

  /** The loop's signal: aborted by `stop()`. */
  protected get signal(): AbortSignal {
    return this.#abort.signal;
  }

  /** True once `stop()` was called. */
  get stopping(): boolean {
    return this.#abort.signal.aborted;
  }

  /** Settles when the loop has ended (resolved at once when it was never started). */
  get done(): Promise<void> {
    return this.#done ?? Promise.resolve();
  }

  /** Starts the loop; a second call (or a call after stop) does nothing. */
  start(): this {
    if (this.#done || this.#abort.signal.aborted) return this;
    this.#done = this.run(this.#abort.signal);
    return this;
  }

  /**
   * Aborts the signal, calls `onStop()` and waits for the loop to end (rejecting when it failed).
   * With `timeoutMs`, waits at most that long; the loop then goes on ending in the background, and
   * `stop` resolves with false.
   */
  async stop(timeoutMs?: number): Promise<boolean> {
    if (!this.#abort.signal.aborted) {
      this.#abort.abort();
      this.onStop();
    }
    if (timeoutMs === undefined) {
      await this.done;
      return true;
    }
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), timeoutMs)));
    try {
      return await Promise.race([this.done.then(() => true as const), timedOut]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** The loop. Called once, by `start()`. */
  protected abstract run(signal: AbortSignal): Promise<void>;

  /** Wakes what `run` waits on besides the signal (a consumer, a replication stream). */
  protected onStop(): void {}
}

/** Something that can be released: a function, or an object with `close()`, `stop()` or `end()`. */
export type Releasable = (() => unknown) | { close(): unknown } | { stop(): unknown } | { end(): unknown };

/**
 * What a command, a process or the dev stack holds, released last-acquired first by `close()`
 * (like the Effect scope of src/app/roles.ts, for code outside Effect). A release that fails is
 * logged (when a logger is given) and the others still run; `close()` then rejects with the first error.
 */
export class Lifetime {
  readonly #releases: Array<() => unknown> = [];
  #closed: Promise<void> | null = null;

  constructor(readonly log?: Logger) {}

  /** Registers `resource` to be released when the lifetime closes; returns it. */
  use<T extends Releasable>(resource: T): T {
    this.defer(typeof resource === "function" ? resource : () => release(resource));
    return resource;
  }

  /** Registers a release function. */
  defer(release: () => unknown): void {
    if (this.#closed) throw new Error("the lifetime is already closed");
    this.#releases.push(release);
  }

  /** Releases everything, last first; a second call waits for the first. */
  close(): Promise<void> {
    this.#closed ??= this.#closeAll();
    return this.#closed;
  }

  async #closeAll(): Promise<void> {
    let first: { error: unknown } | null = null;
    while (this.#releases.length > 0) {
      const release = this.#releases.pop()!;
      try {
        await release();
      } catch (error) {
        // Release the rest anyway; the first failure is rethrown below.
        this.log?.warn({ err: error }, "releasing a resource failed");
        first ??= { error };
      }
    }
    if (first) throw first.error;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

function release(resource: Exclude<Releasable, () => unknown>): unknown {
  if ("close" in resource) return resource.close();
  if ("stop" in resource) return resource.stop();
  return resource.end();
}
