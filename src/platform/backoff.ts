/**
 * Exponential backoff with jitter: the `attempt`-th retry (1, 2, …) waits base·2^(attempt−1), capped
 * at `maxMs`, times a random factor in [0.5, 1.5) so that many clients do not retry in step.
 */
export const backoffDelay = (attempt: number, baseMs: number, maxMs: number): number =>
  Math.min(maxMs, baseMs * 2 ** Math.min(attempt - 1, 30)) * (0.5 + Math.random());
