/**
 * Long synchronous work on one request (decoding a batch of thousands of POS lines) must not hold the
 * event loop: timers (lease renewals of a worker in the same process) and other requests wait behind it.
 * `pauser()` gives a function to await inside such a loop; it yields to the event loop (setImmediate)
 * once the work since the last yield has lasted `sliceMs`, and costs a clock read otherwise.
 */
export function pauser(sliceMs = 10): () => Promise<void> | undefined {
  let since = performance.now();
  return () => {
    if (performance.now() - since < sliceMs) return undefined;
    return new Promise<void>((resolve) =>
      setImmediate(() => {
        since = performance.now();
        resolve();
      }),
    );
  };
}
