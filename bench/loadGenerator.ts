/**
 * The bench's load generator, in a process of its own (forked by bench/bench.ts with an IPC
 * channel): it offers the scenario's events to the sources (ERP and shop inserts, POS and
 * reservations over HTTP, commands on JetStream for catalog-1m) every 100 ms, and times each
 * reservation's round trip. Sharing the event loop with the Tally roles it measures, its own work
 * (and theirs) would show up in the figures of both; here its CPU is counted apart, and a tick it
 * could not keep (the generator, not Tally, was the limit) is counted too.
 *
 * Protocol (process messages): the parent sends `{ kind: "start", config }`; the generator answers
 * `{ kind: "ready" }` once connected, waits for `{ kind: "go", started }`, sends `{ kind: "progress" }`
 * once a second, `{ kind: "done", result }` once the load's requests have all settled, and exits on
 * `{ kind: "exit" }` (or when the parent goes away).
 */
import { fork, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { jetstream, type JetStreamClient } from "@nats-io/jetstream";
import { Agent, request } from "undici";
import { decodeCommand, type Command } from "../src/contract/index.ts";
import { simItem, storeIds, Zipf } from "../cdc/demo/index.ts";
import { connectPostgres, type Sql } from "../src/platform/index.ts";
import { connectNats, publishCommands, topology, type Topology } from "../src/wire/index.ts";
import type { OrderEvent } from "./polling.ts";

type Scenario = "steady" | "flash-sale" | "catalog-1m";

/** What the generator is asked to offer, and where. */
export interface GeneratorConfig {
  readonly scenario: Scenario;
  readonly rate: number;
  readonly reservationRate: number;
  readonly durationS: number;
  readonly skus: number;
  /** SKUs the load draws from (0: catalog-1m's direct receipts, or the flash sale's hot ones). */
  readonly catalog: number;
  readonly stores: number;
  readonly hot: number;
  readonly env: string;
  readonly partitions: number;
  readonly api: string;
  readonly token: string;
  readonly connections: number;
  readonly erpUrl: string;
  readonly shopUrl: string;
  readonly natsUrl: string;
}

/** What the generator offered and measured. */
export interface GeneratorResult {
  readonly expected: { erp: number; pos: number; shop: number; api: number; bench: number };
  /** Commands offered per epoch second. */
  readonly offeredPerSecond: Array<[number, number]>;
  /** Round trips of the holds that reached the actors (shed ones are only counted, as `shed` in the outcomes). */
  readonly reservationRtt: Array<number>;
  readonly reservationOutcomes: Record<string, number>;
  readonly orders: Array<OrderEvent>;
  readonly failures: number;
  /** POS posts sent again after a 5xx answer (each resent as it was; idempotent by transaction id). */
  readonly posResends: number;
  readonly failureMessages: Array<string>;
  /** When the offering loop ended, and when the last of its requests settled (epoch ms). */
  readonly loopEnded: number;
  readonly loadEnded: number;
  /** Events asked for by --rate over the loop's window, and those offered. */
  readonly askedEvents: number;
  readonly offeredEvents: number;
  readonly ticks: number;
  /** Ticks that started more than a tick late (the generator's loop could not keep its cadence). */
  readonly lateTicks: number;
  /** The worst lateness of a tick (ms). */
  readonly maxTickLagMs: number;
  /**
   * How long each source took to accept the load's writes (ms): the ERP's and the shop's insert
   * statements to their commit, POS requests to Tally's 202. An event's source time is stamped when
   * its statement starts, so time spent here (lock waits in the source's own triggers, say) counts
   * in source → availability before Tally has seen anything.
   */
  readonly sourceWriteMs: Record<string, { samples: number; p50: number | null; p99: number | null; max: number | null }>;
}

export type ToGenerator = { kind: "start"; config: GeneratorConfig } | { kind: "go"; started: number } | { kind: "exit" };
export type FromGenerator =
  | { kind: "ready" }
  | { kind: "progress"; offered: number; inflight: number }
  | { kind: "done"; result: GeneratorResult }
  | { kind: "error"; message: string };

const TICK_MS = 100;
/** Times a POS post is sent in all before its failure counts (a 5xx answer is resent as it was). */
const POS_ATTEMPTS = 5;
const randInt = (lo: number, hi: number) => lo + Math.floor(Math.random() * (hi - lo + 1));
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** One tick's events, owed to --rate. */
interface TickEvents {
  readonly receipts: Array<{ item: string; location: string; qty: number }>;
  readonly pos: Array<Record<string, unknown>>;
  readonly carts: Array<Array<{ shopSku: string; sku: string; qty: number }>>;
  readonly direct: Array<Command>;
}

class Generator {
  readonly zipf: Zipf;
  readonly runId = Math.random().toString(36).slice(2, 8);
  readonly stores: ReturnType<typeof storeIds>;
  readonly t: Topology;
  readonly http: Agent;
  seq = 0;
  failures = 0;
  /** POS posts sent again after a 5xx. */
  posResends = 0;
  readonly failureMessages: Array<string> = [];
  readonly expected = { erp: 0, pos: 0, shop: 0, api: 0, bench: 0 };
  readonly offeredPerSecond = new Map<number, number>();
  readonly reservationRtt: Array<number> = [];
  readonly reservationOutcomes: Record<string, number> = {};
  readonly orders: Array<OrderEvent> = [];
  readonly pending: Array<{ orderId: string; lines: number; due: number }> = [];
  readonly inflight = new Set<Promise<unknown>>();
  readonly writeMs = new Map<string, Array<number>>();
  owed = 0;
  resOwed = 0;
  offeredEvents = 0;

  constructor(
    readonly c: GeneratorConfig,
    readonly erp: Sql,
    readonly shop: Sql,
    readonly js: JetStreamClient | null,
  ) {
    this.zipf = new Zipf(c.scenario === "flash-sale" ? c.hot : Math.max(1, c.catalog || c.skus));
    this.stores = storeIds(c.stores);
    this.t = topology(c.env, c.partitions);
    // A bounded set of keep-alive connections: opening one per request would overflow the listen
    // queue and time the kernel's SYN retries (1, 3, 7, … s), not Tally.
    this.http = new Agent({ connections: c.connections, keepAliveTimeout: 30_000 });
  }

  /** The load: every 100 ms, the events owed to --rate and the reservations owed to --reservation-rate, for --duration seconds. */
  async run(started: number, onSecond: () => void): Promise<{ loopEnded: number; ticks: number; lateTicks: number; maxTickLagMs: number }> {
    const until = started + this.c.durationS * 1000;
    let ticks = 0;
    let lateTicks = 0;
    let maxTickLagMs = 0;
    let lastSecond = 0;
    // Ticks are due on a fixed schedule: the events owed are those of the elapsed ticks, so a late tick
    // offers what it owes (a burst) rather than silently lowering the rate, and its lateness is counted.
    for (let due = started; Date.now() < until; due += TICK_MS) {
      const tick = Date.now();
      const lag = tick - due;
      if (lag > TICK_MS) lateTicks++;
      maxTickLagMs = Math.max(maxTickLagMs, lag);
      ticks++;
      const sec = Math.floor(tick / 1000);
      let offered = this.offerEvents(this.tickEvents());
      offered += this.settleDueOrders(tick);
      // Reservations over HTTP, each timed (a checkout's hold).
      if (this.c.scenario !== "catalog-1m") offered += this.offerReservations();
      this.offeredPerSecond.set(sec, (this.offeredPerSecond.get(sec) ?? 0) + offered);
      if (tick - lastSecond >= 1000) {
        lastSecond = tick;
        onSecond();
      }
      await sleep(Math.max(0, due + TICK_MS - Date.now()));
    }
    return { loopEnded: Date.now(), ticks, lateTicks, maxTickLagMs };
  }

  /** `p`, its time to settle (successfully) recorded under `what`. */
  timed<T>(what: string, p: Promise<T>): Promise<T> {
    const t0 = performance.now();
    return p.then((v) => {
      let list = this.writeMs.get(what);
      if (!list) this.writeMs.set(what, (list = []));
      list.push(performance.now() - t0);
      return v;
    });
  }

  /** Percentiles of the recorded write times, per source. */
  writeFigures(): GeneratorResult["sourceWriteMs"] {
    const pct = (s: Array<number>, q: number) => (s.length === 0 ? null : Math.round(s[Math.min(s.length - 1, Math.floor(q * s.length))]! * 10) / 10);
    return Object.fromEntries(
      [...this.writeMs].map(([what, xs]) => {
        const s = [...xs].sort((a, b) => a - b);
        return [what, { samples: s.length, p50: pct(s, 0.5), p99: pct(s, 0.99), max: pct(s, 1) }];
      }),
    );
  }

  /** A request of the load, counted as a failure if it fails, awaited at the end of the load. */
  track(p: Promise<unknown>): void {
    const q = p
      .catch((err: unknown) => {
        this.failures++;
        if (this.failureMessages.length < 5) this.failureMessages.push(err instanceof Error ? err.message : String(err));
      })
      .finally(() => this.inflight.delete(q));
    this.inflight.add(q);
  }

  /** This tick's events, by scenario: receipts in the ERP, POS transactions, web orders in the shop (catalog-1m: receive commands). */
  tickEvents(): TickEvents {
    const { c, zipf, stores } = this;
    this.owed += c.rate / 10;
    const events = Math.floor(this.owed);
    this.owed -= events;
    this.offeredEvents += events;
    const out: TickEvents = { receipts: [], pos: [], carts: [], direct: [] };
    for (let e = 0; e < events; e++) {
      if (c.scenario === "catalog-1m") {
        const i = Math.floor(Math.random() * c.skus);
        const d = decodeCommand({
          id: `b:${this.runId}:${++this.seq}`,
          type: "receive",
          sku: `M-${i}`,
          location: "DC1",
          qty: 1,
          source: { system: "bench", ref: String(this.seq) },
          occurredAt: new Date().toISOString(),
        });
        if (d._tag === "Right") out.direct.push(d.right);
        continue;
      }
      const r = Math.random();
      if (c.scenario === "flash-sale" ? r < 0.9 : r < 0.3) {
        const item = simItem(zipf.sample());
        out.carts.push([{ shopSku: item.shopSku, sku: item.sku, qty: 1 }]);
      } else if (c.scenario === "flash-sale" || r < 0.75) {
        const store = stores[randInt(0, stores.length - 1)]!;
        const lines = Array.from({ length: randInt(1, 3) }, () => ({ type: "sale", barcode: simItem(zipf.sample()).barcode, qty: 1 }));
        out.pos.push({ store, terminal: `T${randInt(1, 8)}`, id: `b-${this.runId}-${++this.seq}`, occurredAt: new Date().toISOString(), lines });
      } else {
        out.receipts.push({
          item: simItem(zipf.sample()).itemNo,
          location: Math.random() < 0.3 ? "DC1" : stores[randInt(0, stores.length - 1)]!,
          qty: randInt(5, 40),
        });
      }
    }
    return out;
  }

  /** This tick's events offered to their sources; returns the commands they make. */
  offerEvents({ receipts, pos, carts, direct }: TickEvents): number {
    const { erp } = this;
    let offered = 0;
    if (direct.length > 0 && this.js) {
      this.expected.bench += direct.length;
      offered += direct.length;
      this.track(publishCommands(this.js, this.t, direct));
    }
    if (receipts.length > 0) {
      offered += receipts.length;
      // Expected once the ERP committed them: a failed insert (a deadlock with the price probe's
      // transactions, say) is no receipt, and no command to wait for.
      this.track(
        this.timed(
          "erp",
          erp`insert into goods_receipts (item_no, location, qty, uom)
                  select i, l, q, 'EA' from unnest(${erp.array(receipts.map((x) => x.item))}::text[], ${erp.array(receipts.map((x) => x.location))}::text[],
                                                   ${erp.array(receipts.map((x) => x.qty))}::int[]) as t(i, l, q)`,
        ).then(() => {
          this.expected.erp += receipts.length;
        }),
      );
    }
    if (pos.length > 0) offered += this.offerPos(pos);
    if (carts.length > 0) offered += this.placeOrders(carts);
    return offered;
  }

  /**
   * POS transactions over HTTP; their lines count as expected once accepted. A sale already happened:
   * a post answered 5xx (overloaded, or its publish not confirmed in time, which may still have gone
   * through) is sent again as it was, as a terminal resends its queue, and the transactions' ids make
   * the resend idempotent. Counted as an expected load only once accepted.
   */
  offerPos(pos: TickEvents["pos"]): number {
    const lines = pos.reduce((n, x) => n + (x.lines as Array<unknown>).length, 0);
    const body = JSON.stringify({ transactions: pos });
    const post = async (attempt: number): Promise<void> => {
      const res = await this.timed(
        "pos",
        request(`${this.c.api}/v1/pos/transactions`, {
          dispatcher: this.http,
          method: "POST",
          headers: { "content-type": "application/json", authorization: `Bearer ${this.c.token}` },
          body,
        }),
      );
      await res.body.dump();
      if (res.statusCode >= 500 && attempt < POS_ATTEMPTS) {
        this.posResends++;
        const after = Number(res.headers["retry-after"]);
        await sleep(Number.isFinite(after) && after > 0 ? after * 1000 : 500);
        return post(attempt + 1);
      }
      if (res.statusCode >= 300) throw new Error(`POS ${res.statusCode}`);
      this.expected.pos += lines; // accepted: its lines will be decided
    };
    this.track(post(1));
    return lines;
  }

  /** Web orders placed in the shop (captured by CDC), each due to ship or be cancelled in 1–4 s. */
  placeOrders(carts: TickEvents["carts"]): number {
    const placed = carts.map((cart) => ({ orderId: `B-${this.runId}-${++this.seq}`, cart }));
    const lines = carts.reduce((n, c) => n + c.length, 0);
    this.expected.shop += lines;
    const now = Date.now();
    for (const p of placed) {
      for (const l of p.cart) this.orders.push({ at: now, sku: l.sku, qty: l.qty });
      this.pending.push({ orderId: p.orderId, lines: p.cart.length, due: now + randInt(1000, 4000) });
    }
    this.track(
      this.timed(
        "shop",
        this.shop.begin(async (tx) => {
          await tx`insert into orders (order_id, channel) select unnest(${tx.array(placed.map((p) => p.orderId))}::text[]), 'web'`;
          const rows = placed.flatMap((p) => p.cart.map((l, i) => ({ o: p.orderId, n: i + 1, s: l.shopSku, q: l.qty })));
          await tx`insert into order_lines (order_id, line_no, shop_sku, location, qty)
                     select o, n, s, 'DC1', q from unnest(${tx.array(rows.map((r) => r.o))}::text[], ${tx.array(rows.map((r) => r.n))}::int[],
                                                          ${tx.array(rows.map((r) => r.s))}::text[], ${tx.array(rows.map((r) => r.q))}::int[]) as t(o, n, s, q)`;
        }),
      ),
    );
    return lines;
  }

  /** Orders placed a few seconds ago ship (80%) or are cancelled; returns the commands that makes. */
  settleDueOrders(tick: number): number {
    const { shop } = this;
    const due = this.pending.filter((p) => p.due <= tick);
    if (due.length === 0) return 0;
    this.pending.splice(0, this.pending.length, ...this.pending.filter((p) => p.due > tick));
    const ship = due.filter(() => Math.random() < 0.8);
    const cancel = due.filter((p) => !ship.includes(p));
    // Only a placed line whose reserve was applied moves stock; the mapping emits fulfill/release for every placed line either way.
    const lines = due.reduce((n, p) => n + p.lines, 0);
    this.expected.shop += lines;
    if (ship.length > 0)
      this.track(
        shop`update order_lines set status = 'shipped' where order_id = any(${shop.array(ship.map((p) => p.orderId))}::text[]) and status = 'placed'`,
      );
    if (cancel.length > 0)
      this.track(
        shop`update order_lines set status = 'cancelled' where order_id = any(${shop.array(cancel.map((p) => p.orderId))}::text[]) and status = 'placed'`,
      );
    return lines;
  }

  /** This tick's reservations owed to --reservation-rate; returns how many. */
  offerReservations(): number {
    this.resOwed += this.c.reservationRate / 10;
    const n = Math.floor(this.resOwed);
    this.resOwed -= n;
    for (let k = 0; k < n; k++) {
      const sku = simItem(this.zipf.sample()).sku;
      const key = `bench-${this.runId}-${++this.seq}`;
      // Checkouts arrive spread over the tick, not as one burst every 100 ms (which would time
      // the queue the burst itself makes).
      this.track(sleep((TICK_MS * k) / n).then(() => this.reserve(sku, key)));
    }
    return n;
  }

  /** One checkout's hold over HTTP, timed. */
  reserve(sku: string, key: string): Promise<void> {
    const t0 = performance.now();
    return request(`${this.c.api}/v1/reservations`, {
      dispatcher: this.http,
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${this.c.token}`, "idempotency-key": key },
      body: JSON.stringify({ sku, qty: 1, location: "DC1", ttlSeconds: 3600 }),
    }).then(async (res) => {
      const status = res.statusCode;
      // A 503's problem code tells a hold shed under overload (nothing published) from one left undecided.
      let code: string | undefined;
      if (status === 503) code = ((await res.body.json().catch(() => null)) as { code?: string } | null)?.code;
      else await res.body.dump();
      const shed = code === "overloaded";
      // Shed holds are counted apart (`shed`), not as errors, and kept out of the round trip: they never reached the actors.
      if (!shed) this.reservationRtt.push(performance.now() - t0);
      const outcome = status === 201 ? "held" : status === 409 ? "insufficient_stock" : shed ? "shed" : `http_${status}`;
      // Its reserve command was published (and will be decided) unless the request failed or was shed before.
      if (status === 201 || status === 409 || (status === 503 && !shed)) this.expected.api++;
      this.reservationOutcomes[outcome] = (this.reservationOutcomes[outcome] ?? 0) + 1;
    });
  }
}

/** The child's side: connect, offer the load when told, report, exit when told. */
async function child(): Promise<void> {
  const send = (m: FromGenerator) => process.send?.(m);
  const message = <K extends ToGenerator["kind"]>(kind: K) =>
    new Promise<Extract<ToGenerator, { kind: K }>>((resolve) => {
      const on = (m: ToGenerator) => {
        if (m.kind !== kind) return;
        process.off("message", on);
        resolve(m as Extract<ToGenerator, { kind: K }>);
      };
      process.on("message", on);
    });
  // The parent gone (killed, crashed): nothing left to measure for.
  process.on("disconnect", () => process.exit(0));
  const { config } = await message("start");
  const erp = connectPostgres(config.erpUrl, { max: 4, application: "bench-load" });
  const shop = connectPostgres(config.shopUrl, { max: 4, application: "bench-load" });
  // postgres.js learns the server's array types on its first query: one now, so the load's first
  // concurrent inserts (arrays of items) cannot go out before it knows them ("malformed array literal").
  await Promise.all([erp`select 1`, shop`select 1`]);
  const nc = config.scenario === "catalog-1m" ? await connectNats(config.natsUrl, "bench-load") : null;
  const g = new Generator(config, erp, shop, nc ? jetstream(nc) : null);
  send({ kind: "ready" });
  const { started } = await message("go");
  const loop = await g.run(started, () => {
    const offered = Object.values(g.expected).reduce((a, b) => a + b, 0);
    send({ kind: "progress", offered, inflight: g.inflight.size });
  });
  await Promise.allSettled([...g.inflight]);
  const result: GeneratorResult = {
    expected: g.expected,
    offeredPerSecond: [...g.offeredPerSecond],
    reservationRtt: g.reservationRtt,
    reservationOutcomes: g.reservationOutcomes,
    orders: g.orders,
    failures: g.failures,
    posResends: g.posResends,
    failureMessages: g.failureMessages,
    loopEnded: loop.loopEnded,
    loadEnded: Date.now(),
    askedEvents: Math.round((config.rate * (loop.loopEnded - started)) / 1000),
    offeredEvents: g.offeredEvents,
    ticks: loop.ticks,
    lateTicks: loop.lateTicks,
    maxTickLagMs: loop.maxTickLagMs,
    sourceWriteMs: g.writeFigures(),
  };
  // Idle from here (its CPU is read at the end of the drain): the connections closed now.
  await g.http.close().catch(() => {});
  await Promise.allSettled([erp.end(), shop.end(), nc?.close()]);
  send({ kind: "done", result });
  await message("exit");
  process.exit(0);
}

if (process.send && process.argv.includes("--bench-load-generator")) {
  child().catch((e: unknown) => {
    process.send?.({ kind: "error", message: e instanceof Error ? (e.stack ?? e.message) : String(e) } satisfies FromGenerator);
    process.exit(1);
  });
}

/** The parent's handle on a forked generator. */
export interface GeneratorProcess {
  readonly pid: number;
  /** The latest progress report: commands offered (and accepted) so far, requests in flight. */
  readonly progress: { offered: number; inflight: number };
  /** Resolves once the generator is connected and waits for `go`. */
  readonly ready: Promise<void>;
  /** Resolves with the result once the load's requests have all settled. */
  readonly done: Promise<GeneratorResult>;
  /** Starts the load; its window starts at `started` (epoch ms). */
  go(started: number): void;
  /** Ends the (idle) generator process. */
  exit(): Promise<void>;
}

/** Forks the generator (this module, in a process of its own) with `config`. */
export function forkGenerator(config: GeneratorConfig): GeneratorProcess {
  const proc: ChildProcess = fork(fileURLToPath(import.meta.url), ["--bench-load-generator"], { stdio: ["ignore", "inherit", "inherit", "ipc"] });
  const progress = { offered: 0, inflight: 0 };
  let onReady!: () => void;
  let onDone!: (r: GeneratorResult) => void;
  let onFail!: (e: Error) => void;
  const ready = new Promise<void>((resolve, reject) => {
    onReady = resolve;
    onFail = reject;
  });
  const done = new Promise<GeneratorResult>((resolve, reject) => {
    onDone = resolve;
    const fail = onFail;
    onFail = (e) => {
      fail(e);
      reject(e);
    };
  });
  // Whoever awaits them sees the failure; unawaited, it must not end the bench by itself.
  ready.catch(() => {});
  done.catch(() => {});
  proc.on("message", (m: FromGenerator) => {
    if (m.kind === "ready") onReady();
    else if (m.kind === "progress") Object.assign(progress, { offered: m.offered, inflight: m.inflight });
    else if (m.kind === "done") onDone(m.result);
    else if (m.kind === "error") onFail(new Error(`load generator: ${m.message}`));
  });
  proc.on("exit", (code) => onFail(new Error(`load generator exited (code ${code})`)));
  proc.send({ kind: "start", config } satisfies ToGenerator);
  return {
    pid: proc.pid!,
    progress,
    ready,
    done,
    go: (started) => proc.send({ kind: "go", started } satisfies ToGenerator),
    exit: () =>
      new Promise<void>((resolve) => {
        if (proc.exitCode !== null || proc.signalCode !== null) return resolve();
        proc.once("exit", () => resolve());
        if (proc.connected) proc.send({ kind: "exit" } satisfies ToGenerator);
        else proc.kill("SIGTERM");
      }),
  };
}
