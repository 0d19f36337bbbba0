/**
 * Reconciliation with a source's system of record: its stock on hand (the mapping's `onHand`
 * declaration), read in one REPEATABLE READ snapshot at a WAL position, against the ledger's
 * on_hand once CDC has published and the workers have applied every change up to that position.
 */
import { createHash } from "node:crypto";
import type { JetStreamManager } from "@nats-io/jetstream";
import type { Sql, TransactionSql } from "postgres";
import { type Command, decodeCommand, MappingError, RowView } from "../src/contract/index.ts";
import { sleep } from "../src/platform/index.ts";
import type { Topology } from "../src/wire/index.ts";
import { quoteIdent } from "./admin.ts";
import type { Crosswalk } from "./crosswalk.ts";
import { parseLsn } from "./lsn.ts";
import type { ResolvedSource } from "./sources.ts";

/** A reconciliation that could not run (no declaration, a timeout): the message is the whole story. */
export class ReconcileError extends Error {
  override readonly name = "ReconcileError";
}

/** On-hand in base units per `sku\u0000location`. */
type OnHand = Map<string, { readonly sku: string; readonly location: string; qty: number }>;

/** The source's on-hand at one WAL position, in SKUs and base units. */
export interface SourceOnHand {
  /** `pg_current_wal_lsn()` inside the snapshot the rows were read in. */
  readonly lsn: string;
  readonly onHand: OnHand;
  /** Every location the source keeps on-hand for (only these are compared). */
  readonly locations: ReadonlySet<string>;
  /** Rows the mapping or the crosswalk could not turn into a SKU and base units (not compared). */
  readonly unmapped: ReadonlyArray<{ readonly row: string; readonly error: string }>;
  /** What the `inFlight` hook said the ledger holds that the source had not received at the snapshot. */
  readonly inFlight: OnHand;
}

/**
 * Units per (SKU, location) the ledger holds that the source has not received yet (write-back still
 * in flight: a POS sale of 3 not yet in the ERP is −3). Called before the source's snapshot is taken
 * (to read what must be read before it, like the write-back's position), it returns the reader that
 * runs inside that snapshot (`sourceTx`), so that it matches the on-hand read there. Reconciliation
 * subtracts them from the ledger's side.
 */
export type InFlight = (
  source: ResolvedSource,
) => Promise<(sourceTx: TransactionSql) => Promise<ReadonlyArray<{ readonly sku: string; readonly location: string; readonly qty: number }>>>;

export interface Drift {
  readonly sku: string;
  readonly location: string;
  readonly ledger: number;
  readonly source: number;
  /** source − (ledger − inFlight) */
  readonly diff: number;
  /** Present when not 0: units of the ledger still on their way to the source (see InFlight). */
  readonly inFlight?: number;
}

export interface ReconcileReport {
  readonly source: string;
  /** The source's WAL position the comparison is at. */
  readonly at: string;
  readonly drift: ReadonlyArray<Drift>;
}

const pairKey = (sku: string, location: string) => `${sku}\u0000${location}`;

function add(onHand: OnHand, sku: string, location: string, qty: number): void {
  const k = pairKey(sku, location);
  const have = onHand.get(k);
  if (have) have.qty += qty;
  else onHand.set(k, { sku, location, qty });
}

/** One row → its SKUs (a bundle: its components) and base units, through the crosswalk. */
function mapOnHandRow(source: ResolvedSource, crosswalk: Crosswalk, raw: Record<string, string | null>, onHand: OnHand): void {
  const declared = source.onHand!;
  const row = declared.map(new RowView(declared.table, "new", raw));
  const resolved = crosswalk.resolve(
    { type: "count", item: row.item, location: row.location, qty: row.qty, ...(row.uom !== undefined ? { uom: row.uom } : {}) },
    { source: source.name, id: `reconcile:${source.name}`, ref: declared.table, occurredAt: new Date().toISOString() },
  );
  if (resolved.kind === "skipped") return;
  for (const c of resolved.commands) add(onHand, c.sku, c.location, "qty" in c && typeof c.qty === "number" ? c.qty : 0);
}

