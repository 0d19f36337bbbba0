/**
 * Write-back to a source's ERP: the ledger's on_hand legs that did not come from the source (POS
 * sales and returns, shop shipments, counts, adjustments, transfers), and the GL journal's lines,
 * sent into the ERP's inbound interface (cdc/writeBackSinks.ts) in entry order, so in order per SKU.
 *
 * It follows `ledger_entries` (and `gl_journals`) with the txid-horizon technique of the ledger
 * export: a window [horizon, upper) where `upper` is the xmin of a snapshot holds only final rows,
 * read a batch at a time in entry order; `writeback_positions` records the window and the last
 * entry sent in it, after the ERP has committed the batch. A crash between the two re-sends the
 * batch, which the ERP's (command_id, leg) key turns into nothing: exactly once.
 */
import type { Consumer, JetStreamClient, JetStreamManager, JsMsg } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import type { Logger } from "pino";
import type { ReservedSql } from "postgres";
import { LongRunningService, backoffDelay, retry, sleep, untilAborted, type Sql } from "../src/platform/index.ts";
import { deadLetter, publishDeadLetter, type Topology } from "../src/wire/index.ts";
import type { ResolvedSource } from "./sources.ts";
import { requisitionConsumer, requisitionRows } from "./writeBackRequisitions.ts";
import { type Batch, type JournalRow, type MovementRow, type Sink, erpItems, openSink, scaleDown } from "./writeBackSinks.ts";

/** The dead-letter origin of what the write-back could not send. */
export const WRITE_BACK_DEAD_LETTER_ORIGIN = "writeback";

export interface WriteBackOptions {
  readonly source: ResolvedSource;
  /** Tally's ledger database. */
  readonly sql: Sql;
  /** The company's currency (finance.currency): the currency of entry values. */
  readonly currency: string;
  readonly js: JetStreamClient;
  /** Reads replenishment requests (low_stock events) when the source's writeBack declares `requisitions`. */
  readonly jsm?: JetStreamManager;
  readonly nc?: NatsConnection;
  readonly topology: Topology;
  readonly log: Logger;
  /** Opens the sink (tests substitute one); default: the source's `writeBack`. */
  readonly openSink?: () => Sink;
}

export interface WriteBackMetrics {
  movements: number;
  requisitions: number;
  journalLines: number;
  failedAttempts: number;
  deadLettered: number;
  /** Seconds since the oldest movement not yet sent was recorded (0: none waiting). */
  lagSeconds: number;
  lastError: string | null;
}

interface Position {
  horizon: string | null;
  upper: string | null;
  after_entry: string;
  journal_horizon: string | null;
  journal_upper: string | null;
  journal_after: string;
}

interface EntryRow {
  entry_id: string;
  command_id: string;
  leg: number;
  sku: string;
  location: string;
  delta: string;
  movement: string;
  unit_cost: string | null;
  value: string | null;
  occurred_at: Date;
  source_system: string;
  source_ref: string;
}

/** Sends one source's movements and journal lines to its ERP, one writer per source (an advisory lock). */
export class WriteBack extends LongRunningService {
  readonly metrics: WriteBackMetrics = {
    movements: 0,
    requisitions: 0,
    journalLines: 0,
    failedAttempts: 0,
    deadLettered: 0,
    lagSeconds: 0,
    lastError: null,
  };
  #sink: Sink | null = null;

  constructor(readonly opts: WriteBackOptions) {
    super();
  }

  get name(): string {
    return this.opts.source.name;
  }

