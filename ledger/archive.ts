/**
 * The ledger archive: whole past months of `ledger_entries` (one partition each, migration 0086)
 * exported to NDJSON files with a manifest, then detached; and the check of those files against
 * their manifests and of the live ledger's chains against the archive's last cut.
 *
 * A month's file holds its entries in (sku, sku_seq) order, each line an entry as the ledger export
 * writes it (hash-chain fields included), so each SKU's chain reads as one run. Its manifest names
 * the file, its sha256 and row count, the month archived before it, and every SKU's chain state at
 * the cut (sequence and hash, plus the running sums and valuation that verify resumes with). The
 * same cut is recorded in `ledger_archive_heads`, from which `tally ledger verify` starts each chain.
 */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdir, readdir, readFile, rename, writeFile } from "node:fs/promises";
import path from "node:path";
import { createInterface } from "node:readline";
import type { Sql } from "postgres";
import { type ChainStateJson, readCut, stateJson } from "./archiveCut.ts";
import { type EntryRow, entryJson } from "./entryRow.ts";
import { quantityJson } from "./store.ts";
import type { ValuationMethod } from "./valuation.ts";
import { type ChainState, type ChainWalk, type VerifyReport, verifyLedger, walkChains } from "./verify.ts";

/** The archive was refused: a month not closed, not journaled, or in the default partition. */
export class ArchiveRefused extends Error {
  override readonly name = "ArchiveRefused";
}

/** The manifest format's name and version. */
export const ARCHIVE_FORMAT = "tally-ledger-archive/1";

export interface ArchiveManifest {
  readonly format: typeof ARCHIVE_FORMAT;
  readonly month: string;
  /** The month archived before this one (null: this is the first; chains start at genesis). */
  readonly previousMonth: string | null;
  readonly file: string;
  readonly sha256: string;
  readonly entries: number;
  /** recorded_at ≥ from and < to (UTC month bounds). */
  readonly from: string;
  readonly to: string;
  readonly archivedAt: string;
  /** Every SKU's chain state after this month (SKUs without entries in it carried over). */
  readonly heads: Readonly<Record<string, ChainStateJson>>;
}

export interface ArchivedMonth {
  readonly month: string;
  readonly file: string;
  readonly manifest: string;
  readonly sha256: string;
  readonly entries: number;
  /** The detached partition's new name, or null when it was dropped. */
  readonly detachedAs: string | null;
}

const MONTH = /^([0-9]{4})-(0[1-9]|1[0-2])$/;
const monthStart = (month: string): Date => new Date(`${month}-01T00:00:00.000Z`);
const nextMonth = (month: string): string => {
  const d = monthStart(month);
  d.setUTCMonth(d.getUTCMonth() + 1);
  return d.toISOString().slice(0, 7);
};
const fileOf = (month: string) => `ledger-${month}.ndjson`;
const manifestOf = (month: string) => `ledger-${month}.manifest.json`;
const partitionOf = (month: string) => `ledger_entries_${month.replace("-", "_")}`;
const sha256 = (text: string | Buffer) => createHash("sha256").update(text).digest("hex");

/** `--before`: a month, YYYY-MM. */
export function parseMonth(name: string, text: string): string {
  if (!MONTH.test(text)) throw new RangeError(`${name}: expected a month as YYYY-MM, got ${JSON.stringify(text)}`);
  return text;
}

async function valuationMethod(sql: Sql): Promise<ValuationMethod> {
  const [row] = await sql<Array<{ value: string }>>`select value from tally_meta where key = 'valuation_method'`;
  return row?.value === "fifo" ? "fifo" : "moving_average";
}

/** The live monthly partitions, oldest first. */
async function livePartitions(sql: Sql): Promise<Array<string>> {
  const rows = await sql<Array<{ name: string }>>`
    select c.relname as name from pg_inherits i join pg_class c on c.oid = i.inhrelid
     where i.inhparent = 'ledger_entries'::regclass and c.relname ~ '^ledger_entries_[0-9]{4}_[0-9]{2}$'
     order by c.relname`;
  return rows.map((r) => `${r.name.slice(15, 19)}-${r.name.slice(20, 22)}`);
}

