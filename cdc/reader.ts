import type { JetStreamClient } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { LogicalReplicationService, PgoutputPlugin, type Pgoutput } from "pg-logical-replication";
import type { Sql } from "postgres";
import type { Logger } from "pino";
import type { Command } from "../actors/index.ts";
import { connectPostgres } from "../src/db.ts";
import { backoffDelay } from "../src/backoff.ts";
import { deadLetter, deadLetterMsgId, type DeadLetter } from "../src/deadLetters.ts";
import { publishCommands } from "../src/publisher.ts";
import type { Topology } from "../src/topology.ts";
import { Crosswalk, ITEMS_CHANNEL } from "./crosswalk.ts";
import { parseLsn, formatLsn } from "./lsn.ts";
import { changeFrom, mapChange, type ChangePayload } from "./mapper.ts";
import { MappingError, UnknownItem, type RawRow } from "./mapping.ts";
import { keepValuesAsText, toText } from "./pgText.ts";
import { createExportedSlot, readSnapshot, runSnapshot, snapshotNeeded, type SnapshotOptions } from "./snapshot.ts";
import type { ResolvedSource } from "./sources.ts";

export const HEARTBEAT_PREFIX = "tally_heartbeat";

export interface ReaderOptions {
  readonly source: ResolvedSource;
  /** The ledger database (crosswalk, cdc_sources). */
  readonly sql: Sql;
  readonly js: JetStreamClient;
  readonly nc: NatsConnection;
  readonly topology: Topology;
  readonly log: Logger;
  /** Commands buffered before the reader waits for JetStream (backpressure), default 5000. */
  readonly maxPending?: number;
}

export interface ReaderMetrics {
  transactions: number;
  changes: number;
  commands: number;
  skipped: number;
  deadLetters: number;
  deadLettersByReason: Record<string, number>;
  changesByTable: Record<string, number>;
  reconnects: number;
  snapshots: number;
  snapshotRows: number;
  confirmedLsn: string;
  lastHeartbeatAt: string | null;
  lagBytes: number | null;
}

/** One committed source transaction, mapped, waiting to be published. */
interface ReadyTransaction {
  readonly endLsn: string;
  readonly commands: ReadonlyArray<Command>;
  readonly deadLetters: ReadonlyArray<DeadLetter>;
  readonly commitTime: string;
  readonly changes: number;
  readonly skipped: number;
  readonly heartbeat: string | null;
  /** Runs once this entry is published (a re-snapshot records itself done). */
  readonly onFlushed?: () => Promise<void>;
}

/** A re-snapshot in progress: transactions committed at or after `lsn` wait until its commands are ready. */
interface Resnapshot {
  readonly lsn: string;
  readonly ready: Promise<ReadyTransaction>;
}

interface OpenTransaction {
  readonly commitLsn: string;
  readonly commitTime: string;
  readonly changes: Array<ChangePayload>;
  heartbeat: string | null;
}

type ReplicationService = LogicalReplicationService;

/** The library's flow-control queue (private): a keepalive may only advance the slot when it is empty. */
function libraryBusy(service: LogicalReplicationService | null): boolean {
  const internals = service as unknown as { _messageQueue?: Array<unknown>; _processing?: boolean } | null;
  return (internals?._messageQueue?.length ?? 0) > 0 || internals?._processing === true;
}

/**
 * Streams one source database's captured tables from its permanent logical replication slot
 * (pgoutput), maps each committed transaction to canonical commands, publishes them to the
 * commands stream, and only then confirms the transaction's end LSN to Postgres with its own
 * standby status updates (the library's automatic acknowledgement and keepalive timer are off).
 * On the first start it takes the initial snapshot. Reconnects with backoff; Postgres resumes
 * from the slot's confirmed position, and deterministic command ids make any re-sent
 * transaction a duplicate.
 */
