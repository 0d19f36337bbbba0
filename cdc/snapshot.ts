import pg from "pg";
import postgres from "postgres";
import type { JetStreamClient } from "@nats-io/jetstream";
import type { Sql } from "postgres";
import type { Logger } from "pino";
import type { Command } from "../actors/index.ts";
import { deadLetter, type DeadLetter } from "../src/deadLetters.ts";
import { publishCommands } from "../src/publisher.ts";
import type { Topology } from "../src/topology.ts";
import { Crosswalk } from "./crosswalk.ts";
import { mapWith } from "./mapper.ts";
import { RowView } from "./mapping.ts";
import type { ResolvedSource } from "./sources.ts";

export interface SnapshotOptions {
  readonly source: ResolvedSource;
  readonly ledger: Sql;
  readonly js: JetStreamClient;
  readonly topology: Topology;
  readonly crosswalk: Crosswalk;
  readonly log: Logger;
  readonly onDeadLetter?: (d: DeadLetter) => void;
  /** Progress per table: rows read of total. */
  readonly onProgress?: (table: string, read: number, total: number) => void;
  /** Where the snapshot's commands go (default: published at once). A re-snapshot holds them back until the stream reaches the consistent point. */
  readonly sink?: (commands: ReadonlyArray<Command>) => Promise<void>;
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

/** True when the source has no completed snapshot recorded, or its slot is gone. */
export async function snapshotNeeded(ledger: Sql, sourceSql: Sql, source: ResolvedSource): Promise<boolean> {
  const [state] = await ledger<[{ done: boolean } | undefined]>`
    select snapshot_done_at is not null as done from cdc_sources where source = ${source.name}`;
  if (!state?.done) return true;
  const slots = await sourceSql`select 1 from pg_replication_slots where slot_name = ${source.slot}`;
  return slots.length === 0;
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
 * definitions, so applying part of an older one first is harmless).
 */
export async function runSnapshot(opts: SnapshotOptions): Promise<SnapshotResult> {
  const { source, ledger, log } = opts;
  const repl = new pg.Client({ connectionString: source.url, replication: "database" } as pg.ClientConfig);
  await repl.connect();
  try {
    const existing = await repl.query(`SELECT active_pid FROM pg_replication_slots WHERE slot_name = '${source.slot}'`);
    if (existing.rows.length > 0) {
      if (existing.rows[0].active_pid) throw new Error(`slot ${source.slot} is in use by backend ${existing.rows[0].active_pid}; is another CDC reader running?`);
      await repl.query(`DROP_REPLICATION_SLOT ${quoteIdent(source.slot)}`);
    }
    const created = await repl.query(`CREATE_REPLICATION_SLOT ${quoteIdent(source.slot)} LOGICAL pgoutput EXPORT_SNAPSHOT`);
    const consistentPoint: string = created.rows[0].consistent_point;
    const snapshotName: string = created.rows[0].snapshot_name;
    await ledger`
      update cdc_sources set snapshot_lsn = ${consistentPoint}, snapshot_done_at = null, updated_at = now()
       where source = ${source.name}`;
    log.info({ slot: source.slot, consistentPoint }, "snapshot: slot created; reading tables");
    const result = await readSnapshot(opts, snapshotName, consistentPoint);
    await ledger`
      update cdc_sources
         set snapshot_done_at = now(), snapshot_rows = ${result.rows}, confirmed_lsn = ${consistentPoint}, updated_at = now()
       where source = ${source.name}`;
    log.info({ ...result }, "snapshot: done");
    return result;
  } finally {
    // Closing the replication connection ends the exported snapshot (the slot stays).
    await repl.end().catch(() => {});
  }
}

/** Reads every snapshot table inside `snapshotName` and publishes what the rows map to. */
export async function readSnapshot(opts: SnapshotOptions, snapshotName: string, consistentPoint: string): Promise<SnapshotResult> {
  const { source, ledger, js, topology, crosswalk, log } = opts;
  const sql = postgres(source.url, { max: 1, onnotice: () => {}, connection: { application_name: `tally-snapshot-${source.name}` } });
  let rows = 0;
  let commandsOut = 0;
  let deadOut = 0;
  let pending: Array<Command> = [];
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
      for (const table of source.snapshot) {
        const [schema, name] = table.table.split(".");
        const columns = await tx<Array<{ column_name: string }>>`
          select column_name from information_schema.columns
           where table_schema = ${schema!} and table_name = ${name!} order by ordinal_position`;
        if (columns.length === 0) throw new Error(`snapshot: table ${table.table} does not exist in source ${source.name}`);
        const [{ total }] = await tx.unsafe<[{ total: string }]>(`select count(*)::text as total from ${quoteTable(table.table)}`);
        const list = columns.map((c) => `${quoteIdent(c.column_name)}::text as ${quoteIdent(c.column_name)}`).join(", ");
        const order = table.key.map(quoteIdent).join(", ");
        let read = 0;
        const cursor = tx.unsafe<Array<Record<string, string | null>>>(`select ${list} from ${quoteTable(table.table)} order by ${order}`).cursor(1000);
        for await (const chunk of cursor) {
          const items = [];
          const removed: Array<string> = [];
          for (const raw of chunk) {
            read++;
            const keyText = table.key.map((k) => raw[k] ?? "").join("/");
            const outcome = mapWith(
              source.name,
              crosswalk,
              `${source.name}:snapshot:${consistentPoint}:${table.table}:${keyText}`,
              `${table.table}:${keyText}`,
              new Date().toISOString(),
              consistentPoint,
              () => table.map(new RowView(table.table, "new", raw)),
            );
            if (outcome.error) {
              const d = deadLetter(source.name, outcome.error.message, { table: table.table, op: "snapshot", new: raw }, {
                source: source.name,
                lsn: consistentPoint,
                table: table.table,
                key: keyText,
                code: outcome.error.reason,
              });
              await js.publish(topology.dlqSubject(source.name), JSON.stringify(d), { msgID: `dlq:${source.name}:snapshot:${consistentPoint}:${table.table}:${keyText}` });
              opts.onDeadLetter?.(d);
              deadOut++;
              continue;
            }
            items.push(...outcome.items);
            removed.push(...outcome.removedItems);
            pending.push(...outcome.commands);
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
  } finally {
    await sql.end({ timeout: 5 });
  }
  return { consistentPoint, rows, commands: commandsOut, deadLetters: deadOut };
}