/** Why `month` cannot be archived now, or null. */
async function refusal(sql: Sql, month: string, now: Date): Promise<string | null> {
  const to = monthStart(nextMonth(month));
  if (to.getTime() > now.getTime()) return `${month} is not closed (it ends at ${to.toISOString()}): only whole past months can be archived`;
  const part = sql(partitionOf(month));
  const [gl] = await sql<Array<{ horizon: string | null; journals: boolean }>>`
    select horizon::text as horizon, exists (select from gl_journals) as journals from gl_cursor where id = 1`;
  // The GL is in use once its poster has posted; then every entry of the month must be journaled.
  if (gl && (gl.horizon !== null || gl.journals)) {
    const [{ n }] = await sql<[{ n: number }]>`
      select count(*)::int as n from ${part}
       where bucket <> 'reserved' and txid is not null and (${gl.horizon}::xid8 is null or txid >= ${gl.horizon}::xid8)`;
    if (n > 0)
      return `${month} holds ${n} entries the GL poster has not journaled yet (its cursor is at ${gl.horizon ?? "the start"}): let the worker's poster catch up, then archive again`;
  }
  // A write-back to a source (cdc/writeBack.ts) follows the ledger by the same txid horizon.
  const behind = await sql<Array<{ source: string; n: number }>>`
    select w.source, (select count(*)::int from ${part} e
                       where e.txid is not null and (w.horizon is null or e.txid >= w.horizon)) as n
      from writeback_positions w order by w.source`;
  const late = behind.find((w) => w.n > 0);
  if (late) return `${month} holds ${late.n} entries the write-back to ${late.source} has not passed yet: let it catch up, then archive again`;
  return null;
}

/**
 * `tally ledger archive --before <month>`: every whole month before `before` that still has a
 * partition, oldest first, is written to `<out>/ledger-YYYY-MM.ndjson` with its manifest, then its
 * partition is detached (renamed `ledger_archived_YYYY_MM` and kept, or dropped with `drop`) and
 * the cut recorded — the detach and the record in one transaction, after checking that the
 * partition still holds exactly the rows written to the file. Refuses (writing nothing) when a month
 * is not over, holds entries the GL poster has not journaled, or has entries in the default partition.
 */
export async function archiveLedger(
  sql: Sql,
  opts: { readonly before: string; readonly out: string; readonly drop?: boolean; readonly now?: Date },
): Promise<Array<ArchivedMonth>> {
  const before = parseMonth("--before", opts.before);
  const now = opts.now ?? new Date();
  const months = (await livePartitions(sql)).filter((m) => m < before);
  const [stray] = await sql<Array<{ n: number }>>`
    select count(*)::int as n from ledger_entries_default where recorded_at < ${monthStart(before)}`;
  if (stray && stray.n > 0)
    throw new ArchiveRefused(
      `${stray.n} entries recorded before ${before} are in the default partition (no monthly partition existed when they were written): they cannot be archived by month`,
    );
  for (const m of months) {
    const why = await refusal(sql, m, now);
    if (why !== null) throw new ArchiveRefused(why);
  }
  await mkdir(opts.out, { recursive: true });
  const method = await valuationMethod(sql);
  const done: Array<ArchivedMonth> = [];
  for (const month of months) done.push(await archiveMonth(sql, month, opts.out, method, opts.drop === true));
  return done;
}

