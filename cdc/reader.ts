import type { JetStreamClient } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { LogicalReplicationService, PgoutputPlugin, type Pgoutput } from "pg-logical-replication";
import type { Sql } from "postgres";
import type { Logger } from "pino";
import type { AlertEvent, Command } from "../src/contract/index.ts";
import { connectPostgres } from "../src/platform/index.ts";
import { LongRunningService, backoffDelay, sleep } from "../src/platform/index.ts";
import { deadLetter, publishDeadLetter, type DeadLetter } from "../src/wire/index.ts";
import { publishCommands } from "../src/wire/index.ts";
import type { Topology } from "../src/wire/index.ts";
import { Crosswalk, ITEMS_CHANNEL } from "./crosswalk.ts";
import { CatalogLockTimeout, recordCatalogVersion, type ResolvedCatalogFact } from "./catalog.ts";
import { parseLsn, formatLsn } from "./lsn.ts";
import { changeFrom, mapChange, type ChangePayload } from "./mapper.ts";
import { MappingError, UnknownItem, type RawRow } from "../src/contract/index.ts";
import { keepValuesAsText, toText } from "./pgText.ts";
import { judgeSlot, type HaltReason, type RecordedSlot, type ServerSlot, type SlotGap, type SlotVerdict } from "./slotIdentity.ts";
import { createExportedSlot, readSnapshot, reportSlotWait, runSnapshot, type SnapshotOptions } from "./snapshot.ts";
import type { ResolvedSource } from "./sources.ts";

export const HEARTBEAT_PREFIX = "tally_heartbeat";
/** The replication origin of the write-back's sessions is `<prefix>_<source>`; the reader skips their transactions. */
export const WRITE_BACK_ORIGIN_PREFIX = "tally_writeback";

/**
 * Changes of one source transaction mapped and queued for JetStream at a time: a transaction of a
 * million rows goes out in chunks as it arrives, so the reader's memory does not grow with it.
 */
const CHUNK_CHANGES = 1000;
/** How often an alert that still holds (a halted source, an incomplete publication) is raised again. */
const ALERT_REPEAT_MS = 5 * 60_000;
/** How often the reader checks that every captured table is still in its publication. */
const PUBLICATION_CHECK_MS = 5_000;

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
  /** Set while the source is halted: its slot was lost or replaced, and an operator must choose (`tally source resnapshot`). */
  halted: HaltReason | null;
  /** Captured tables the publication lacks (their changes are not captured until `tally source enable` repairs it). */
  publicationMissing: Array<string>;
}

/**
 * Part of a committed source transaction, mapped, waiting to be published: the whole transaction,
 * or one chunk of a large one. Only a transaction's last part carries its end LSN, which may be
 * confirmed once it and every part before it are published.
 */
interface ReadyTransaction {
  /** Null: more of this transaction follows. */
  readonly endLsn: string | null;
  readonly commands: ReadonlyArray<Command>;
  readonly deadLetters: ReadonlyArray<DeadLetter>;
  readonly commitTime: string;
  readonly changes: number;
  readonly skipped: number;
  readonly heartbeat: string | null;
  /** Runs once this entry is published (a re-snapshot records itself done). */
  readonly onFlushed?: () => Promise<void>;
}

/** Price facts only touch catalog projections, never stock nor item status: their version may be recorded behind the stream. */
const priceOnly = (f: ResolvedCatalogFact): boolean =>
  f.kind === "price" || f.kind === "price_removed" || f.kind === "price_list" || f.kind === "price_list_removed";
/** Catalog versions being recorded behind the stream at most; the stream waits beyond. */
const MAX_CATALOG_BEHIND = 64;

/** A re-snapshot in progress: transactions committed at or after `lsn` wait until its commands are ready. */
interface Resnapshot {
  readonly lsn: string;
  readonly ready: Promise<ReadyTransaction>;
  /** Its catalog facts, recorded as a catalog version when it is placed (set once its read ends). */
  catalog: ReadonlyArray<ResolvedCatalogFact>;
  /** Being placed: a transaction at or after `lsn` waits for this, whoever started it. */
  placed?: Promise<void>;
}

/** The transaction being received: its changes since the last chunk was queued. */
interface OpenTransaction {
  readonly commitLsn: string;
  readonly commitTime: string;
  changes: Array<ChangePayload>;
  /** Changes received so far: the next change's index (command ids are `<source>:<commit lsn>:<index>`). */
  count: number;
  heartbeat: string | null;
  /** The transaction's catalog facts so far: recorded as one catalog version at its commit. */
  catalog: Array<ResolvedCatalogFact>;
  /** Written by Tally's own write-back (its replication origin): not captured, so nothing echoes back. */
  writtenBack?: boolean;
}

