import type { Logger } from "pino";
import { LongRunningService, sleep } from "../platform/index.ts";
import type { Reservations } from "./service.ts";

/**
 * Releases holds whose time has passed and finishes reservations a dead process left pending, one
 * sweep every `intervalMs`. Safe to run in every API process: expiry release ids are deterministic.
 */
export class ReservationSweeper extends LongRunningService {
  constructor(readonly opts: { readonly reservations: Reservations; readonly intervalMs: number; readonly log: Logger }) {
    super(); // nothing starts here
  }

  protected async run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      try {
        await this.opts.reservations.sweep(signal);
      } catch (err) {
        // The next sweep tries again: a sweep only moves rows that are due, so nothing is lost by waiting.
        this.opts.log.warn({ err }, "reservation sweep failed; retrying");
      }
      await sleep(this.opts.intervalMs, signal);
    }
  }
}