export class SourceReader {
  readonly metrics: ReaderMetrics = {
    transactions: 0,
    changes: 0,
    commands: 0,
    skipped: 0,
    deadLetters: 0,
    deadLettersByReason: {},
    changesByTable: {},
    reconnects: 0,
    snapshots: 0,
    snapshotRows: 0,
    confirmedLsn: "0/0",
    lastHeartbeatAt: null,
    lagBytes: null,
  };
  #stopped = false;
  #service: ReplicationService | null = null;
  #sourceSql: Sql | null = null;
  #crosswalk: Crosswalk | null = null;
  #open: OpenTransaction | null = null;
  #ready: Array<ReadyTransaction> = [];
  #pendingCommands = 0;
  #flushing: Promise<void> | null = null;
  #failure: unknown = null;
  #timers: Array<NodeJS.Timeout> = [];
  #wake: (() => void) | null = null;
  #connected = false;
  /** The server accepted START_REPLICATION in this session. */
  #started = false;
  #resnapshot: Resnapshot | null = null;
  #checkingResnapshot = false;
  /** The highest commit LSN of a transaction this session has begun to take in. */
  #lastBegun = 0n;
  /** When a keepalive last advanced the idle slot. */
  #idleAdvancedAt = 0;
  readonly done: Promise<void>;

  constructor(readonly opts: ReaderOptions) {
    keepValuesAsText();
    this.done = this.#run();
  }

  get name(): string {
    return this.opts.source.name;
  }

  /** True while the replication stream is open (after any snapshot). */
  get streaming(): boolean {
    return this.#connected;
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    this.#wake?.();
    await this.done;
  }

  async #run(): Promise<void> {
    const { log, source } = this.opts;
    let attempt = 0;
    this.#sourceSql = connectPostgres(source.url, { max: 2, application: `tally-cdc-${source.name}` });
    try {
      while (!this.#stopped) {
        this.#started = false;
        try {
          await this.#session();
          attempt = 0;
        } catch (error) {
          if (this.#stopped) break;
          // A session that really streamed was healthy: its loss starts the backoff over.
          attempt = this.#started ? 1 : attempt + 1;
          this.metrics.reconnects++;
          const delay = backoffDelay(attempt, 400, 15_000);
          log.warn({ err: error, attempt, delayMs: Math.round(delay) }, "replication session ended; reconnecting after a backoff");
          await this.#sleep(delay);
        }
      }
    } finally {
      await this.#sourceSql.end({ timeout: 5 }).catch(() => {});
    }
  }