async function archiveMonth(sql: Sql, month: string, out: string, method: ValuationMethod, drop: boolean): Promise<ArchivedMonth> {
  const part = partitionOf(month);
  const [prior] = await sql<Array<{ month: string }>>`select month from ledger_archive_months order by month desc limit 1`;
  const cut = await readCut(sql);
  const file = fileOf(month);
  const tmp = path.join(out, `${file}.partial`);
  const hash = createHash("sha256");
  let text = "";
  let entries = 0;
  let lastEntryId = 0;
  // Read in one snapshot; the partition is append-only, so what it held then is checked below by count.
  const walk = await sql.begin("isolation level repeatable read read only", async (tx) => {
    const cursor = tx<Array<EntryRow>>`
      select entry_id, command_id, leg, sku, location, bucket, delta, balance_after, movement, source_system,
             source_ref, occurred_at, recorded_at, sku_seq, value, unit_cost, valuation_flag, prev_hash, hash
        from ${tx(part)} order by sku, sku_seq`.cursor(2000);
    const rows = (async function* () {
      for await (const batch of cursor) {
        for (const r of batch) {
          const line = `${JSON.stringify(entryJson(r), quantityJson)}\n`;
          hash.update(line);
          text += line;
          entries++;
          lastEntryId = Math.max(lastEntryId, r.entry_id);
        }
        yield batch;
      }
    })();
    return walkChains(rows, method, cut);
  });
  if (walk.problem)
    throw new ArchiveRefused(
      `${month} does not verify (SKU ${walk.problem.sku}, entry ${walk.problem.entryId}: ${walk.problem.message}); run \`tally ledger verify\``,
    );
  const digest = hash.digest("hex");
  const heads = Object.fromEntries([...walk.heads.keys()].sort().map((sku) => [sku, stateJson(stateOf(walk, sku))]));
  const manifest: ArchiveManifest = {
    format: ARCHIVE_FORMAT,
    month,
    previousMonth: prior?.month ?? null,
    file,
    sha256: digest,
    entries,
    from: monthStart(month).toISOString(),
    to: monthStart(nextMonth(month)).toISOString(),
    archivedAt: new Date().toISOString(),
    heads,
  };
  const manifestText = `${JSON.stringify(manifest, null, 2)}\n`;
  await writeFile(tmp, text);
  await rename(tmp, path.join(out, file));
  await writeFile(path.join(out, manifestOf(month)), manifestText);
  // The SKUs whose chain moved in this month: their cut advances.
  const moved = [...walk.heads.keys()].filter((sku) => cut.get(sku)?.seq !== walk.heads.get(sku)?.seq);
  const detachedAs = drop ? null : `ledger_archived_${month.replace("-", "_")}`;
  await sql.begin(async (tx) => {
    await tx`alter table ledger_entries detach partition ${tx(part)}`;
    const [now] = await tx<[{ n: number; last: number | null }]>`select count(*)::int as n, max(entry_id) as last from ${tx(part)}`;
    if (now.n !== entries || (now.last ?? 0) !== lastEntryId)
      throw new ArchiveRefused(`${month} changed while it was being archived (${now.n} entries now, ${entries} written): archive again`);
    for (const sku of moved) {
      const s = stateJson(stateOf(walk, sku));
      await tx`
        insert into ledger_archive_heads (sku, seq, hash, month, state) values (${sku}, ${s.seq}, ${s.hash}, ${month}, ${tx.json(s as never)})
        on conflict (sku) do update set seq = excluded.seq, hash = excluded.hash, month = excluded.month, state = excluded.state`;
    }
    await tx`
      insert into ledger_archive_months (month, file, sha256, entries, manifest_sha256)
      values (${month}, ${file}, ${digest}, ${entries}, ${sha256(manifestText)})`;
    if (detachedAs === null) await tx`drop table ${tx(part)}`;
    else {
      await tx`alter table ${tx(part)} rename to ${tx(detachedAs)}`;
      // Still append-only while it is kept (the triggers cloned from ledger_entries went with the detach).
      await tx.unsafe(`create or replace trigger ledger_entries_append_only before update or delete on "${detachedAs}"
                         for each row execute function tally_refuse_ledger_change()`);
    }
  });
  return { month, file: path.join(out, file), manifest: path.join(out, manifestOf(month)), sha256: digest, entries, detachedAs };
}

function stateOf(walk: ChainWalk, sku: string): ChainState {
  const head = walk.heads.get(sku)!;
  return { seq: head.seq, hash: head.hash, sums: walk.sums.get(sku) ?? new Map(), valuations: walk.valuations.get(sku) ?? new Map() };
}

