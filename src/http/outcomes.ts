import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import type { Sql } from "postgres";

/** A worker's decision on one command, as in `command_outcomes`. */
export interface Outcome {
  readonly id: string;
  readonly status: "applied" | "rejected";
  readonly reason: string | null;
  readonly detail: unknown;
}

/** What a worker publishes on `tally.<env>.outcomes` after each committed batch (core NATS, best effort). */
export interface OutcomeBatch {
  readonly partition: number;
  /** 0 for the first chunk of a batch: batch size and latency are observed once. */
  readonly part: number;
  readonly size: number;
  readonly applyMs: number;
  readonly outcomes: ReadonlyArray<Outcome & { readonly type: string; readonly sku: string; readonly source?: string }>;
}

export const outcomesSubject = (env: string): string => `tally.${env}.outcomes`;

interface Waiting {
  readonly ids: Set<string>;
  readonly found: Map<string, Outcome>;
  resolve(): void;
}

/**
 * Waits for the outcomes of commands this process published: from the workers' core-NATS outcome
 * messages when they arrive, else from `command_outcomes` (polled with backoff), which is the truth.
 * Register (call `wait`) before publishing, so an outcome cannot slip past.
 */
export class OutcomeWaiter {
  readonly #waiting = new Map<string, Set<Waiting>>();
  #sub: Subscription | null = null;

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
          return;
        }
        if (!Array.isArray(batch?.outcomes)) return;
        this.onBatch(batch);
        if (this.#waiting.size === 0) return;
        for (const o of batch.outcomes) this.#settle(o);
      },
    });
  }

  async stop(): Promise<void> {
    this.#sub?.unsubscribe();
    this.#sub = null;
    for (const set of this.#waiting.values()) for (const w of set) w.resolve();
    this.#waiting.clear();
  }

  #settle(o: Outcome): void {
    const set = this.#waiting.get(o.id);
    if (!set) return;
    for (const w of set) {
      if (!w.found.has(o.id)) w.found.set(o.id, { id: o.id, status: o.status, reason: o.reason, detail: o.detail });
      if (w.found.size === w.ids.size) w.resolve();
    }
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
    for (const id of w.ids) {
      let set = this.#waiting.get(id);
      if (!set) this.#waiting.set(id, (set = new Set()));
      set.add(w);
    }
    const cleanup = () => {
      for (const id of w.ids) {
        const set = this.#waiting.get(id);
        set?.delete(w);
        if (set?.size === 0) this.#waiting.delete(id);
      }
    };
    const done = (async () => {
      if (w.ids.size === 0) return found;
      const deadline = Date.now() + timeoutMs;
      // The first look is delayed a little: most outcomes arrive by NATS well before it.
      let delay = 100;
      let stopped = false;
      void settled.then(() => (stopped = true));
      while (!stopped) {
        const wake = new Promise<void>((r) => setTimeout(r, Math.max(0, Math.min(delay, deadline - Date.now()))));
        await Promise.race([settled, wake]);
        if (stopped || found.size === w.ids.size) break;
        const missing = [...w.ids].filter((id) => !found.has(id));
        const rows = await this.sql<Array<{ command_id: string; status: "applied" | "rejected"; reason: string | null; detail: unknown }>>`
          select command_id, status, reason, detail from command_outcomes where command_id = any(${this.sql.array(missing)}::text[])`;
        for (const r of rows) this.#settle({ id: r.command_id, status: r.status, reason: r.reason, detail: r.detail });
        if (found.size === w.ids.size || Date.now() >= deadline) break;
        delay = Math.min(1000, delay * 2);
      }
      cleanup();
      return found;
    })();
    return {
      done,
      cancel: () => {
        resolve();
      },
    };
  }

  /** The known outcomes of `ids`, from the database only. */
  async known(ids: ReadonlyArray<string>): Promise<Map<string, Outcome>> {
    const out = new Map<string, Outcome>();
    if (ids.length === 0) return out;
    const rows = await this.sql<Array<{ command_id: string; status: "applied" | "rejected"; reason: string | null; detail: unknown }>>`
      select command_id, status, reason, detail from command_outcomes where command_id = any(${this.sql.array([...ids])}::text[])`;
    for (const r of rows) out.set(r.command_id, { id: r.command_id, status: r.status, reason: r.reason, detail: r.detail });
    return out;
  }
}