/** Reads the source's declared on-hand table in one REPEATABLE READ snapshot, with the snapshot's WAL position. */
export async function readSourceOnHand(sourceSql: Sql, source: ResolvedSource, crosswalk: Crosswalk, inFlight?: InFlight): Promise<SourceOnHand> {
  const declared = source.onHand;
  if (!declared) throw new ReconcileError(`source ${source.name}: its mapping declares no onHand table, so it cannot be reconciled`);
  const onHand: OnHand = new Map();
  const locations = new Set<string>();
  const unmapped: Array<{ row: string; error: string }> = [];
  const pending: OnHand = new Map();
  const [schema, table] = declared.table.split(".") as [string, string];
  const pendingIn = inFlight ? await inFlight(source) : null; // before the snapshot
  const lsn = await sourceSql.begin("isolation level repeatable read read only", async (tx) => {
    const [{ lsn }] = await tx<[{ lsn: string }]>`select pg_current_wal_lsn()::text as lsn`;
    const columns = await tx<Array<{ column_name: string }>>`
      select column_name from information_schema.columns where table_schema = ${schema} and table_name = ${table} order by ordinal_position`;
    if (columns.length === 0) throw new ReconcileError(`source ${source.name}: on-hand table ${declared.table} does not exist`);
    const list = columns.map((c) => `${quoteIdent(c.column_name)}::text as ${quoteIdent(c.column_name)}`).join(", ");
    const rows = await tx.unsafe<Array<Record<string, string | null>>>(`select ${list} from ${quoteIdent(schema)}.${quoteIdent(table)}`);
    for (const raw of rows) {
      try {
        mapOnHandRow(source, crosswalk, raw, onHand);
      } catch (error) {
        if (!(error instanceof MappingError)) throw error;
        unmapped.push({ row: JSON.stringify(raw), error: error.message });
      }
    }
    for (const p of pendingIn ? await pendingIn(tx) : []) add(pending, p.sku, p.location, p.qty);
    return lsn;
  });
  for (const v of onHand.values()) locations.add(v.location);
  return { lsn, onHand, locations, unmapped, inFlight: pending };
}

/** The ledger's on_hand at the source's locations. */
async function readLedgerOnHand(ledger: Sql, locations: ReadonlySet<string>): Promise<OnHand> {
  const rows = await ledger<Array<{ sku: string; location: string; qty: string }>>`
    select sku, location, qty::text as qty from balances
     where bucket = 'on_hand' and location = any(${ledger.array([...locations])}::text[])`;
  const onHand: OnHand = new Map();
  for (const r of rows) add(onHand, r.sku, r.location, Number(r.qty));
  return onHand;
}

/**
 * Every (SKU, location) whose on-hand differs by more than `tolerance` (missing on one side = 0), sorted;
 * units in flight to the source (`inFlight`) are taken off the ledger's side first.
 */
export function compareOnHand(source: OnHand, ledger: OnHand, tolerance: number, inFlight: OnHand = new Map()): Array<Drift> {
  const keys = new Set([...source.keys(), ...ledger.keys()]);
  const drift: Array<Drift> = [];
  for (const k of keys) {
    const s = source.get(k);
    const l = ledger.get(k);
    const { sku, location } = (s ?? l)!;
    const pending = inFlight.get(k)?.qty ?? 0;
    const diff = (s?.qty ?? 0) - ((l?.qty ?? 0) - pending);
    if (Math.abs(diff) > tolerance)
      drift.push({ sku, location, ledger: l?.qty ?? 0, source: s?.qty ?? 0, diff, ...(pending !== 0 ? { inFlight: pending } : {}) });
  }
  return drift.sort((a, b) => (a.sku === b.sku ? (a.location < b.location ? -1 : 1) : a.sku < b.sku ? -1 : 1));
}

/** Compares a source read with the ledger as it is now (call `waitForLedger` first). */
export async function reconcileReport(ledger: Sql, read: SourceOnHand, source: string, tolerance: number): Promise<ReconcileReport> {
  const ledgerOnHand = await readLedgerOnHand(ledger, read.locations);
  return { source, at: read.lsn, drift: compareOnHand(read.onHand, ledgerOnHand, tolerance, read.inFlight) };
}