/** One thing wrong with the archive: the file (and line: 1 is the first entry) where it was found. */
export interface ArchiveProblem {
  readonly file: string;
  readonly line: number | null;
  readonly sku: string | null;
  readonly entryId: number | null;
  readonly message: string;
}

export interface ArchiveReport {
  readonly ok: boolean;
  readonly months: number;
  readonly entries: number;
  readonly problems: ReadonlyArray<ArchiveProblem>;
  /** The live ledger, verified from the archive's cut (null when the archive itself failed). */
  readonly live: VerifyReport | null;
}

/** An exported entry line back as the row it was written from (what its hash covers). */
function rowOfLine(json: Record<string, unknown>): EntryRow {
  const int = (v: unknown) => (typeof v === "string" ? BigInt(v) : (v as number));
  const money = (v: unknown) => (v === null || v === undefined ? null : String(v));
  return {
    entry_id: json.entryId as number,
    command_id: json.commandId as string,
    leg: json.leg as number,
    sku: json.sku as string,
    location: json.location as string,
    bucket: json.bucket as string,
    delta: int(json.delta),
    balance_after: int(json.balanceAfter),
    movement: json.movement as string,
    source_system: json.sourceSystem as string,
    source_ref: json.sourceRef as string,
    occurred_at: new Date(json.occurredAt as string),
    recorded_at: new Date(json.recordedAt as string),
    sku_seq: json.skuSeq as number,
    value: money(json.value),
    unit_cost: money(json.unitCost),
    valuation_flag: (json.valuationFlag as string | null) ?? null,
    prev_hash: json.prevHash as string,
    hash: json.hash as string,
  };
}

const sameState = (a: ChainStateJson | undefined, b: ChainStateJson | undefined) => JSON.stringify(a) === JSON.stringify(b);

/**
 * `tally ledger verify --archive <dir>`: every archived month of the database must have its file and
 * manifest in `dir`; each file must hash to its manifest's sha256 and hold its row count; every chain
 * link in the files must hold (sequence, prev_hash, running balance, valuation, hash), each month
 * continuing from the one before; the cut the files end at must be the one the database records;
 * and the live ledger must verify from that cut.
 */
