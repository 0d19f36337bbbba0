import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import type { Sql } from "postgres";
import { Schema } from "effect";

/** A worker's decision on one command, as in `command_outcomes`. */
const Outcome = Schema.Struct({
  id: Schema.String.annotations({ description: "the command id" }),
  status: Schema.Literal("applied", "rejected"),
  reason: Schema.NullOr(Schema.String),
  detail: Schema.Unknown.annotations({ description: "applied: {legs} or null; rejected: the rejection ({reason, message, …})" }),
});
export type Outcome = typeof Outcome.Type;

/** What a worker publishes on `tally.<env>.outcomes` after each committed batch (core NATS, best effort). */
export const OutcomeBatch = Schema.Struct({
  partition: Schema.Int,
  part: Schema.Int.annotations({
    description: "0 for the first chunk of a batch (at most 1,000 outcomes a message): batch size and latency are observed once",
  }),
  size: Schema.Int,
  applyMs: Schema.Number,
  outcomes: Schema.Array(
    Schema.Struct({
      ...Outcome.fields,
      type: Schema.String.annotations({ description: "the command type" }),
      sku: Schema.String,
      source: Schema.optional(Schema.String.annotations({ description: "the source system" })),
    }),
  ),
}).annotations({ title: "Outcome batch", description: "A worker's decisions on one committed batch" });
export type OutcomeBatch = typeof OutcomeBatch.Type;

export { outcomesSubject } from "./topology.ts";
import { outcomesSubject } from "./topology.ts";

interface Waiting {
  readonly ids: Set<string>;
  readonly found: Map<string, Outcome>;
  resolve(): void;
}

/** Outcomes normally come by NATS within this; ids still waiting after it are looked up in the database. */
const GRACE_MS = 300;
/** How often the database is asked, in one statement, for every id past its grace. */
const POLL_MS = 250;
/** Most ids per lookup statement. */
const POLL_CHUNK = 5000;

/**
 * Waits for the outcomes of commands this process published: from the workers' core-NATS outcome
 * messages when they arrive, else from `command_outcomes`, which is the truth. One poller looks up
 * every id still waiting past a short grace in a single statement per round, so a backlog of
 * waiting requests costs the database one query per round, not one per request.
 * Register (call `wait`) before publishing, so an outcome cannot slip past.
 */
export class OutcomeWaiter {
  readonly #waiting = new Map<string, Set<Waiting>>();
  /** When each waited-for id was first registered. */
  readonly #since = new Map<string, number>();
  #sub: Subscription | null = null;
  #poller: NodeJS.Timeout | null = null;
  #polling = false;

  constructor(
    readonly sql: Sql,
    readonly nc: NatsConnection,
    readonly env: string,
    readonly onBatch: (batch: OutcomeBatch) => void = () => {},
  ) {}

  start(): void {
    this.#sub = this.nc.subscribe(outcomesSubject(this.env), {
      callback: (err, msg) => {
        if (err) return;
        let batch: OutcomeBatch;
        try {
          batch = msg.json<OutcomeBatch>();
        } catch {
          return; // parse fallback: not an outcome batch; the database poll is the truth
        }
        if (!Array.isArray(batch?.outcomes)) return;
        this.onBatch(batch);
        if (this.#waiting.size === 0) return;
        for (const o of batch.outcomes) this.#settle(o);
      },
    });
    this.#poller = setInterval(() => void this.#poll(), POLL_MS);
  }

  async stop(): Promise<void> {
    this.#sub?.unsubscribe();
    this.#sub = null;
    if (this.#poller) clearInterval(this.#poller);
    this.#poller = null;
    for (const set of this.#waiting.values()) for (const w of set) w.resolve();
    this.#waiting.clear();
    this.#since.clear();
  }

  #settle(o: Outcome): void {
    const set = this.#waiting.get(o.id);
    if (!set) return;
    for (const w of set) {
      if (!w.found.has(o.id)) w.found.set(o.id, { id: o.id, status: o.status, reason: o.reason, detail: o.detail });
      if (w.found.size === w.ids.size) w.resolve();
    }
  }

  /** One round of the fallback: every id waiting past its grace, looked up together. */
  async #poll(): Promise<void> {
    if (this.#polling || this.#since.size === 0) return;
    this.#polling = true;
    try {
      const before = Date.now() - GRACE_MS;
      const due = [...this.#since].filter(([, at]) => at <= before).map(([id]) => id);
      for (let i = 0; i < due.length; i += POLL_CHUNK) {
        for (const o of await this.#lookup(due.slice(i, i + POLL_CHUNK))) this.#settle(o);
      }
    } catch {
      // The database is unavailable: the next round asks again; waiters time out meanwhile.
    } finally {
      this.#polling = false;
    }
  }

  /** The recorded outcomes of `ids`, from `command_outcomes`. */
  #lookup(ids: ReadonlyArray<string>): Promise<Array<Outcome>> {
    return this.sql<Array<Outcome>>`
      select command_id as id, status, reason, detail from command_outcomes where command_id = any(${this.sql.array([...ids])}::text[])`;
  }

  /**
   * Starts waiting for `ids`; the returned promise resolves with every outcome known by `timeoutMs`
   * (fewer than asked when it timed out).
   */
  wait(ids: ReadonlyArray<string>, timeoutMs: number): { readonly done: Promise<Map<string, Outcome>>; cancel(): void } {
    const found = new Map<string, Outcome>();
    let resolve!: () => void;
    const settled = new Promise<void>((r) => (resolve = r));
    const w: Waiting = { ids: new Set(ids), found, resolve };
    const now = Date.now();
    for (const id of w.ids) {
      let set = this.#waiting.get(id);
      if (!set) this.#waiting.set(id, (set = new Set()));
      set.add(w);
      if (!this.#since.has(id)) this.#since.set(id, now);
    }
    const cleanup = () => {
      for (const id of w.ids) {
        const set = this.#waiting.get(id);
        set?.delete(w);
        if (set?.size === 0) {
          this.#waiting.delete(id);
          this.#since.delete(id);
        }
      }
    };
    let cancelled = false;
    const done = (async () => {
      if (w.ids.size === 0) return found;
      let timer: NodeJS.Timeout | undefined;
      const expired = new Promise<void>((r) => (timer = setTimeout(r, Math.max(0, timeoutMs))));
      await Promise.race([settled, expired]);
      clearTimeout(timer);
      // Timed out (not cancelled): one last look at the truth before answering without it.
      if (!cancelled && found.size < w.ids.size) {
        // Database unavailable: answered with what was found (the waiter's timeout result).
        for (const o of await this.#lookup([...w.ids].filter((id) => !found.has(id))).catch(() => [])) this.#settle(o);
      }
      cleanup();
      return found;
    })();
    return {
      done,
      cancel: () => {
        cancelled = true;
        resolve();
      },
    };
  }

  /** The known outcomes of `ids`, from the database only. */
  async known(ids: ReadonlyArray<string>): Promise<Map<string, Outcome>> {
    const out = new Map<string, Outcome>();
    if (ids.length === 0) return out;
    for (const o of await this.#lookup(ids)) out.set(o.id, o);
    return out;
  }
}
