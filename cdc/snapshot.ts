import pg from "pg";
import postgres from "postgres";
import type { JetStreamClient } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import type { Sql } from "postgres";
import type { Logger } from "pino";
import type { Command } from "../src/contract/index.ts";
import { deadLetter, publishDeadLetter, type DeadLetter } from "../src/wire/index.ts";
import { publishCommands } from "../src/wire/index.ts";
import type { Topology } from "../src/wire/index.ts";
import { Crosswalk } from "./crosswalk.ts";
import { mapWith } from "./mapper.ts";
import { recordCatalogVersion, type ResolvedCatalogFact } from "./catalog.ts";
import { RowView, snapshotCommandId, snapshotKeyText, type MappingError } from "../src/contract/index.ts";
import type { ResolvedSource } from "./sources.ts";

export interface SnapshotOptions {
  readonly source: ResolvedSource;
  readonly ledger: Sql;
  readonly js: JetStreamClient;
  /** Tells NATS's max_payload, for dead letters too large for it (kept in the ledger database). */
  readonly nc?: NatsConnection;
  readonly topology: Topology;
  readonly crosswalk: Crosswalk;
  readonly log: Logger;
  readonly onDeadLetter?: (d: DeadLetter) => void;
  /** Progress per table: rows read of total. */
  readonly onProgress?: (table: string, read: number, total: number) => void;
  /** Where the snapshot's commands go (default: published at once). A re-snapshot holds them back until the stream reaches the consistent point. */
  readonly sink?: (commands: ReadonlyArray<Command>) => Promise<void>;
  /** A plain connection to the source, to say which transactions a slot's creation waits for. */
  readonly sourceSql?: Sql;
  /**
   * A re-snapshot: the snapshot table that is also the source's `onHand` table is not read, so its
   * counts do not overwrite on-hand that Tally moved since (POS sales the source has not seen);
   * reconciliation sets on-hand instead, as the system of record says.
   */
  readonly onHandByReconciliation?: boolean;
  /**
   * Takes the snapshot's catalog facts instead of recording them as a catalog version when the read
   * ends: a re-snapshot records its version at its place in the stream, after the versions of the
   * transactions before its consistent point (some may still be queued) and before any after it.
   */
  readonly catalogSink?: (facts: ReadonlyArray<ResolvedCatalogFact>) => void;
}

/** A transaction running on the source server, which a new slot waits for before it is consistent. */
export interface RunningTransaction {
  /** Null for a prepared transaction (it belongs to no backend). */
  readonly pid: number | null;
  readonly database: string | null;
  readonly state: string | null;
  readonly ageSeconds: number;
  readonly query: string;
}

/**
 * The oldest transactions on the source server that hold a transaction id, prepared ones included:
 * creating a logical slot waits until every one of them has ended (on any database of the server).
 * A role without `pg_read_all_stats` sees only its own sessions' transactions.
 */
export async function runningTransactions(sourceSql: Sql): Promise<Array<RunningTransaction>> {
  return sourceSql<Array<RunningTransaction>>`
    select pid, database, state, "ageSeconds", query from (
      select pid, datname as database, state, extract(epoch from now() - xact_start)::float8 as "ageSeconds", left(query, 120) as query
        from pg_stat_activity
       where backend_xid is not null and pid <> pg_backend_pid()
      union all
      select null, database, 'prepared', extract(epoch from now() - prepared)::float8, 'PREPARE TRANSACTION ' || quote_literal(gid)
        from pg_prepared_xacts
    ) t
    order by "ageSeconds" desc limit 5`;
}

/**
 * While a slot is being created, reports every `everyMs` (the first time after `firstMs`) which
 * transactions it is waiting for; a slot on a busy server can wait for minutes, and without this
 * nothing would say why. Returns the function that stops the reports.
 */