export interface WaitOptions {
  readonly ledger: Sql;
  readonly jsm: JetStreamManager;
  readonly topology: Topology;
  readonly source: string;
  readonly lsn: string;
  readonly timeoutMs: number;
  /** Ends the wait early (a stopping cdc role): it then fails with a ReconcileError. */
  readonly signal?: AbortSignal;
}

async function until(what: () => string, deadline: number, check: () => Promise<boolean>, signal?: AbortSignal): Promise<void> {
  while (!(await check())) {
    if (signal?.aborted) throw new ReconcileError("reconciliation stopped while waiting for the ledger");
    if (Date.now() > deadline) throw new ReconcileError(what());
    await sleep(100, signal);
  }
}

/**
 * Waits until CDC has published every change of the source up to `lsn` (its recorded confirmed
 * position reached it) and the workers have applied every command the commands stream held then
 * (each partition's checkpoint reached that partition's last message).
 */
export async function waitForLedger(opts: WaitOptions): Promise<void> {
  const { ledger, jsm, topology, source, lsn, timeoutMs, signal } = opts;
  const deadline = Date.now() + timeoutMs;
  const target = parseLsn(lsn);
  const seconds = timeoutMs / 1000;
  let confirmed: string | null = null;
  await until(
    () => `source ${source}: CDC has not published up to ${lsn} after ${seconds}s (confirmed ${confirmed ?? "nothing"}; is the cdc role running?)`,
    deadline,
    async () => {
      const [row] = await ledger<
        [{ confirmed: string | null } | undefined]
      >`select confirmed_lsn as confirmed from cdc_sources where source = ${source}`;
      confirmed = row?.confirmed ?? null;
      return confirmed !== null && parseLsn(confirmed) >= target;
    },
    signal,
  );
  // A partition resize under way: its old layout's messages are applied before its switch; wait for it.
  await until(
    () => `source ${source}: a partition resize is still under way after ${seconds}s (tally partitions status)`,
    deadline,
    async () => (await ledger`select 1 from partition_layouts where state = 'draining'`).length === 0,
    signal,
  );
  // The layout the stream takes commands under now, not the one this process last published under:
  // after a resize the old subjects' last messages may lie past the new checkpoints, which read other subjects.
  const subjects = (await jsm.streams.info(topology.commandsStream)).config.subjects ?? [];
  const t = topology.withLayout(topology.layoutOfStreamSubjects(subjects) ?? topology.layout);
  const wanted = new Map<number, number>();
  for (let p = 0; p < t.partitions; p++) {
    const m = await jsm.streams.getMessage(t.commandsStream, { last_by_subj: t.commandSubject(p) });
    if (m) wanted.set(p, m.seq);
  }
  await until(
    () => `source ${source}: the workers have not applied the commands up to ${lsn} after ${seconds}s (is a worker running?)`,
    deadline,
    async () => {
      const rows = await ledger<Array<{ partition: number; seq: string }>>`select partition, last_seq::text as seq from partition_checkpoints`;
      const applied = new Map(rows.map((r) => [r.partition, Number(r.seq)]));
      return [...wanted].every(([p, seq]) => (applied.get(p) ?? 0) >= seq);
    },
    signal,
  );
}

/**
 * The `count` commands that set the ledger to the source's on-hand (plus what is still in flight to
 * it), one per drifted pair. Ids derive from the source, SKU, location, the source's WAL position and
 * quantity: running again on the same read publishes the same ids (JetStream and the workers drop the duplicates).
 */
export function reconciliationCommands(report: ReconcileReport, occurredAt: string): Array<Command> {
  return report.drift.map((d) => {
    const qty = d.source + (d.inFlight ?? 0);
    const digest = createHash("sha256").update(`${report.source}\u0000${d.sku}\u0000${d.location}\u0000${report.at}\u0000${qty}`).digest("hex");
    const decoded = decodeCommand({
      id: `reconcile:${report.source}:${digest.slice(0, 32)}`,
      type: "count",
      sku: d.sku,
      location: d.location,
      qty,
      reason: "reconciliation",
      source: { system: report.source, ref: `reconciliation:${report.at}`, lsn: report.at },
      occurredAt,
    });
    if (decoded._tag === "Left") throw new ReconcileError(`reconcile: ${d.sku} at ${d.location}: ${decoded.left.message}`);
    return decoded.right;
  });
}