export async function verifyArchive(sql: Sql, dir: string): Promise<ArchiveReport> {
  const problems: Array<ArchiveProblem> = [];
  const problem = (file: string, message: string, at: Partial<Pick<ArchiveProblem, "line" | "sku" | "entryId">> = {}) =>
    problems.push({ file, line: at.line ?? null, sku: at.sku ?? null, entryId: at.entryId ?? null, message });
  const recorded = await sql<Array<{ month: string; file: string; sha256: string; entries: number; manifest_sha256: string }>>`
    select month, file, sha256, entries::int as entries, manifest_sha256 from ledger_archive_months order by month`;
  const names = new Set(await readdir(dir));
  const method = await valuationMethod(sql);
  let state = new Map<string, ChainState>();
  let previous: string | null = null;
  let total = 0;
  for (const rec of recorded) {
    const mName = manifestOf(rec.month);
    if (!names.has(mName) || !names.has(rec.file)) {
      problem(names.has(mName) ? rec.file : mName, `${rec.month} is archived but its file is not in ${dir}`);
      break;
    }
    const manifestText = await readFile(path.join(dir, mName), "utf8");
    if (sha256(manifestText) !== rec.manifest_sha256) problem(mName, `the manifest was changed after ${rec.month} was archived (its sha256 differs)`);
    const manifest = JSON.parse(manifestText) as ArchiveManifest;
    if (manifest.previousMonth !== previous)
      problem(mName, `follows ${manifest.previousMonth ?? "nothing"} but the month archived before it is ${previous ?? "none"}`);
    // The file: its hash and count, and every chain link (rows in sku, sku_seq order).
    const fileHash = createHash("sha256");
    const lineOf = new Map<number, number>();
    let lines = 0;
    const bad: { problem: ArchiveProblem | null } = { problem: null };
    const input = createInterface({ input: createReadStream(path.join(dir, rec.file)), crlfDelay: Number.POSITIVE_INFINITY });
    const rows = (async function* () {
      for await (const line of input) {
        fileHash.update(`${line}\n`);
        lines++;
        try {
          const r = rowOfLine(JSON.parse(line) as Record<string, unknown>);
          lineOf.set(r.entry_id, lines);
          yield [r];
        } catch (error) {
          bad.problem = { file: rec.file, line: lines, sku: null, entryId: null, message: `not an entry: ${(error as Error).message}` };
          return;
        }
      }
    })();
    const walk = await walkChains(rows, method, state);
    if (bad.problem) problems.push(bad.problem);
    const digest = fileHash.digest("hex");
    if (digest !== manifest.sha256 || digest !== rec.sha256)
      problem(rec.file, `sha256 is ${digest} but the manifest says ${manifest.sha256} (the file was changed)`);
    if (lines !== manifest.entries || lines !== rec.entries) problem(rec.file, `${lines} entries but the manifest says ${manifest.entries}`);
    if (walk.problem) {
      const p = walk.problem;
      problem(rec.file, `entry ${p.entryId} of SKU ${p.sku}: ${p.message}`, {
        line: lineOf.get(p.entryId as number) ?? null,
        sku: p.sku,
        entryId: p.entryId as number,
      });
    }
    total += lines;
    if (problems.length > 0) break;
    const next = new Map<string, ChainState>();
    for (const sku of walk.heads.keys()) next.set(sku, stateOf(walk, sku));
    for (const [sku, s] of next)
      if (!sameState(stateJson(s), manifest.heads[sku])) problem(mName, `the cut head of SKU ${sku} is not where the file's chain ends`, { sku });
    if (Object.keys(manifest.heads).length !== next.size) problem(mName, "lists SKUs whose chains the files do not hold");
    if (problems.length > 0) break;
    state = next;
    previous = rec.month;
  }
  if (problems.length === 0) {
    // The database's cut (where the live chains start) is where the files end.
    const dbCut = await readCut(sql);
    for (const [sku, s] of state)
      if (!sameState(stateJson(s), dbCut.has(sku) ? stateJson(dbCut.get(sku)!) : undefined))
        problem("ledger_archive_heads", `SKU ${sku}: the recorded cut is not where the archive's chain ends`, { sku });
    for (const sku of dbCut.keys()) if (!state.has(sku)) problem("ledger_archive_heads", `SKU ${sku} has a cut but no archived entries`, { sku });
  }
  const live = problems.length === 0 ? await verifyLedger(sql) : null;
  return { ok: problems.length === 0 && live?.ok === true, months: recorded.length, entries: total, problems, live };
}

/** The months recorded as archived (for `verify` without --archive: it says where the chains start). */
export async function archivedMonths(sql: Sql): Promise<Array<string>> {
  return (await sql<Array<{ month: string }>>`select month from ledger_archive_months order by month`).map((r) => r.month);
}

/**
 * The ledger partition of `now`'s UTC month and of the next `monthsAhead` (migration 0086's
 * `tally_ledger_month_partition`, which leaves an archived month, or one whose entries went into the
 * default partition, as it is); how many of them exist afterwards. The worker role calls it at start
 * and its pruner every round, so a month's partition exists before the month begins.
 */
export async function ensureLedgerPartitions(sql: Sql, monthsAhead = 2, now: Date = new Date()): Promise<number> {
  const months = Array.from({ length: monthsAhead + 1 }, (_, i) =>
    new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + i, 1)).toISOString().slice(0, 10),
  );
  return sql.begin(async (tx) => {
    // One process at a time (a worker starting while another's pruner runs): the second finds them made.
    await tx`select pg_advisory_xact_lock(hashtext('tally_ledger_partitions'))`;
    const [row] = await tx<[{ n: number }]>`
      select count(*) filter (where tally_ledger_month_partition(m::date))::int as n from unnest(${tx.array(months)}::text[]) as m`;
    return row.n;
  });
}