export function reportSlotWait(
  sourceSql: Sql,
  report: (waitingFor: ReadonlyArray<RunningTransaction>, waitedMs: number) => Promise<void> | void,
  opts: { firstMs?: number; everyMs?: number } = {},
): () => void {
  const started = Date.now();
  let stopped = false;
  let timer: NodeJS.Timeout;
  const tick = async () => {
    const rows = await runningTransactions(sourceSql).catch(() => null);
    if (stopped) return;
    if (rows) await Promise.resolve(report(rows, Date.now() - started)).catch(() => {});
    if (!stopped) timer = setTimeout(() => void tick(), opts.everyMs ?? 10_000);
  };
  timer = setTimeout(() => void tick(), opts.firstMs ?? 2_000);
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

/**
 * A replication connection that created `slot` with an exported snapshot. The snapshot stays
 * usable while this connection is open and idle; `close()` ends it (a TEMPORARY slot goes too).
 */
export async function createExportedSlot(
  url: string,
  slot: string,
  opts: { temporary?: boolean } = {},
): Promise<{ consistentPoint: string; snapshotName: string; close: () => Promise<void> }> {
  const repl = new pg.Client({ connectionString: url, replication: "database" } as pg.ClientConfig);
  // A server that goes away while the slot is held must not crash the process: what uses the snapshot fails instead.
  repl.on("error", () => {});
  await repl.connect();
  try {
    const created = await repl.query(
      `CREATE_REPLICATION_SLOT ${quoteIdent(slot)}${opts.temporary ? " TEMPORARY" : ""} LOGICAL pgoutput EXPORT_SNAPSHOT`,
    );
    return {
      consistentPoint: created.rows[0].consistent_point,
      snapshotName: created.rows[0].snapshot_name,
      close: () => repl.end().catch(() => {}),
    };
  } catch (error) {
    await repl.end().catch(() => {});
    throw error;
  }
}

export interface SnapshotResult {
  readonly consistentPoint: string;
  readonly rows: number;
  readonly commands: number;
  readonly deadLetters: number;
}

const quoteIdent = (s: string) => `"${s.replace(/"/g, '""')}"`;
const quoteTable = (t: string) => t.split(".").map(quoteIdent).join(".");

/**
 * The initial snapshot: (re)creates the source's permanent slot with an exported snapshot, reads
 * the configured tables inside that snapshot (item master first, then opening balances) and
 * publishes their commands with ids derived from the slot's consistent point and each row's key,
 * then records the snapshot done. Streaming then starts at the consistent point, so every change
 * is either in the snapshot or in the stream, never both and never neither. An interrupted
 * snapshot is redone from scratch with a new slot (its commands are absolute `count`s and item
 * definitions, so applying part of an older one first is harmless). The new slot's consistent point
 * is recorded as its bound (see slotIdentity.ts), and a halted source is no longer halted: this is
 * the operator's chosen way out.
 */
export async function runSnapshot(opts: SnapshotOptions): Promise<SnapshotResult> {
  const { source, ledger, log } = opts;
  const repl = new pg.Client({ connectionString: source.url, replication: "database" } as pg.ClientConfig);
  // A server that goes away mid-snapshot must not crash the process (an unhandled 'error'): the snapshot's queries fail instead.
  repl.on("error", (err: Error) => log.warn({ err }, "snapshot: the replication connection failed"));
  await repl.connect();
  try {
    const existing = await repl.query(`SELECT active_pid FROM pg_replication_slots WHERE slot_name = '${source.slot}'`);
    if (existing.rows.length > 0) {
      if (existing.rows[0].active_pid)
        throw new Error(`slot ${source.slot} is in use by backend ${existing.rows[0].active_pid}; is another CDC reader running?`);
      await repl.query(`DROP_REPLICATION_SLOT ${quoteIdent(source.slot)}`);
    }
    // Creating the slot waits for every transaction running on the server: say which, while it does.
    const stopReports = opts.sourceSql
      ? reportSlotWait(opts.sourceSql, async (waitingFor, waitedMs) => {
          log.warn(
            { slot: source.slot, waitedSeconds: Math.round(waitedMs / 1000), waitingFor },
            waitingFor.length > 0
              ? "snapshot: creating the slot waits for these transactions on the source server to end"
              : "snapshot: creating the slot waits for transactions on the source server to end (none visible to this role: grant it pg_read_all_stats to see them)",
          );
          await ledger`
            update cdc_sources set snapshot_waiting_for = ${ledger.json({ since: new Date(Date.now() - waitedMs).toISOString(), transactions: waitingFor } as never)}
             where source = ${source.name}`;
        })
      : () => {};
    let created: pg.QueryResult;
    try {
      created = await repl.query(`CREATE_REPLICATION_SLOT ${quoteIdent(source.slot)} LOGICAL pgoutput EXPORT_SNAPSHOT`);
    } catch (error) {
      await ledger`update cdc_sources set snapshot_waiting_for = null where source = ${source.name}`.catch(() => {});
      throw error;
    } finally {
      stopReports();
    }
    const consistentPoint: string = created.rows[0].consistent_point;
    const snapshotName: string = created.rows[0].snapshot_name;
    await ledger`
      update cdc_sources
         set snapshot_lsn = ${consistentPoint}, snapshot_done_at = null, snapshot_waiting_for = null,
             slot_bound_lsn = ${consistentPoint}, slot_bound_at = now(),
             halted_at = null, halted_reason = null, halted_detail = null, updated_at = now()
       where source = ${source.name}`;
    log.info({ slot: source.slot, consistentPoint }, "snapshot: slot created; reading tables");
    const result = await readSnapshot(opts, snapshotName, consistentPoint);
    await ledger`
      update cdc_sources
         set snapshot_done_at = now(), snapshot_rows = ${result.rows}, confirmed_lsn = ${consistentPoint},
             resnapshot_requested_at = null, updated_at = now()
       where source = ${source.name}`;
    log.info({ ...result }, "snapshot: done");
    return result;
  } finally {
    // Closing the replication connection ends the exported snapshot (the slot stays).
    await repl.end().catch(() => {});
  }
}

/** The tables a snapshot reads: all, but a re-snapshot leaves the on-hand table to reconciliation. */
function snapshotTables({ source, onHandByReconciliation, log }: SnapshotOptions): SnapshotOptions["source"]["snapshot"] {
  if (!onHandByReconciliation || source.onHand === undefined) return source.snapshot;
  const left = source.snapshot.filter((t) => t.table === source.onHand!.table);
  if (left.length > 0) log.info({ table: source.onHand.table }, "re-snapshot: the on-hand table is left to reconciliation");
  return source.snapshot.filter((t) => t.table !== source.onHand!.table);
}

/**
 * Reads every snapshot table inside `snapshotName` and publishes what the rows map to; its catalog
 * facts become one catalog version (again after a re-snapshot: a new consistent point; see
 * `catalogSink`).
 */
export async function readSnapshot(opts: SnapshotOptions, snapshotName: string, consistentPoint: string): Promise<SnapshotResult> {
  const { source, ledger, js, topology, crosswalk, log } = opts;
  const sql = postgres(source.url, { max: 1, onnotice: () => {}, connection: { application_name: `tally-snapshot-${source.name}` } });
  let rows = 0;
  let commandsOut = 0;
  let deadOut = 0;
  let pending: Array<Command> = [];
  const catalog: Array<ResolvedCatalogFact> = [];
  const sink = opts.sink ?? (async (commands: ReadonlyArray<Command>) => void (await publishCommands(js, topology, commands)));
  const flush = async () => {
    if (pending.length === 0) return;
    await sink(pending);
    commandsOut += pending.length;
    pending = [];
  };
  try {
    await sql.begin("isolation level repeatable read read only", async (tx) => {
      await tx.unsafe(`set transaction snapshot '${snapshotName.replace(/'/g, "''")}'`);
      for (const table of snapshotTables(opts)) {
        const [schema, name] = table.table.split(".");
        const columns = await tx<Array<{ column_name: string }>>`
          select column_name from information_schema.columns
           where table_schema = ${schema!} and table_name = ${name!} order by ordinal_position`;
        if (columns.length === 0) throw new Error(`snapshot: table ${table.table} does not exist in source ${source.name}`);
        const [{ total }] = await tx.unsafe<[{ total: string }]>(`select count(*)::text as total from ${quoteTable(table.table)}`);
        const list = columns.map((c) => `${quoteIdent(c.column_name)}::text as ${quoteIdent(c.column_name)}`).join(", ");
        const order = table.key.map(quoteIdent).join(", ");
        let read = 0;
        const cursor = tx
          .unsafe<Array<Record<string, string | null>>>(`select ${list} from ${quoteTable(table.table)} order by ${order}`)
          .cursor(1000);
        for await (const chunk of cursor) {
          const items = [];
          const removed: Array<string> = [];
          for (const raw of chunk) {
            read++;
            const keyText = snapshotKeyText(table.key, raw);
            const outcome = mapWith(
              source.name,
              crosswalk,
              snapshotCommandId(source.name, consistentPoint, table.table, keyText),
              `${table.table}:${keyText}`,
              new Date().toISOString(),
              consistentPoint,
              () => table.map(new RowView(table.table, "new", raw)),
            );
            if (outcome.error) {
              await deadLetterRow(opts, { table: table.table, raw, keyText, consistentPoint, error: outcome.error });
              deadOut++;
              continue;
            }
            items.push(...outcome.items);
            removed.push(...outcome.removedItems);
            pending.push(...outcome.commands);
            catalog.push(...outcome.catalog);
          }
          await Crosswalk.persist(ledger, source.name, items, removed);
          if (pending.length >= 2000) await flush();
          rows += chunk.length;
          opts.onProgress?.(table.table, read, Number(total));
          if (read % 10_000 < chunk.length) log.info({ table: table.table, read, total: Number(total) }, "snapshot progress");
        }
        log.info({ table: table.table, read, total: Number(total) }, "snapshot: table read");
      }
    });
    await flush();
    if (opts.catalogSink) opts.catalogSink(catalog);
    else await recordCatalogVersion(ledger, { source: source.name, ref: `snapshot:${consistentPoint}`, sourceAt: null, facts: catalog });
  } finally {
    await sql.end({ timeout: 5 });
  }
  return { consistentPoint, rows, commands: commandsOut, deadLetters: deadOut };
}

/** A snapshot row its mapping refused: to the dead-letter stream, keyed by the snapshot and the row. */
async function deadLetterRow(
  opts: SnapshotOptions,
  row: { table: string; raw: Record<string, string | null>; keyText: string; consistentPoint: string; error: MappingError },
): Promise<void> {
  const { source, js, topology } = opts;
  const context = { source: source.name, lsn: row.consistentPoint, table: row.table, key: row.keyText, code: row.error.reason };
  const d = deadLetter(source.name, row.error.message, { table: row.table, op: "snapshot", new: row.raw }, context);
  await publishDeadLetter({ js, nc: opts.nc, sql: opts.ledger, topology }, d, { key: `snapshot:${row.consistentPoint}:${row.table}:${row.keyText}` });
  opts.onDeadLetter?.(d);
}