  protected async run(signal: AbortSignal): Promise<void> {
    const { log } = this.opts;
    while (!signal.aborted)
      await retry(() => this.#session(signal), {
        signal,
        backoff: (attempt) => backoffDelay(attempt, 500, 30_000),
        onError: (err, attempt, delayMs) => {
          this.metrics.lastError = String((err as Error).message ?? err);
          log.warn({ err, attempt, delayMs }, "write-back failed; retrying");
        },
      });
  }

  /**
   * Holds the source's write-back lock and sends until stopped. Every wait on something outside this
   * process that may never answer (the ERP, the lock's connection, NATS) ends when the signal aborts;
   * the `finally` then closes what the abandoned wait used.
   */
  async #session(signal: AbortSignal): Promise<void> {
    const { sql, source } = this.opts;
    const lock = await untilAborted(sql.reserve(), signal);
    try {
      const [{ got }] = await untilAborted(
        lock<[{ got: boolean }]>`select pg_try_advisory_lock(hashtext('tally_writeback'), hashtext(${source.name})) as got`,
        signal,
      );
      if (!got) {
        await sleep(source.writeBack!.intervalMs * 5, signal); // another process writes this source back
        return;
      }
      this.#sink = this.opts.openSink?.() ?? openSink(source, this.opts.log);
      await sql`insert into writeback_positions (source) values (${source.name}) on conflict do nothing`;
      const requests = await this.#requisitionConsumer();
      while (!signal.aborted) {
        // The lock lives as long as its connection: a lost connection ends the session (and the lock is taken again).
        await untilAborted(lock`select 1`, signal);
        await this.#refreshLag();
        const moved = await this.#movements(signal);
        const posted = source.writeBack!.journal !== undefined || source.writeBack!.http !== undefined ? await this.#journal(signal) : false;
        // Waiting for replenishment requests is the idle pause when they are read.
        const requested = requests ? await this.#requisitions(requests, signal) : false;
        if (!moved && !posted && !requested && !requests) await sleep(source.writeBack!.intervalMs, signal);
      }
    } finally {
      await this.#sink?.close().catch((err: unknown) => this.opts.log.debug({ err }, "write-back: sink did not close cleanly"));
      this.#sink = null;
      // Bounded: a query on a connection whose server went away is never answered (the lock then ends with the connection).
      await untilAborted(unlock(lock, source.name), AbortSignal.timeout(UNLOCK_TIMEOUT_MS)).catch((err: unknown) =>
        this.opts.log.debug({ err }, "write-back: unlock failed (the session ends anyway)"),
      );
    }
  }

  async #position(): Promise<Position> {
    const [p] = await this.opts.sql<[Position]>`
      select horizon::text, upper::text, after_entry::text, journal_horizon::text, journal_upper::text, journal_after
        from writeback_positions where source = ${this.opts.source.name}`;
    return p;
  }

  /** One batch of movements (or the close of the current window); true when rows were sent. */
  async #movements(signal: AbortSignal): Promise<boolean> {
    const { sql, source } = this.opts;
    const p = await this.#position();
    if (p.upper === null) {
      const [{ upper }] = await sql<[{ upper: string }]>`select pg_snapshot_xmin(pg_current_snapshot())::text as upper`;
      if (upper === p.horizon) return false;
      await sql`update writeback_positions set upper = ${upper}::xid8, after_entry = 0, updated_at = now() where source = ${source.name}`;
      p.upper = upper;
    }
    const rows = await sql<Array<EntryRow>>`
      select e.entry_id::text as entry_id, e.command_id, e.leg, e.sku, e.location, e.delta::text as delta, e.movement,
             e.unit_cost::text as unit_cost, e.value::text as value, e.occurred_at, e.source_system, e.source_ref
        from ledger_entries e
       where e.bucket = 'on_hand' and e.source_system <> ${source.name}
         and (e.txid < ${p.upper}::xid8 or (e.txid is null and ${p.horizon === null}))
         and (${p.horizon}::xid8 is null or e.txid >= ${p.horizon}::xid8)
         and e.entry_id > ${p.after_entry}::bigint
       order by e.entry_id -- the number, not the text of the output column
       limit ${source.writeBack!.batchSize}`;
    if (rows.length === 0) {
      await sql`
        update writeback_positions set horizon = upper, upper = null, after_entry = 0, updated_at = now() where source = ${source.name}`;
      return false;
    }
    const { send, dead } = await this.#translate(rows);
    if (send.length > 0 && (await this.#deliver({ kind: "movements", rows: send }, signal))) this.metrics.movements += send.length;
    for (const d of dead) await this.#deadLetter(d.reason, d.row, { command_id: d.row.command_id, leg: d.row.leg, sku: d.row.sku });
    await sql`
      update writeback_positions set after_entry = ${rows[rows.length - 1]!.entry_id}::bigint, updated_at = now() where source = ${source.name}`;
    return true;
  }

  /** Legs in the ERP's item and unit; a SKU without an ERP item, or a quantity not exact in its unit, is dead-lettered. */
  async #translate(rows: ReadonlyArray<EntryRow>): Promise<{ send: Array<MovementRow>; dead: Array<{ row: EntryRow; reason: string }> }> {
    const { sql, source, currency } = this.opts;
    const items = await erpItems(
      sql,
      source,
      rows.map((r) => r.sku),
    );
    const send: Array<MovementRow> = [];
    const dead: Array<{ row: EntryRow; reason: string }> = [];
    for (const r of rows) {
      const item = items.get(r.sku)!;
      if ("missing" in item) {
        dead.push({ row: r, reason: `write-back ${source.name}: ${item.missing}` });
        continue;
      }
      const qty = scaleDown(BigInt(r.delta), item.factor);
      if (qty === null) {
        dead.push({ row: r, reason: `write-back ${source.name}: ${r.delta} is not a whole number of ${item.uom} (× ${item.factor})` });
        continue;
      }
      send.push({
        command_id: r.command_id,
        leg: r.leg,
        item_no: item.itemNo,
        location: r.location,
        qty,
        uom: item.uom,
        movement: r.movement,
        unit_cost: r.unit_cost,
        value: r.value,
        currency: r.value === null && r.unit_cost === null ? null : currency,
        occurred_at: r.occurred_at.toISOString(),
        source_system: r.source_system,
        source_ref: r.source_ref,
      });
    }
    return { send, dead };
  }

  /** One batch of journals' lines (or the close of the current window); true when lines were sent. */
  async #journal(signal: AbortSignal): Promise<boolean> {
    const { sql, source } = this.opts;
    const p = await this.#position();
    if (p.journal_upper === null) {
      const [{ upper }] = await sql<[{ upper: string }]>`select pg_snapshot_xmin(pg_current_snapshot())::text as upper`;
      if (upper === p.journal_horizon) return false;
      await sql`update writeback_positions set journal_upper = ${upper}::xid8, journal_after = '', updated_at = now() where source = ${source.name}`;
      p.journal_upper = upper;
    }
    const journals = await sql<Array<{ journal_id: string }>>`
      select journal_id from gl_journals
       where source_system <> ${source.name} and txid < ${p.journal_upper}::xid8
         and (${p.journal_horizon}::xid8 is null or txid >= ${p.journal_horizon}::xid8)
         and journal_id > ${p.journal_after}
       order by journal_id
       limit ${source.writeBack!.batchSize}`;
    if (journals.length === 0) {
      await sql`
        update writeback_positions set journal_horizon = journal_upper, journal_upper = null, journal_after = '', updated_at = now()
         where source = ${source.name}`;
      return false;
    }
    const lines = await this.#journalLines(journals.map((j) => j.journal_id));
    if (await this.#deliver({ kind: "journal", rows: lines }, signal)) this.metrics.journalLines += lines.length;
    await sql`update writeback_positions set journal_after = ${journals[journals.length - 1]!.journal_id}, updated_at = now() where source = ${source.name}`;
    return true;
  }

  async #journalLines(ids: ReadonlyArray<string>): Promise<Array<JournalRow>> {
    const { sql, source } = this.opts;
    const rows = await sql<Array<Omit<JournalRow, "item_no">>>`
      select j.journal_id, l.line, l.account, l.cost_center, l.debit::text, l.credit::text, j.currency, j.posted_on::text,
             j.business_date::text, l.sku, l.qty::text, l.unit, j.command_id, j.movement
        from gl_journals j join gl_lines l on l.journal_id = j.journal_id
       where j.journal_id = any(${sql.array(ids as Array<string>)}::text[])
       order by j.journal_id, l.line`;
    const items = await erpItems(
      sql,
      source,
      rows.flatMap((r) => (r.sku === null ? [] : [r.sku])),
    );
    return rows.map((r) => {
      const item = r.sku === null ? undefined : items.get(r.sku);
      return { ...r, item_no: item && "itemNo" in item ? item.itemNo : null };
    });
  }

  /** The durable consumer of replenishment requests, when declared; null (logged) when NATS refuses it: movements still flow. */
  async #requisitionConsumer(): Promise<Consumer | null> {
    const { jsm, js, topology, source, log } = this.opts;
    if (!source.writeBack!.requisitions || !jsm) return null;
    try {
      return await requisitionConsumer(jsm, js, topology, source.name);
    } catch (err) {
      // Not fatal: the movements and the journal go on; requests wait in the events stream for the next session.
      log.warn({ err }, "write-back: cannot read replenishment requests from the events stream (NATS permissions?)");
      return null;
    }
  }

  /** Replenishment requests waiting (up to a second), sent as requisitions, then acknowledged; true when some were. */
  async #requisitions(consumer: Consumer, signal: AbortSignal): Promise<boolean> {
    const { sql, source } = this.opts;
    const msgs: Array<JsMsg> = [];
    const fetched = await untilAborted(
      consumer.fetch({ max_messages: source.writeBack!.batchSize, expires: Math.max(source.writeBack!.intervalMs, 1000) }),
      signal,
    );
    const stopFetch = () => fetched.stop();
    signal.addEventListener("abort", stopFetch, { once: true });
    try {
      for await (const m of fetched) msgs.push(m);
    } finally {
      signal.removeEventListener("abort", stopFetch);
    }
    if (signal.aborted) return false; // not acknowledged: redelivered to the next writer
    if (msgs.length === 0) return false;
    const { rows, dead } = await requisitionRows(sql, source, msgs);
    if (rows.length > 0 && (await this.#deliver({ kind: "requisitions", rows }, signal))) this.metrics.requisitions += rows.length;
    for (const d of dead) await this.#deadLetter(d.reason, d.payload, { kind: "requisitions" });
    for (const m of msgs) m.ack();
    return true;
  }

  /**
   * Sends a batch, backing off between failed attempts; after `maxAttempts` the batch is
   * dead-lettered (false). Stopping mid-retry throws: the batch stays unsent, for the next writer.
   */
  async #deliver(batch: Batch, signal: AbortSignal): Promise<boolean> {
    const { source, log } = this.opts;
    const w = source.writeBack!;
    for (let attempt = 1; ; attempt++) {
      try {
        // A batch in flight when stopped may finish (its position is then recorded: nothing is sent twice);
        // one the ERP does not answer within the grace is abandoned (the session's `finally` closes the sink, ending it).
        await withGrace(this.#sink!.send(batch), signal, STOP_GRACE_MS);
        return true;
      } catch (error) {
        const message = (error as Error).message;
        this.metrics.failedAttempts++;
        this.metrics.lastError = message;
        if (signal.aborted) throw error;
        if (attempt >= w.maxAttempts) {
          log.error({ err: error, kind: batch.kind, rows: batch.rows.length }, "write-back batch dead-lettered after its last attempt");
          await this.#deadLetter(`write-back ${source.name}: sending ${batch.kind} failed ${w.maxAttempts} times, last: ${message}`, batch, {
            kind: batch.kind,
            first: batch.rows[0],
            rows: batch.rows.length,
          });
          return false;
        }
        const delayMs = backoffDelay(attempt, w.backoffMs, w.maxBackoffMs);
        log.warn({ err: error, kind: batch.kind, attempt, delayMs: Math.round(delayMs) }, "write-back batch failed; retrying after a backoff");
        await this.#refreshLag();
        await sleep(delayMs, signal);
        if (signal.aborted) throw error;
      }
    }
  }

  async #deadLetter(reason: string, payload: unknown, context: Record<string, unknown>): Promise<void> {
    const { js, nc, sql, topology, source } = this.opts;
    await publishDeadLetter(
      { js, ...(nc ? { nc } : {}), sql, topology },
      deadLetter(WRITE_BACK_DEAD_LETTER_ORIGIN, reason, payload, { source: source.name, ...context }),
    );
    this.metrics.deadLettered++;
  }

  /** The age of the oldest movement not yet sent. */
  async #refreshLag(): Promise<void> {
    const { sql, source } = this.opts;
    const p = await this.#position();
    if (!p) return;
    const [{ lag }] = await sql<[{ lag: number | null }]>`
      select extract(epoch from now() - min(recorded_at))::float8 as lag
        from ledger_entries
       where bucket = 'on_hand' and source_system <> ${source.name}
         and (${p.horizon}::xid8 is null or txid >= ${p.horizon}::xid8)
         and not (${p.upper}::xid8 is not null and txid < ${p.upper}::xid8 and entry_id <= ${p.after_entry}::bigint)`;
    this.metrics.lagSeconds = Math.max(0, lag ?? 0);
  }
}

const UNLOCK_TIMEOUT_MS = 5000;
/** How long a batch in flight when the writer is stopped may still take. */
const STOP_GRACE_MS = 5000;

/** `work`, given up `graceMs` after `signal` aborts (rejecting with its reason). */
async function withGrace<T>(work: Promise<T>, signal: AbortSignal, graceMs: number): Promise<T> {
  const late = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  const arm = () => (timer = setTimeout(() => late.abort(signal.reason), graceMs));
  signal.addEventListener("abort", arm, { once: true });
  if (signal.aborted) arm();
  try {
    return await untilAborted(work, late.signal);
  } finally {
    signal.removeEventListener("abort", arm);
    clearTimeout(timer);
  }
}

async function unlock(lock: ReservedSql, source: string): Promise<void> {
  try {
    await lock`select pg_advisory_unlock(hashtext('tally_writeback'), hashtext(${source}))`;
  } finally {
    lock.release();
  }
}