  /** One replication session: snapshot if needed, then stream until an error or stop. */
  async #session(): Promise<void> {
    const { sql, source, log } = this.opts;
    await sql`
      insert into cdc_sources (source, slot, publication) values (${source.name}, ${source.slot}, ${source.publication})
      on conflict (source) do update set slot = excluded.slot, publication = excluded.publication`;
    this.#crosswalk = await Crosswalk.load(sql);
    const crosswalk = this.#crosswalk;
    // Item definitions from other sources and processes: reload the SKU when it changes.
    const listener = await sql
      .listen(ITEMS_CHANNEL, (sku) => void crosswalk.refresh(sql, [sku]).catch(() => {}))
      .catch(() => null);
    try {
      await this.#stream();
    } finally {
      await listener?.unlisten().catch(() => {});
    }
  }

  async #stream(): Promise<void> {
    const { sql, source, log } = this.opts;
    if (await snapshotNeeded(sql, this.#sourceSql!, source)) {
      const result = await runSnapshot(this.#snapshotOptions());
      this.metrics.snapshots++;
      this.metrics.snapshotRows += result.rows;
    }
    this.#open = null;
    this.#ready = [];
    this.#lastBegun = 0n;
    this.#pendingCommands = 0;
    this.#failure = null;
    this.#resnapshot = null;

    const service = new LogicalReplicationService(
      { connectionString: source.url, application_name: `tally-cdc-${source.name}` },
      { acknowledge: { auto: false, timeoutSeconds: 0 }, flowControl: { enabled: true } },
    );
    this.#service = service;
    const plugin = new PgoutputPlugin({ protoVersion: 1, publicationNames: [source.publication], messages: true });
    let live = true;
    const ended = new Promise<void>((resolve, reject) => {
      service.on("error", (err: Error) => reject(err));
      // Streaming from the server's START_REPLICATION answer on — or from the first message, which
      // proves it too, should that event ever be missed.
      const streaming = () => {
        if (!live) return; // a late event of a session being torn down
        this.#started = true;
        this.#connected = true;
      };
      service.on("start", streaming);
      service.on("data", (lsn: string, msg: Pgoutput.Message) => {
        if (!this.#connected) streaming();
        return this.#onMessage(lsn, msg);
      });
      service.on("heartbeat", (lsn: string, _ts: number, shouldRespond: boolean) => {
        if (!this.#connected) streaming();
        this.#onKeepalive(lsn, shouldRespond);
      });
      this.#wake = () => resolve();
      // Stopped while the session was starting (a snapshot, the slot query): end it at once.
      if (this.#stopped) resolve();
    });
    // Ask for a reply: the server answers with a keepalive carrying its position, which advances an idle slot.
    const statusTimer = setInterval(() => this.#sendStatus(true), source.statusMs);
    const heartbeatTimer = setInterval(() => void this.#writeHeartbeat(), source.heartbeatMs);
    const lagTimer = setInterval(() => {
      void this.#checkLag();
      void this.#checkResnapshotOnce();
    }, Math.max(1000, Math.min(source.heartbeatMs, source.statusMs)));
    this.#timers = [statusTimer, heartbeatTimer, lagTimer];
    try {
      const [{ confirmed }] = await this.#sourceSql!<[{ confirmed: string | null }]>`
        select confirmed_flush_lsn::text as confirmed from pg_replication_slots where slot_name = ${source.slot}`;
      if (confirmed) this.metrics.confirmedLsn = confirmed;
      log.info({ slot: source.slot, from: confirmed }, "replication streaming");
      // Start at 0/0: the server resumes from the slot's confirmed position.
      const streaming = service.subscribe(plugin, source.slot);
      await Promise.race([streaming.then(() => Promise.reject(new Error("replication stream ended"))), ended]);
    } finally {
      live = false;
      this.#connected = false;
      for (const t of this.#timers) clearInterval(t);
      this.#timers = [];
      this.#wake = null;
      // Let a publish in flight settle before a new session can re-send the same transactions.
      await this.#flushing?.catch(() => {});
      await service.destroy().catch(() => {});
      this.#service = null;
    }
  }

  /** pgoutput messages, in order (flow control: the library waits for each). */
  async #onMessage(_lsn: string, msg: Pgoutput.Message): Promise<void> {
    if (this.#failure) throw this.#failure;
    switch (msg.tag) {
      case "begin":
        if (msg.commitLsn && parseLsn(msg.commitLsn) > this.#lastBegun) this.#lastBegun = parseLsn(msg.commitLsn);
        if (this.#resnapshot && msg.commitLsn && parseLsn(msg.commitLsn) >= parseLsn(this.#resnapshot.lsn)) await this.#placeResnapshot();
        this.#open = { commitLsn: msg.commitLsn ?? "0/0", commitTime: pgTime(msg.commitTime), changes: [], heartbeat: null };
        return;
      case "insert":
      case "update":
      case "delete": {
        const tx = this.#open;
        if (!tx) throw new Error(`${msg.tag} outside a transaction`);
        const table = `${msg.relation.schema}.${msg.relation.name}`;
        const newRow = msg.tag === "delete" ? null : textRow(msg.new);
        const oldRow = msg.tag === "insert" ? null : textRow(msg.old ?? msg.key);
        tx.changes.push({ table, op: msg.tag, new: newRow, old: oldRow, commitLsn: tx.commitLsn, index: tx.changes.length, commitTime: tx.commitTime });
        return;
      }
      case "truncate": {
        const tx = this.#open;
        if (!tx) return;
        for (const rel of msg.relations)
          tx.changes.push({
            table: `${rel.schema}.${rel.name}`,
            op: "delete",
            new: null,
            old: null,
            commitLsn: tx.commitLsn,
            index: tx.changes.length,
            commitTime: tx.commitTime,
          });
        return;
      }
      case "message":
        if (msg.prefix === HEARTBEAT_PREFIX && this.#open) this.#open.heartbeat = new TextDecoder().decode(msg.content);
        return;
      case "commit": {
        const tx = this.#open;
        this.#open = null;
        if (!tx) return;
        await this.#commit(tx, msg.commitEndLsn ?? tx.commitLsn);
        return;
      }
      case "relation":
      case "type":
      case "origin":
        return;
      default: {
        const never: never = msg;
        void never;
      }
    }
  }

  /** Maps a committed transaction and queues it for publishing; waits when too much is pending. */
  async #commit(tx: OpenTransaction, endLsn: string): Promise<void> {
    const { source, sql } = this.opts;
    const crosswalk = this.#crosswalk!;
    const commands: Array<Command> = [];
    const dead: Array<DeadLetter> = [];
    let skipped = 0;
    for (const change of tx.changes) {
      this.metrics.changesByTable[change.table] = (this.metrics.changesByTable[change.table] ?? 0) + 1;
      const map = () =>
        change.new === null && change.old === null
          ? { commands: [], items: [], removedItems: [], skipped: 0, error: truncateError(change.table) }
          : change.op !== "insert" && change.old === null && source.tables[change.table]?.oldRow === "full"
            ? { commands: [], items: [], removedItems: [], skipped: 0, error: oldRowMissing(change.table, change.op) }
            : mapChange(source.name, source.tables, crosswalk, changeFrom(source.name, change));
      let outcome = map();
      // An item another source (the ERP) defined a moment ago may not have reached this reader yet.
      if (outcome.error instanceof UnknownItem && (await crosswalk.refreshIdentifier(sql, outcome.error.item))) outcome = map();
      if (outcome.error) {
        dead.push(
          deadLetter(source.name, outcome.error.message, change, {
            source: source.name,
            lsn: change.commitLsn,
            index: change.index,
            table: change.table,
            code: outcome.error.reason,
          }),
        );
        continue;
      }
      // The crosswalk must be durable before this transaction's LSN can be confirmed.
      if (outcome.items.length > 0 || outcome.removedItems.length > 0)
        await Crosswalk.persist(sql, source.name, outcome.items, outcome.removedItems);
      commands.push(...outcome.commands);
      skipped += outcome.skipped;
    }
    this.#ready.push({ endLsn, commands, deadLetters: dead, commitTime: tx.commitTime, changes: tx.changes.length, skipped, heartbeat: tx.heartbeat });
    this.#pendingCommands += commands.length + dead.length;
    this.#kickFlush();
    if (this.#pendingCommands >= (this.opts.maxPending ?? 5000)) await this.#flushing;
    if (this.#failure) throw this.#failure;
  }

  #kickFlush(): void {
    if (this.#flushing) return;
    this.#flushing = this.#flushLoop().finally(() => {
      this.#flushing = null;
      if (this.#ready.length > 0 && !this.#failure) this.#kickFlush();
    });
  }

  /** Publishes every ready transaction in commit order, then confirms the last one's end LSN. */
  async #flushLoop(): Promise<void> {
    const { source, sql, js, topology } = this.opts;
    while (this.#ready.length > 0 && !this.#failure) {
      const batch = this.#ready.splice(0, this.#ready.length);
      const commands = batch.flatMap((t) => t.commands);
      const dead = batch.flatMap((t) => t.deadLetters);
      try {
        if (dead.length > 0)
          await Promise.all(
            dead.map((d) =>
              js.publish(topology.dlqSubject(d.origin), JSON.stringify(d), { msgID: deadLetterMsgId(d) }),
            ),
          );
        if (commands.length > 0) await publishCommands(js, topology, commands);
      } catch (error) {
        // Nothing of this batch is confirmed: fail the session; the slot re-sends it on reconnect.
        this.#failure = error;
        this.#wake?.();
        return;
      }
      this.#pendingCommands -= commands.length + dead.length;
      for (const t of batch) await t.onFlushed?.().catch((err) => this.opts.log.warn({ err }, "post-publish step failed"));
      const last = batch[batch.length - 1]!;
      this.metrics.transactions += batch.length;
      this.metrics.changes += batch.reduce((n, t) => n + t.changes, 0);
      this.metrics.commands += commands.length;
      this.metrics.skipped += batch.reduce((n, t) => n + t.skipped, 0);
      for (const d of dead) this.#countDead(d);
      const heartbeat = batch.map((t) => t.heartbeat).filter((h): h is string => h !== null).pop() ?? null;
      if (heartbeat) this.metrics.lastHeartbeatAt = heartbeat;
      this.#confirm(last.endLsn);
      await sql`
        update cdc_sources
           set confirmed_lsn = ${this.metrics.confirmedLsn},
               last_event_at = ${last.commitTime},
               last_heartbeat_at = coalesce(${heartbeat}::timestamptz, last_heartbeat_at),
               changes = changes + ${batch.reduce((n, t) => n + t.changes, 0)},
               commands = commands + ${commands.length},
               skipped = skipped + ${batch.reduce((n, t) => n + t.skipped, 0)},
               dead_letters = dead_letters + ${dead.length},
               updated_at = now()
         where source = ${source.name}`.catch((err) => this.opts.log.warn({ err }, "could not record CDC progress"));
    }
  }

  #countDead(d: DeadLetter): void {
    this.metrics.deadLetters++;
    const code = String((d.context as { code?: string }).code ?? "bad_value");
    this.metrics.deadLettersByReason[code] = (this.metrics.deadLettersByReason[code] ?? 0) + 1;
  }

  /** Records `lsn` as confirmed (never backwards) and tells Postgres. */
  #confirm(lsn: string): void {
    if (parseLsn(lsn) > parseLsn(this.metrics.confirmedLsn)) this.metrics.confirmedLsn = lsn;
    this.#sendStatus();
  }

  /** A standby status update carrying exactly the confirmed LSN (the library adds 1 to what it is given). */
  #sendStatus(ping = false): void {
    const service = this.#service;
    if (!service || !this.#connected) return;
    const confirmed = parseLsn(this.metrics.confirmedLsn);
    if (confirmed === 0n) return;
    void service.acknowledge(formatLsn(confirmed - 1n), ping).catch(() => {});
  }

  /**
   * A keepalive. When nothing is in flight — no open transaction, nothing queued in the library or
   * waiting for JetStream — everything up to the server's position has been handled, so the slot
   * may advance to it: an idle source does not pin WAL.
   */
  #onKeepalive(lsn: string, shouldRespond: boolean): void {
    // A failed publish took its batch out of #ready: until the session ends nothing may be confirmed.
    const idle =
      this.#failure === null && this.#open === null && this.#ready.length === 0 && this.#flushing === null && !libraryBusy(this.#service);
    if (idle && this.#resnapshot && parseLsn(lsn) >= parseLsn(this.#resnapshot.lsn)) {
      // The stream has passed the re-snapshot's position with nothing in between: place it now.
      void this.#placeResnapshot().catch((err) => this.#fail(err));
      return;
    }
    // Advancing an idle slot only keeps WAL from piling up: once a second is plenty. (A server busy
    // with other databases sends a keepalive for nearly every transaction the slot skips, and a
    // status update for each cost the reader several percent of its CPU.)
    const advance = idle && !this.#resnapshot && parseLsn(lsn) > parseLsn(this.metrics.confirmedLsn);
    if (advance && (shouldRespond || Date.now() - this.#idleAdvancedAt >= Math.min(1000, this.opts.source.statusMs))) {
      this.#idleAdvancedAt = Date.now();
      this.#confirm(lsn);
    } else if (shouldRespond) this.#sendStatus();
  }

  #snapshotOptions(): SnapshotOptions {
    return {
      source: this.opts.source,
      ledger: this.opts.sql,
      js: this.opts.js,
      topology: this.opts.topology,
      crosswalk: this.#crosswalk!,
      log: this.opts.log,
      onDeadLetter: (d) => this.#countDead(d),
    };
  }

  #fail(error: unknown): void {
    this.#failure = error;
    this.#wake?.();
  }

  /**
   * `tally source resnapshot`: snapshot again without stopping the stream. A TEMPORARY slot with an
   * exported snapshot fixes a consistent point S; its tables are read in that snapshot; transactions
   * committed before S keep flowing, those at or after S wait, and the snapshot's commands are
   * placed exactly between them. Nothing is missed or doubled, and the permanent slot is untouched.
   */
  /** One check at a time (a slow slot creation must not overlap the next tick's); a failure is retried next tick. */
  async #checkResnapshotOnce(): Promise<void> {
    if (this.#checkingResnapshot) return;
    this.#checkingResnapshot = true;
    try {
      await this.#checkResnapshotRequest();
    } catch (err) {
      this.opts.log.warn({ err }, "re-snapshot could not start; trying again");
    } finally {
      this.#checkingResnapshot = false;
    }
  }

  async #checkResnapshotRequest(): Promise<void> {
    if (this.#resnapshot || !this.#connected) return;
    const { sql, source, log } = this.opts;
    const [row] = await sql<[{ requested: boolean } | undefined]>`
      select resnapshot_requested_at is not null as requested from cdc_sources where source = ${source.name}`.catch(() => [undefined]);
    if (!row?.requested || this.#resnapshot) return;
    // Creating a slot waits until every transaction running on the server (any database) has ended:
    // say which ones while it waits, so an operator can see what holds a re-snapshot back.
    const waiting = setInterval(() => void this.#reportBlockers(), 10_000);
    let exported: Awaited<ReturnType<typeof createExportedSlot>>;
    try {
      exported = await createExportedSlot(source.url, `${source.slot}_resnapshot`, { temporary: true });
    } finally {
      clearInterval(waiting);
    }
    // The stream may already have taken in a transaction committed at or after the new slot's
    // position (it kept flowing while the slot was created): the counts can then no longer be put
    // before it. Give this slot up and try again at the next tick (the request stays).
    if (this.#lastBegun >= parseLsn(exported.consistentPoint)) {
      log.info({ consistentPoint: exported.consistentPoint }, "re-snapshot: the stream is already past the new slot's position; trying again");
      await exported.close();
      return;
    }
    log.info({ consistentPoint: exported.consistentPoint }, "re-snapshot: reading tables");
    const commands: Array<Command> = [];
    const ready = readSnapshot(
      { ...this.#snapshotOptions(), sink: async (c) => void commands.push(...c) },
      exported.snapshotName,
      exported.consistentPoint,
    )
      .then(async (result): Promise<ReadyTransaction> => {
        log.info({ ...result }, "re-snapshot: read; placing it at its position in the stream");
        return {
          endLsn: exported.consistentPoint,
          commands,
          deadLetters: [],
          commitTime: new Date().toISOString(),
          changes: 0,
          skipped: 0,
          heartbeat: null,
          onFlushed: async () => {
            this.metrics.snapshots++;
            this.metrics.snapshotRows += result.rows;
            await sql`
              update cdc_sources
                 set snapshot_lsn = ${exported.consistentPoint}, snapshot_done_at = now(), snapshot_rows = ${result.rows},
                     resnapshot_requested_at = null, updated_at = now()
               where source = ${source.name}`;
            log.info({ consistentPoint: exported.consistentPoint }, "re-snapshot: done");
          },
        };
      })
      .finally(() => exported.close());
    ready.catch((err) => {
      log.error({ err }, "re-snapshot failed");
      this.#fail(err);
    });
    this.#resnapshot = { lsn: exported.consistentPoint, ready };
  }

  /** The oldest transactions on the source server, which a new slot waits for. */
  async #reportBlockers(): Promise<void> {
    const rows = await this.#sourceSql!<Array<{ pid: number; datname: string | null; state: string | null; age: string; query: string }>>`
      select pid, datname, state, (now() - xact_start)::text as age, left(query, 120) as query
        from pg_stat_activity
       where backend_xid is not null and pid <> pg_backend_pid()
       order by xact_start limit 5`.catch(() => []);
    this.opts.log.warn({ transactions: rows }, "re-snapshot: still waiting for the source's running transactions to end before the slot can be created");
  }

  /** Queues the re-snapshot's commands (waiting for its read to finish) before anything committed after its position. */
  async #placeResnapshot(): Promise<void> {
    const r = this.#resnapshot;
    if (!r) return;
    const entry = await r.ready;
    if (this.#resnapshot !== r) return;
    this.#resnapshot = null;
    this.#ready.push(entry);
    this.#pendingCommands += entry.commands.length;
    this.#kickFlush();
  }

  /** A transactional message on an idle source, so its slot keeps moving even when nothing else happens. */
  async #writeHeartbeat(): Promise<void> {
    try {
      await this.#sourceSql!`select pg_logical_emit_message(true, ${HEARTBEAT_PREFIX}, now()::text)`;
    } catch (err) {
      this.opts.log.debug({ err }, "heartbeat write failed");
    }
  }

  async #checkLag(): Promise<void> {
    const { source, nc, topology, log } = this.opts;
    try {
      const [row] = await this.#sourceSql!<[{ lag: string | null } | undefined]>`
        select pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint::text as lag
          from pg_replication_slots where slot_name = ${source.slot}`;
      const lag = row?.lag === null || row?.lag === undefined ? null : Number(row.lag);
      this.metrics.lagBytes = lag;
      if (lag !== null && lag > source.lagAlertBytes) {
        const alert = { type: "alert", kind: "cdc_lag", source: source.name, slot: source.slot, lagBytes: lag, thresholdBytes: source.lagAlertBytes, at: new Date().toISOString() };
        log.warn(alert, "replication lag above the alert threshold");
        nc.publish(topology.eventSubject("alert"), JSON.stringify(alert));
      }
    } catch (err) {
      log.debug({ err }, "lag check failed");
    }
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      this.#wake = () => {
        clearTimeout(t);
        resolve();
      };
    });
  }
}

function textRow(row: Record<string, unknown> | null | undefined): RawRow | null {
  if (!row) return null;
  const out: Record<string, string | null | undefined> = {};
  for (const [k, v] of Object.entries(row)) out[k] = toText(v);
  return out;
}

/** Commit times: the library converts pgoutput's timestamps to microseconds since the Unix epoch (bigint). */
function pgTime(t: unknown): string {
  const micros = typeof t === "bigint" ? t : BigInt(String(t ?? 0));
  return new Date(Number(micros / 1000n)).toISOString();
}

function truncateError(table: string): MappingError {
  return new MappingError("op", `TRUNCATE of ${table} removes rows without stock movements; post counts or adjustments instead`, "truncate");
}

/** The mapping reads old values, but Postgres sent none: the table lacks REPLICA IDENTITY FULL. */
function oldRowMissing(table: string, op: string): MappingError {
  return new MappingError(
    "old",
    `${op} of ${table} arrived without its old row; the mapping needs it: ALTER TABLE ${table} REPLICA IDENTITY FULL (see tally source check)`,
    "old_row_missing",
  );
}