/** Counters published but not yet written to `cdc_sources`. */
interface Progress {
  changes: number;
  commands: number;
  skipped: number;
  deadLetters: number;
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
 * standby status updates (the library's automatic acknowledgement and keepalive timer are off),
 * each recorded in the ledger first (the slot's bound, see slotIdentity.ts). A large transaction
 * is published in chunks as it arrives, its end LSN confirmed only after the last chunk. On the
 * first start it takes the initial snapshot. Before each session it checks that the slot is its
 * own: a slot that is gone or was created anew means changes were lost, so the source halts with
 * an alert until an operator runs `tally source resnapshot` (never a silent new slot). It alerts
 * too when a captured table leaves the publication or is re-created. Reconnects with backoff;
 * Postgres resumes from the slot's confirmed position, and deterministic command ids make any
 * re-sent transaction a duplicate.
 */
export class SourceReader extends LongRunningService {
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
    halted: null,
    publicationMissing: [],
  };
  /**
   * The recent transactions' timings, in ms from their commit on the source (its clock): when this
   * reader took in their BEGIN, and when JetStream had acknowledged their commands (the last
   * 10,000 of each). The bench reads them to split CDC latency into stages.
   */
  readonly timings: { readonly received: Array<number>; readonly published: Array<number> } = { received: [], published: [] };
  #service: ReplicationService | null = null;
  #sourceSql: Sql | null = null;
  #crosswalk: Crosswalk | null = null;
  #open: OpenTransaction | null = null;
  #ready: Array<ReadyTransaction> = [];
  #pendingCommands = 0;
  #flushing: Promise<void> | null = null;
  /**
   * The catalog lane: price-only catalog versions, recorded one after the other in commit order
   * while the stream goes on (its tail never rejects: a failure ends the session through #fail).
   */
  #catalogLane: Promise<void> = Promise.resolve();
  #catalogBehind = 0;
  /** The confirmation lane: end LSNs recorded and confirmed in order, behind the publishing (never rejects). */
  #confirming: Promise<void> = Promise.resolve();
  #confirmsPending = 0;
  /** The position the queued confirmation will record, once every catalog version queued before it (`recorded`) is. */
  #confirmNext: { lsn: string; commitTime: string; heartbeat: string | null; recorded: Promise<void> } | null = null;
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
  /** An idle advance is being recorded and confirmed. */
  #advancing = false;
  #unrecorded: Progress = { changes: 0, commands: 0, skipped: 0, deadLetters: 0 };
  /** The relation id last seen per captured table, as recorded in `cdc_sources.relation_ids`. */
  #relationIds = new Map<string, number>();
  #publicationCheckedAt = 0;
  #publicationAlertAt = 0;
  #haltAlertAt = 0;

  constructor(readonly opts: ReaderOptions) {
    super();
    keepValuesAsText();
  }

  get name(): string {
    return this.opts.source.name;
  }

  /** True while the replication stream is open (after any snapshot). */
  get streaming(): boolean {
    return this.#connected;
  }

  /** Wakes the session (a sleep, or the replication stream, which then ends). */
  protected override onStop(): void {
    this.#wake?.();
  }

  protected async run(): Promise<void> {
    const { log, source } = this.opts;
    let attempt = 0;
    this.#sourceSql = connectPostgres(source.url, { max: 2, application: `tally-cdc-${source.name}` });
    try {
      while (!this.stopping) {
        this.#started = false;
        try {
          await this.#session();
          attempt = 0;
        } catch (error) {
          if (this.stopping) break;
          // A session that really streamed was healthy: its loss starts the backoff over.
          attempt = this.#started ? 1 : attempt + 1;
          this.metrics.reconnects++;
          const delay = backoffDelay(attempt, 400, 15_000);
          // A catalog head locked by a stuck session would otherwise only show as the reader not moving.
          if (error instanceof CatalogLockTimeout)
            log.error({ err: error, attempt, delayMs: Math.round(delay) }, `${error.message}; the replication session restarts after a backoff`);
          else log.warn({ err: error, attempt, delayMs: Math.round(delay) }, "replication session ended; reconnecting after a backoff");
          await this.#sleep(delay);
        }
      }
    } finally {
      // Stopping: a pool that cannot end cleanly is dropped with the process.
      await this.#sourceSql.end({ timeout: 5 }).catch((err: unknown) => log.debug({ err }, "source pool did not end cleanly"));
    }
  }

  /** One replication session: snapshot if needed (or halt), then stream until an error or stop. */
  async #session(): Promise<void> {
    const { sql, source } = this.opts;
    const [row] = await sql<[{ relationIds: Record<string, number> }]>`
      insert into cdc_sources (source, slot, publication) values (${source.name}, ${source.slot}, ${source.publication})
      on conflict (source) do update set slot = excluded.slot, publication = excluded.publication
      returning relation_ids as "relationIds"`;
    this.#relationIds = new Map(Object.entries(row.relationIds ?? {}));
    this.#crosswalk = await Crosswalk.load(sql);
    const crosswalk = this.#crosswalk;
    // Item definitions from other sources and processes: reload the SKU when it changes.
    // Without LISTEN (or when a reload fails) a SKU is reloaded on a miss only.
    const listener = await sql
      .listen(
        ITEMS_CHANNEL,
        (sku) => void crosswalk.refresh(sql, [sku]).catch((err: unknown) => this.opts.log.warn({ err, sku }, "crosswalk reload failed")),
      )
      .catch((err: unknown) => {
        this.opts.log.warn({ err }, "crosswalk LISTEN failed: items are refreshed on a miss only");
        return null;
      });
    try {
      if (await this.#prepareSlot()) await this.#stream();
    } finally {
      await listener?.unlisten().catch((err: unknown) => this.opts.log.debug({ err }, "crosswalk UNLISTEN failed")); // the session is over anyway
    }
  }

  /**
   * Makes sure the slot is this reader's before streaming from it: takes the first snapshot, adopts
   * the slot of a row from before the bound was tracked, or halts the source when its slot is gone
   * or not the one it confirmed to, until an operator asks for a re-snapshot (which then runs here,
   * with a new slot). False when stopped meanwhile.
   */
  async #prepareSlot(): Promise<boolean> {
    const verdict = await this.#judgeSlot();
    if (verdict.kind === "stream") {
      if (verdict.adopt) await this.#recordBound(verdict.adopt);
      this.metrics.halted = null;
      return true;
    }
    if (verdict.kind === "halt" && !(await this.#waitWhileHalted(verdict.reason, verdict.gap))) return false;
    // After a halt the ledger already holds Tally's own movements: on-hand goes through reconciliation.
    const again = verdict.kind === "halt" && this.opts.source.onHand !== undefined;
    // Requested first (served once streaming starts): a crash after the snapshot still reconciles.
    if (again) await this.opts.sql`update cdc_sources set reconcile_requested_at = now() where source = ${this.opts.source.name}`;
    const result = await runSnapshot({ ...this.#snapshotOptions(), onHandByReconciliation: again });
    this.metrics.snapshots++;
    this.metrics.snapshotRows += result.rows;
    this.metrics.halted = null;
    return true;
  }

  async #judgeSlot(): Promise<SlotVerdict> {
    const { sql, source } = this.opts;
    const [row] = await sql<
      Array<{
        done: boolean;
        boundLsn: string | null;
        boundAt: Date | null;
        haltedAt: Date | null;
        reason: HaltReason | null;
        detail: SlotGap | null;
      }>
    >`
      select snapshot_done_at is not null as done, slot_bound_lsn as "boundLsn", slot_bound_at as "boundAt",
             halted_at as "haltedAt", halted_reason as reason, halted_detail as detail
        from cdc_sources where source = ${source.name}`;
    const recorded: RecordedSlot = {
      snapshotDone: row?.done ?? false,
      boundLsn: row?.boundLsn ?? null,
      boundAt: row?.boundAt ?? null,
      halted: row?.haltedAt && row.reason && row.detail ? { reason: row.reason, at: row.haltedAt, detail: row.detail } : null,
    };
    const [slot] = await this.#sourceSql!<Array<ServerSlot>>`
      select s.database, s.plugin, s.confirmed_flush_lsn::text as "confirmedFlushLsn", to_jsonb(s) ->> 'wal_status' as "walStatus"
        from pg_replication_slots s where s.slot_name = ${source.slot}`;
    const [{ database }] = await this.#sourceSql!<[{ database: string }]>`select current_database() as database`;
    return judgeSlot(source.slot, database, recorded, slot);
  }

  /**
   * A halted source: records it, raises the alert (again every few minutes), and waits for an
   * operator's `tally source resnapshot` made after the halt. True when one came, false when stopped.
   */
  async #waitWhileHalted(reason: HaltReason, gap: SlotGap): Promise<boolean> {
    const { sql, source, log } = this.opts;
    // The first detection keeps its time and gap: a restart must not move them.
    const [row] = await sql<[{ haltedAt: Date; reason: HaltReason; detail: SlotGap }]>`
      update cdc_sources
         set halted_at = coalesce(halted_at, now()), halted_reason = coalesce(halted_reason, ${reason}),
             halted_detail = coalesce(halted_detail, ${sql.json(gap as never)}), updated_at = now()
       where source = ${source.name}
   returning halted_at as "haltedAt", halted_reason as reason, halted_detail as detail`;
    this.metrics.halted = row.reason;
    const raise = () => {
      this.#haltAlertAt = Date.now();
      this.#alert(
        `cdc_${row.reason}`,
        { ...row.detail, haltedAt: row.haltedAt.toISOString(), action: `tally source resnapshot ${source.name}` },
        `CDC stopped for source ${source.name}: ${row.detail.message}. Nothing more is captured from it until an operator runs ` +
          `\`tally source resnapshot ${source.name}\` (a new slot and a full snapshot of its tables)`,
      );
    };
    raise();
    while (!this.stopping) {
      const [state] = await sql<[{ chosen: boolean } | undefined]>`
        select coalesce(resnapshot_requested_at > halted_at, false) as chosen from cdc_sources where source = ${source.name}`;
      if (state?.chosen) {
        log.warn({ slot: source.slot }, "re-snapshot requested for the halted source: creating a new slot and snapshotting its tables");
        return true;
      }
      if (Date.now() - this.#haltAlertAt >= ALERT_REPEAT_MS) raise();
      await this.#sleep(1000);
    }
    return false;
  }

  async #stream(): Promise<void> {
    const { source, log } = this.opts;
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
      service.on("error", (err: Error) => {
        // The library goes on with its queue after an error (a failed message included): recorded as the
        // session's failure, the messages after it throw at once, and nothing past it is published or confirmed.
        this.#fail(err);
        reject(err);
      });
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
      if (this.stopping) resolve();
    });
    // Ask for a reply: the server answers with a keepalive carrying its position, which advances an idle slot.
    const statusTimer = setInterval(() => this.#sendStatus(true), source.statusMs);
    const heartbeatTimer = setInterval(() => void this.#writeHeartbeat(), source.heartbeatMs);
    const lagTimer = setInterval(
      () => {
        void this.#checkLag();
        void this.#checkResnapshotOnce();
        void this.#checkPublication();
      },
      Math.max(1000, Math.min(source.heartbeatMs, source.statusMs)),
    );
    this.#timers = [statusTimer, heartbeatTimer, lagTimer];
    try {
      const [{ confirmed }] = await this.#sourceSql!<[{ confirmed: string | null }]>`
        select confirmed_flush_lsn::text as confirmed from pg_replication_slots where slot_name = ${source.slot}`;
      if (confirmed) this.metrics.confirmedLsn = confirmed;
      log.info({ slot: source.slot, from: confirmed }, "replication streaming");
      this.#publicationCheckedAt = 0;
      void this.#checkPublication();
      // Start at 0/0: the server resumes from the slot's confirmed position.
      const streaming = service.subscribe(plugin, source.slot);
      await Promise.race([streaming.then(() => Promise.reject(new Error("replication stream ended"))), ended]);
      // A failure (#fail: a message, the catalog lane, a re-snapshot; a publish) resolved `ended`: the
      // session ends as a failure, logged and after the backoff, not as a quiet immediate restart.
      if (this.#failure !== null && !this.stopping) throw this.#failure;
    } finally {
      live = false;
      this.#connected = false;
      for (const t of this.#timers) clearInterval(t);
      this.#timers = [];
      this.#wake = null;
      // Let a publish in flight settle before a new session can re-send the same transactions.
      await this.#flushing?.catch(() => {}); // its failure was already recorded (#failure) and ended the session
      await this.#catalogLane;
      await this.#confirming;
      await service.destroy().catch((err: unknown) => log.debug({ err }, "replication connection did not close cleanly")); // being replaced anyway
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
        this.#open = { commitLsn: msg.commitLsn ?? "0/0", commitTime: pgTime(msg.commitTime), changes: [], count: 0, heartbeat: null, catalog: [] };
        sampleTiming(this.timings.received, Date.now() - Date.parse(this.#open.commitTime));
        return;
      case "insert":
      case "update":
      case "delete": {
        const tx = this.#open;
        if (!tx) throw new Error(`${msg.tag} outside a transaction`);
        if (tx.writtenBack) return;
        const table = `${msg.relation.schema}.${msg.relation.name}`;
        const newRow = msg.tag === "delete" ? null : textRow(msg.new);
        const oldRow = msg.tag === "insert" ? null : textRow(msg.old ?? msg.key);
        tx.changes.push({ table, op: msg.tag, new: newRow, old: oldRow, commitLsn: tx.commitLsn, index: tx.count++, commitTime: tx.commitTime });
        if (tx.changes.length >= CHUNK_CHANGES) await this.#queue(tx, null);
        return;
      }
      case "truncate": {
        const tx = this.#open;
        if (!tx || tx.writtenBack) return;
        for (const rel of msg.relations)
          tx.changes.push({
            table: `${rel.schema}.${rel.name}`,
            op: "delete",
            new: null,
            old: null,
            commitLsn: tx.commitLsn,
            index: tx.count++,
            commitTime: tx.commitTime,
          });
        if (tx.changes.length >= CHUNK_CHANGES) await this.#queue(tx, null);
        return;
      }
      case "message":
        if (msg.prefix === HEARTBEAT_PREFIX && this.#open) this.#open.heartbeat = new TextDecoder().decode(msg.content);
        return;
      case "commit": {
        const tx = this.#open;
        this.#open = null;
        if (!tx) return;
        await this.#queue(tx, msg.commitEndLsn ?? tx.commitLsn);
        return;
      }
      case "relation":
        await this.#onRelation(msg);
        return;
      case "origin":
        // pgoutput names the origin right after BEGIN: the write-back's sessions carry WRITE_BACK_ORIGIN_PREFIX.
        if (this.#open && msg.originName.startsWith(WRITE_BACK_ORIGIN_PREFIX)) this.#open.writtenBack = true;
        return;
      case "type":
        return;
      default: {
        const never: never = msg;
        void never;
      }
    }
  }

  /**
   * Maps the transaction's changes received since its last chunk and queues them for publishing;
   * waits when too much is pending. `endLsn` is set at the commit (the last part), null for a
   * chunk of a transaction still arriving.
   */
  async #queue(tx: OpenTransaction, endLsn: string | null): Promise<void> {
    const { source, sql } = this.opts;
    const crosswalk = this.#crosswalk!;
    const commands: Array<Command> = [];
    const dead: Array<DeadLetter> = [];
    let skipped = 0;
    const changes = tx.changes;
    tx.changes = [];
    for (const change of changes) {
      this.metrics.changesByTable[change.table] = (this.metrics.changesByTable[change.table] ?? 0) + 1;
      const map = () =>
        change.new === null && change.old === null
          ? { commands: [], items: [], removedItems: [], catalog: [], skipped: 0, error: truncateError(change.table) }
          : change.op !== "insert" && change.old === null && source.tables[change.table]?.oldRow === "full"
            ? { commands: [], items: [], removedItems: [], catalog: [], skipped: 0, error: oldRowMissing(change.table, change.op) }
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
      if (outcome.items.length > 0 || outcome.removedItems.length > 0) await Crosswalk.persist(sql, source.name, outcome.items, outcome.removedItems);
      commands.push(...outcome.commands);
      tx.catalog.push(...outcome.catalog);
      skipped += outcome.skipped;
    }
    // One catalog version per source transaction, durable before its LSN can be confirmed. Prices
    // alone are recorded behind the stream (the catalog lane, in order), so the transactions after
    // a price change are not held while its version is written; the confirmation waits for it. An
    // item's facts (its status rules its availability) are recorded before its commands and the
    // transactions after it are published, after every version before it.
    if (endLsn !== null && tx.catalog.length > 0) {
      const change = { source: source.name, ref: tx.commitLsn, sourceAt: tx.commitTime, facts: tx.catalog };
      if (tx.catalog.every(priceOnly) && this.#catalogBehind < MAX_CATALOG_BEHIND) this.#recordBehind(change);
      else {
        await this.#catalogLane;
        if (this.#failure) throw this.#failure;
        await recordCatalogVersion(sql, change);
      }
    }
    this.#ready.push({
      endLsn,
      commands,
      deadLetters: dead,
      commitTime: tx.commitTime,
      changes: changes.length,
      skipped,
      heartbeat: endLsn === null ? null : tx.heartbeat,
    });
    this.#pendingCommands += commands.length + dead.length;
    this.#kickFlush();
    if (this.#pendingCommands >= (this.opts.maxPending ?? 5000)) await this.#flushing;
    if (this.#failure) throw this.#failure;
  }

  /** Records a price-only catalog version on the catalog lane, after every one queued before it. */
  #recordBehind(change: Parameters<typeof recordCatalogVersion>[1]): void {
    this.#catalogBehind++;
    this.#catalogLane = this.#catalogLane
      .then(async () => {
        if (this.#failure) return; // the session is ending: the slot re-sends this transaction
        await recordCatalogVersion(this.opts.sql, change);
      })
      .catch((err: unknown) => this.#fail(err))
      .finally(() => this.#catalogBehind--);
  }

  /**
   * Records and confirms `lsn` on the confirmation lane, once every catalog version queued so far
   * (those of the transactions up to it) is recorded: the publishing goes on meanwhile. Nothing is
   * confirmed once the session failed.
   */
  #confirmBehind(lsn: string, commitTime: string, heartbeat: string | null): void {
    // A confirmation not yet started takes the later position instead (one statement, not one per flush).
    const queued = this.#confirmNext;
    this.#confirmNext = { lsn, commitTime, heartbeat: heartbeat ?? queued?.heartbeat ?? null, recorded: this.#catalogLane };
    if (queued) return;
    this.#confirmsPending++;
    this.#confirming = this.#confirming
      .then(async () => {
        const next = this.#confirmNext!;
        this.#confirmNext = null;
        await next.recorded;
        if (this.#failure) return;
        await this.#recordAndConfirm(next.lsn, next.commitTime, next.heartbeat);
      })
      .catch((err: unknown) => this.opts.log.warn({ err }, "could not confirm a source position; the next one will"))
      .finally(() => this.#confirmsPending--);
  }

  #kickFlush(): void {
    if (this.#flushing) return;
    this.#flushing = this.#flushLoop().finally(() => {
      this.#flushing = null;
      if (this.#ready.length > 0 && !this.#failure) this.#kickFlush();
    });
  }

  /**
   * Publishes every ready transaction (or part) in commit order, then records and confirms the end
   * LSN of the last complete one: a large transaction's end LSN only after its last chunk.
   */
  async #flushLoop(): Promise<void> {
    const { js, nc, sql, topology } = this.opts;
    while (this.#ready.length > 0 && !this.#failure) {
      const batch = this.#ready.splice(0, this.#ready.length);
      const commands = batch.flatMap((t) => t.commands);
      const dead = batch.flatMap((t) => t.deadLetters);
      try {
        if (dead.length > 0)
          await Promise.all(
            // A letter too large for NATS (a huge source row) keeps its payload in Postgres.
            dead.map((d) => publishDeadLetter({ js, nc, sql, topology }, d)),
          );
        if (commands.length > 0) await publishCommands(js, topology, commands);
      } catch (error) {
        // Nothing of this batch is confirmed: fail the session; the slot re-sends it on reconnect.
        this.#failure = error;
        this.#wake?.();
        return;
      }
      this.#pendingCommands -= commands.length + dead.length;
      const publishedAt = Date.now();
      for (const t of batch)
        if (t.endLsn !== null && t.commands.length > 0) sampleTiming(this.timings.published, publishedAt - Date.parse(t.commitTime));
      for (const t of batch) await t.onFlushed?.().catch((err) => this.opts.log.warn({ err }, "post-publish step failed"));
      const complete = batch.filter((t) => t.endLsn !== null);
      const changes = batch.reduce((n, t) => n + t.changes, 0);
      const skipped = batch.reduce((n, t) => n + t.skipped, 0);
      this.metrics.transactions += complete.length;
      this.metrics.changes += changes;
      this.metrics.commands += commands.length;
      this.metrics.skipped += skipped;
      for (const d of dead) this.#countDead(d);
      this.#unrecorded.changes += changes;
      this.#unrecorded.commands += commands.length;
      this.#unrecorded.skipped += skipped;
      this.#unrecorded.deadLetters += dead.length;
      const heartbeat =
        complete
          .map((t) => t.heartbeat)
          .filter((h): h is string => h !== null)
          .pop() ?? null;
      if (heartbeat) this.metrics.lastHeartbeatAt = heartbeat;
      const last = complete[complete.length - 1];
      if (last) this.#confirmBehind(last.endLsn!, last.commitTime, heartbeat);
    }
  }

  /**
   * Records `lsn` as the slot's bound (with the progress counters), then confirms it to Postgres.
   * The order matters: the slot may never be confirmed past what the ledger knows, or a restart
   * would take Tally's own slot for a new one. If the ledger cannot be written, nothing is confirmed
   * (the next transaction tries again).
   */
  async #recordAndConfirm(lsn: string, lastEventAt: string | null, heartbeat: string | null): Promise<void> {
    const { sql, source, log } = this.opts;
    const p = { ...this.#unrecorded };
    try {
      await sql`
        update cdc_sources
           set confirmed_lsn = ${lsn},
               slot_bound_lsn = greatest(coalesce(slot_bound_lsn, '0/0')::pg_lsn, ${lsn}::pg_lsn)::text,
               slot_bound_at = now(),
               last_event_at = coalesce(${lastEventAt}::timestamptz, last_event_at),
               last_heartbeat_at = coalesce(${heartbeat}::timestamptz, last_heartbeat_at),
               changes = changes + ${p.changes},
               commands = commands + ${p.commands},
               skipped = skipped + ${p.skipped},
               dead_letters = dead_letters + ${p.deadLetters},
               updated_at = now()
         where source = ${source.name}`;
    } catch (err) {
      // Not confirmed until recorded: the slot keeps the changes, so nothing is lost; the next status retries.
      log.warn({ err, lsn }, "could not record CDC progress; the slot is confirmed once it is recorded");
      return;
    }
    this.#unrecorded.changes -= p.changes;
    this.#unrecorded.commands -= p.commands;
    this.#unrecorded.skipped -= p.skipped;
    this.#unrecorded.deadLetters -= p.deadLetters;
    this.#confirm(lsn);
  }

  /** Records the bound alone (a slot adopted from a row that did not track it yet). */
  async #recordBound(lsn: string): Promise<void> {
    const { sql, source } = this.opts;
    await sql`
      update cdc_sources
         set slot_bound_lsn = greatest(coalesce(slot_bound_lsn, '0/0')::pg_lsn, ${lsn}::pg_lsn)::text, slot_bound_at = now(), updated_at = now()
       where source = ${source.name}`;
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
    // A lost status update is sent again on the next tick (statusMs); the stream's own error ends the session.
    void service.acknowledge(formatLsn(confirmed - 1n), ping).catch((err: unknown) => this.opts.log.debug({ err }, "status update not sent"));
  }

  /**
   * A keepalive. When nothing is in flight — no open transaction, nothing queued in the library or
   * waiting for JetStream — everything up to the server's position has been handled, so the slot
   * may advance to it: an idle source does not pin WAL.
   */
  #onKeepalive(lsn: string, shouldRespond: boolean): void {
    // A failed publish took its batch out of #ready: until the session ends nothing may be confirmed.
    const idle =
      this.#failure === null &&
      this.#open === null &&
      this.#ready.length === 0 &&
      this.#flushing === null &&
      this.#catalogBehind === 0 &&
      this.#confirmsPending === 0 &&
      !libraryBusy(this.#service);
    if (idle && this.#resnapshot && parseLsn(lsn) >= parseLsn(this.#resnapshot.lsn)) {
      // The stream has passed the re-snapshot's position with nothing in between: place it now.
      void this.#placeResnapshot().catch((err) => this.#fail(err));
      return;
    }
    // Advancing an idle slot only keeps WAL from piling up: once a second is plenty. (A server busy
    // with other databases sends a keepalive for nearly every transaction the slot skips, and a
    // status update for each cost the reader several percent of its CPU.)
    const advance = idle && !this.#resnapshot && !this.#advancing && parseLsn(lsn) > parseLsn(this.metrics.confirmedLsn);
    if (shouldRespond) this.#sendStatus();
    if (advance && (shouldRespond || Date.now() - this.#idleAdvancedAt >= Math.min(1000, this.opts.source.statusMs))) {
      this.#idleAdvancedAt = Date.now();
      this.#advancing = true;
      void this.#recordAndConfirm(lsn, null, null).finally(() => (this.#advancing = false));
    }
  }

  #snapshotOptions(): SnapshotOptions {
    return {
      source: this.opts.source,
      ledger: this.opts.sql,
      js: this.opts.js,
      nc: this.opts.nc,
      topology: this.opts.topology,
      crosswalk: this.#crosswalk!,
      log: this.opts.log,
      onDeadLetter: (d) => this.#countDead(d),
      sourceSql: this.#sourceSql!,
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
      // The request stays pending in cdc_sources: the next tick tries again.
      this.opts.log.warn({ err }, "re-snapshot could not start; trying again");
    } finally {
      this.#checkingResnapshot = false;
    }
  }

  async #checkResnapshotRequest(): Promise<void> {
    if (this.#resnapshot || !this.#connected) return;
    const { sql, source, log } = this.opts;
    const [row] = await sql<[{ requested: boolean } | undefined]>`
      select resnapshot_requested_at is not null as requested from cdc_sources where source = ${source.name}`.catch((err: unknown) => {
      log.debug({ err }, "re-snapshot request check failed; checking again on the next tick");
      return [undefined];
    });
    if (!row?.requested || this.#resnapshot) return;
    // Creating a slot waits until every transaction running on the server (any database) has ended:
    // say which ones while it waits, so an operator can see what holds a re-snapshot back.
    const stopReports = reportSlotWait(
      this.#sourceSql!,
      (waitingFor, waitedMs) =>
        log.warn(
          { waitedSeconds: Math.round(waitedMs / 1000), waitingFor },
          "re-snapshot: still waiting for the source's running transactions to end before the slot can be created",
        ),
      { firstMs: 10_000 },
    );
    let exported: Awaited<ReturnType<typeof createExportedSlot>>;
    try {
      exported = await createExportedSlot(source.url, `${source.slot}_resnapshot`, { temporary: true });
    } finally {
      stopReports();
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
      {
        ...this.#snapshotOptions(),
        sink: async (c) => void commands.push(...c),
        onHandByReconciliation: true,
        catalogSink: (facts) => (resnapshot.catalog = facts),
      },
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
                     resnapshot_requested_at = null, updated_at = now(),
                     reconcile_requested_at = case when ${source.onHand !== undefined} then now() else reconcile_requested_at end
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
    const resnapshot: Resnapshot = { lsn: exported.consistentPoint, ready, catalog: [] };
    this.#resnapshot = resnapshot;
  }

  /**
   * Queues the re-snapshot's commands (waiting for its read to finish) before anything committed
   * after its position. Called from a BEGIN at or after it and from an idle keepalive: both wait
   * for the one placement.
   */
  #placeResnapshot(): Promise<void> {
    const r = this.#resnapshot;
    if (!r) return Promise.resolve();
    r.placed ??= this.#place(r);
    return r.placed;
  }

  async #place(r: Resnapshot): Promise<void> {
    const entry = await r.ready;
    // Its catalog version in source order, as an item's (it holds the item master): after every
    // version of a transaction before its consistent point, price-only ones still on the catalog
    // lane included, and before any after it (their BEGIN waits for this). Recorded before its
    // commands are queued, so its position is never confirmed without it.
    await this.#catalogLane;
    if (this.#failure) throw this.#failure;
    await recordCatalogVersion(this.opts.sql, { source: this.opts.source.name, ref: `snapshot:${r.lsn}`, sourceAt: null, facts: r.catalog });
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
      // A heartbeat is a liveness hint: the next one is written on the next tick.
      this.opts.log.debug({ err }, "heartbeat write failed");
    }
  }

  async #checkLag(): Promise<void> {
    const { source, log } = this.opts;
    try {
      const [row] = await this.#sourceSql!<[{ lag: string | null } | undefined]>`
        select pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint::text as lag
          from pg_replication_slots where slot_name = ${source.slot}`;
      const lag = row?.lag === null || row?.lag === undefined ? null : Number(row.lag);
      this.metrics.lagBytes = lag;
      if (lag !== null && lag > source.lagAlertBytes)
        this.#alert("cdc_lag", { lagBytes: lag, thresholdBytes: source.lagAlertBytes }, "replication lag above the alert threshold", "warn");
    } catch (err) {
      // Lag is a metric: the next tick measures it again.
      log.debug({ err }, "lag check failed");
    }
  }

  /**
   * A captured table missing from the publication (dropped and created again, or removed by hand)
   * sends no changes at all, and nothing else would say so: alert, naming the tables and the fix.
   */
  async #checkPublication(): Promise<void> {
    if (Date.now() - this.#publicationCheckedAt < PUBLICATION_CHECK_MS) return;
    this.#publicationCheckedAt = Date.now();
    const { source, log } = this.opts;
    let row: { exists: boolean; tables: Array<string> } | undefined;
    try {
      [row] = await this.#sourceSql!<Array<{ exists: boolean; tables: Array<string> }>>`
        select exists (select 1 from pg_publication where pubname = ${source.publication}) as exists,
               array(select schemaname || '.' || tablename from pg_publication_tables where pubname = ${source.publication}) as tables`;
    } catch (err) {
      // A check, not the stream: the next tick checks again.
      log.debug({ err }, "publication check failed");
      return;
    }
    const published = new Set(row!.tables);
    const missing = Object.keys(source.tables)
      .filter((t) => !published.has(t))
      .sort();
    const changed = missing.join(",") !== this.metrics.publicationMissing.join(",");
    this.metrics.publicationMissing = missing;
    if (missing.length === 0) {
      if (changed) log.info({ publication: source.publication }, "every captured table is in the publication again");
      return;
    }
    if (!changed && Date.now() - this.#publicationAlertAt < ALERT_REPEAT_MS) return;
    this.#publicationAlertAt = Date.now();
    this.#alert(
      "cdc_publication_incomplete",
      { publication: source.publication, publicationExists: row!.exists, tables: missing, action: `tally source enable ${source.name}` },
      `${row!.exists ? `publication ${source.publication} lacks captured tables` : `publication ${source.publication} does not exist`} ` +
        `(${missing.join(", ")}): their changes are not captured. \`tally source enable ${source.name}\` repairs it; ` +
        `changes made before then are not captured, so check those tables (or \`tally source resnapshot ${source.name}\`)`,
    );
  }

  /**
   * A Relation message names a table's relation id. A captured table seen before under another id
   * was dropped and created again: rows it held are gone without delete events, and changes made
   * while it was out of the publication were never sent.
   */
  async #onRelation(rel: Pgoutput.MessageRelation): Promise<void> {
    const { sql, source, log } = this.opts;
    const table = `${rel.schema}.${rel.name}`;
    if (!(table in source.tables)) return;
    const known = this.#relationIds.get(table);
    if (known === rel.relationOid) return;
    this.#relationIds.set(table, rel.relationOid);
    await sql`
      update cdc_sources set relation_ids = relation_ids || ${sql.json({ [table]: rel.relationOid })} where source = ${source.name}`.catch((err) =>
      log.warn({ err }, "could not record a table's relation id"),
    );
    if (known === undefined) return;
    this.#alert(
      "cdc_table_recreated",
      { table, previousRelationId: known, relationId: rel.relationOid, action: `tally source resnapshot ${source.name}` },
      `captured table ${table} was dropped and created again (relation id ${known} → ${rel.relationOid}): its old rows went without ` +
        `delete events, and changes made while it was out of the publication were not captured; check its stock (or \`tally source resnapshot ${source.name}\`)`,
    );
  }

  /** An alert: logged, and published on core NATS `tally.<env>.events.alert` (the events stream keeps it). */
  #alert(kind: AlertEvent["kind"], fields: Record<string, unknown>, message: string, level: "warn" | "error" = "error"): void {
    const { source, nc, topology, log } = this.opts;
    const alert: AlertEvent = { type: "alert", kind, source: source.name, slot: source.slot, ...fields, message, at: new Date().toISOString() };
    log[level](alert, message);
    try {
      // Core NATS, not JetStream: the alert must go out even when JetStream is what is failing.
      nc.publish(topology.eventSubject("alert"), JSON.stringify(alert));
    } catch {
      // Disconnected: the log line is the alert.
    }
  }

  #sleep(ms: number): Promise<void> {
    return sleep(ms, this.signal);
  }
}

/** Keeps the last 10,000 samples. */
function sampleTiming(list: Array<number>, ms: number): void {
  if (list.length >= 20_000) list.splice(0, 10_000);
  list.push(ms);
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
