/**
 * How many of a worker's partitions decide at the same time (a permit is given back when the batch
 * is handed to the worker's group commit, so the next batches are planned while Postgres commits). A process holding many
 * partitions on a small machine otherwise commits many small batches at once: each one is a
 * Postgres statement and a context switch, and they all queue for the same cores. Behind the gate
 * a partition's messages keep arriving, so its next batch is larger and the ledger sees fewer,
 * larger commits. Permits are granted in arrival order, so no partition starves.
 */
export class ApplyGate {
  #inUse = 0;
  readonly #waiting: Array<() => void> = [];
  /** The most permits ever held at once. */
  maxInUse = 0;

  constructor(readonly permits: number) {
    if (!Number.isInteger(permits) || permits < 1) throw new RangeError(`apply concurrency must be a whole number ≥ 1, got ${permits}`);
  }

  /**
   * Waits for a permit; the returned function gives it back (once). Resolves to null, holding
   * nothing, if `signal` aborts first (a partition that stops does not wait for the others' batches).
   */
  async acquire(signal?: AbortSignal): Promise<(() => void) | null> {
    if (signal?.aborted) return null;
    if (this.#inUse < this.permits) this.#inUse++;
    else {
      const granted = await new Promise<boolean>((resolve) => {
        const grant = () => {
          signal?.removeEventListener("abort", abort);
          resolve(true);
        };
        const abort = () => {
          const at = this.#waiting.indexOf(grant);
          if (at >= 0) this.#waiting.splice(at, 1);
          resolve(false);
        };
        this.#waiting.push(grant); // handed over with its permit counted
        signal?.addEventListener("abort", abort, { once: true });
      });
      if (!granted) return null;
    }
    this.maxInUse = Math.max(this.maxInUse, this.#inUse);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.#waiting.shift();
      if (next) next();
      else this.#inUse--;
    };
  }
}
