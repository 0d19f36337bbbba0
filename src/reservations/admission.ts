/**
 * Hold admission control: when the apply path is behind, a new reservation is refused at once
 * (`overloaded`, 503 with Retry-After) instead of publishing a reserve command that would queue behind
 * the backlog and answer `decision_pending` only after the decision timeout — or, worse, be held later,
 * behind the channel's back, once the channel has given up on it.
 *
 * The signal is this process's own holds, per partition (the unit a worker applies in order): how
 * long they take from admission to the actors' decision. It is cheap (no request to NATS or Postgres:
 * the decisions arrive anyway) and honest (it is the very latency a checkout would wait, whatever
 * made it long: a backlog in the partition, a stopped or starved worker, Postgres, or this process's
 * own CPU). A partition's lag is the larger of
 * - the age of its oldest hold still undecided, watched past its request's timeout until its outcome
 *   is known: a worker that is stopped or stalled shows at once, though nothing comes back from it;
 * - how long the last decided hold took: a backlog that is still there keeps its holds shed.
 * Above the limit, new holds in the partition are shed, except that one is let through as a probe when
 * none is in flight there; the probe's decision is the next measurement (fast: the partition opens
 * again). So a partition that falls behind costs at most one slow answer at a time, and every other
 * hold gets a fast, clear one; nothing is written or published for a shed hold, and a retry with the
 * same Idempotency-Key is a new request.
 *
 * Why not the others: a JetStream consumer's pending count needs a request per partition per poll and
 * counts envelopes, not time (its threshold would depend on the drain rate); the count of holds in
 * flight depends on the arrival rate as much as on the latency (a burst at a healthy latency would be
 * shed).
 */

/** One partition's measurements. */
interface PartitionLag {
  /** Holds admitted and not yet decided: their admission time (insertion order: the oldest first). */
  readonly undecided: Map<Ticket, number>;
  /** How long the last decided hold took (ms), or 0 before any. */
  lastMs: number;
}

/** A hold admitted: settle it with its decision, or drop it when it never reached the actors. */
export interface Ticket {
  readonly partitions: ReadonlyArray<number>;
}

/** A refusal: the partition's lag and the limit it is over. */
export interface Shed {
  readonly lagMs: number;
  readonly limitMs: number;
  /** Whole seconds a client should wait before retrying (1–10). */
  readonly retryAfterSeconds: number;
}

export class HoldAdmission {
  readonly #parts = new Map<number, PartitionLag>();

  /**
   * `limitMs`: lag above which holds are shed; 0 admits every hold (shedding off). `expireMs`: a hold
   * undecided this long is no longer waited for (a call that never settled must not shed its
   * partition until a restart): it counts as decided this late, so the next hold goes as a probe.
   */
  constructor(
    readonly limitMs: number,
    readonly now: () => number = () => performance.now(),
    readonly expireMs = 300_000,
  ) {}

  #part(p: number): PartitionLag {
    let s = this.#parts.get(p);
    if (!s) this.#parts.set(p, (s = { undecided: new Map(), lastMs: 0 }));
    return s;
  }

  /** A partition's lag now (ms). */
  lagMs(partition: number): number {
    const s = this.#parts.get(partition);
    if (!s) return 0;
    const now = this.now();
    for (const [ticket, at] of s.undecided) {
      if (now - at < this.expireMs) break; // oldest first
      s.undecided.delete(ticket);
      s.lastMs = Math.max(s.lastMs, now - at);
    }
    const oldest = s.undecided.values().next();
    return Math.max(s.lastMs, oldest.done ? 0 : now - oldest.value);
  }

  /** The largest lag of any partition (ms): the gauge operators watch. */
  maxLagMs(): number {
    let max = 0;
    for (const p of this.#parts.keys()) max = Math.max(max, this.lagMs(p));
    return max;
  }

  /**
   * Admits a hold touching these partitions (a ticket), or sheds it: some partition's lag is over the
   * limit and a hold of this process is still undecided there (else this one goes as the probe).
   */
  admit(partitions: ReadonlyArray<number>): Ticket | Shed {
    const unique = [...new Set(partitions)];
    if (this.limitMs > 0) {
      let worst = 0;
      for (const p of unique) {
        const lag = this.lagMs(p);
        if (lag > this.limitMs && (this.#parts.get(p)?.undecided.size ?? 0) > 0) worst = Math.max(worst, lag);
      }
      if (worst > 0)
        return { lagMs: Math.round(worst), limitMs: this.limitMs, retryAfterSeconds: Math.min(10, Math.max(1, Math.ceil(worst / 1000))) };
    }
    const ticket: Ticket = { partitions: unique };
    const at = this.now();
    for (const p of unique) this.#part(p).undecided.set(ticket, at);
    return ticket;
  }

  /** The hold was decided (every line has its outcome): its latency is its partitions' last measurement. */
  decided(ticket: Ticket): void {
    const now = this.now();
    for (const p of ticket.partitions) {
      const s = this.#parts.get(p);
      const at = s?.undecided.get(ticket);
      if (s === undefined || at === undefined) continue;
      s.undecided.delete(ticket);
      s.lastMs = now - at;
    }
  }

  /** The hold never reached the actors (refused before publishing, a publish failed) or is no longer watched: no measurement. */
  drop(ticket: Ticket): void {
    for (const p of ticket.partitions) this.#parts.get(p)?.undecided.delete(ticket);
  }
}

export const isShed = (a: Ticket | Shed): a is Shed => "lagMs" in a;
