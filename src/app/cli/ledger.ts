import { Effect } from "effect";
import {
  type Anchor,
  type ArchiveReport,
  archiveLedger,
  archivedMonths,
  assertEnvironment,
  chainHeads,
  checkAnchors,
  verifyArchive,
  verifyLedger,
} from "../../../ledger/index.ts";
import { appendAnchorFile, publishAnchors, readAnchorFile, readNatsAnchors } from "../../channels/index.ts";
import { loadSettings, requireDatabaseUrl, type Settings, type Sql } from "../../platform/index.ts";
import { fromPromise, runEffect } from "../roles.ts";
import { CommandError, EXIT, natsTopology, type OutputFormat, UsageError, withPostgres, writeJson } from "./common.ts";

export interface VerifyOptions {
  readonly anchors?: boolean;
  readonly anchorsFile?: ReadonlyArray<string>;
  readonly archive?: string;
  readonly format: OutputFormat;
}

/** A verify run as `--format json` prints it. */
interface VerifyResult {
  ok: boolean;
  entries: number;
  skus: number;
  balances: number;
  problem: unknown;
  anchors?: { ok: boolean; anchors: number; skus: number; problems: ReadonlyArray<unknown> };
  /** The archived months the chains start after (their cut), and with --archive, the files' check. */
  archivedMonths?: ReadonlyArray<string>;
  archive?: { ok: boolean; months: number; entries: number; problems: ArchiveReport["problems"] };
}

/**
 * `tally ledger verify`: exit 0 when the ledger (and, with --anchors, its anchors) is sound, 3 when a
 * mismatch is found, 1 when it could not be checked (no connection, a bad setting, an un-migrated
 * database) and 2 for a bad command line: a script must be able to tell "tampered" from "could not look".
 */
export async function verify(opts: VerifyOptions): Promise<number> {
  try {
    const settings = loadSettings();
    return await withPostgres(requireDatabaseUrl(settings), "tally-verify", 2, async (sql) => {
      await assertEnvironment(sql, settings.env);
      let archive: ArchiveReport | null = null;
      if (opts.archive !== undefined) archive = await verifyArchive(sql, opts.archive);
      // With --archive the live ledger was verified from the checked cut; without, from the recorded one.
      const report = archive?.live ?? (archive === null ? await verifyLedger(sql) : null);
      const result: VerifyResult = {
        ok: report?.ok ?? false,
        entries: report?.entries ?? 0,
        skus: report?.skus ?? 0,
        balances: report?.balances ?? 0,
        problem: report?.problem ?? null,
      };
      const months = await archivedMonths(sql);
      if (months.length > 0) result.archivedMonths = months;
      if (archive !== null)
        result.archive = { ok: archive.problems.length === 0, months: archive.months, entries: archive.entries, problems: archive.problems };
      if (report === null) {
        result.ok = false;
        if (opts.format === "json") writeJson(result);
        else printArchive(result);
        return EXIT.mismatch;
      }
      if (report.ok && (opts.anchors || opts.anchorsFile !== undefined))
        result.anchors = await verifyAnchors(settings, sql, opts.anchors === true, opts.anchorsFile ?? []);
      result.ok = report.ok && (result.anchors?.ok ?? true);
      if (opts.format === "json") writeJson(result);
      else {
        printArchive(result);
        printVerify(result, report.problem);
      }
      return result.ok ? EXIT.ok : EXIT.mismatch;
    });
  } catch (error) {
    const e = error as Error;
    if (["SettingsError", "EnvironmentMismatch", "MigrationError", "UsageError", "ConfigFileError"].includes(e?.name)) throw error;
    throw new CommandError(`ledger verify could not check the ledger: ${e?.message ?? String(error)}`);
  }
}

/** The archive's part of a verify run: where the chains start, and with --archive, the files' check. */
function printArchive(result: VerifyResult): void {
  const months = result.archivedMonths ?? [];
  const a = result.archive;
  if (a === undefined) {
    if (months.length > 0)
      process.stdout.write(
        `ledger verify: chains start at the cut after the archived months ${months[0]}…${months.at(-1)} (check them with --archive <dir>)\n`,
      );
    return;
  }
  if (a.ok)
    process.stdout.write(
      `ledger verify --archive: ok — ${a.months} archived months, ${a.entries} entries; the live chains continue from their cut\n`,
    );
  for (const p of a.problems)
    process.stdout.write(`ledger verify --archive: FAILED in ${p.file}${p.line !== null ? ` row ${p.line}` : ""}: ${p.message}\n`);
}

function printVerify(result: VerifyResult, p: { sku: string; entryId: unknown; commandId: unknown; message: string } | null): void {
  if (p) {
    process.stdout.write(
      `ledger verify: FAILED at SKU ${p.sku}${p.entryId !== null ? ` entry ${p.entryId} (command ${p.commandId})` : ""}: ${p.message}\n`,
    );
    return;
  }
  process.stdout.write(`ledger verify: ok — ${result.entries} entries, ${result.skus} SKUs, ${result.balances} balances\n`);
  const a = result.anchors;
  if (!a) return;
  if (a.ok) process.stdout.write(`ledger verify --anchors: ok — ${a.anchors} anchors of ${a.skus} SKUs match the ledger\n`);
  for (const p of a.problems as ReadonlyArray<{ sku: string; message: string }>)
    process.stdout.write(`ledger verify --anchors: FAILED at SKU ${p.sku}: ${p.message}\n`);
}

/** `--anchors`, `--anchors-file`: the chain against the heads published outside the database. */
async function verifyAnchors(settings: Settings, sql: Sql, fromNats: boolean, files: ReadonlyArray<string>) {
  const anchors: Array<Anchor> = [];
  for (const f of files) anchors.push(...(await readAnchorFile(f)));
  if (fromNats)
    anchors.push(
      ...(await runEffect(
        Effect.scoped(
          Effect.gen(function* () {
            const nats = yield* natsTopology(settings, "tally-verify");
            return yield* fromPromise(() => readNatsAnchors(nats, nats.topology));
          }),
        ),
      )),
    );
  const report = await checkAnchors(sql, anchors);
  return { ok: report.ok, anchors: report.anchors, skus: report.skus, problems: report.ok ? [] : report.problems };
}

/** `tally ledger anchor [--file <f>]`: every SKU's chain head now, to the anchors stream or appended to a file. */
export async function anchor(opts: { readonly file?: string }): Promise<number> {
  const settings = loadSettings();
  return withPostgres(requireDatabaseUrl(settings), "tally-anchor", 1, async (sql) => {
    await assertEnvironment(sql, settings.env);
    const { heads } = await chainHeads(sql);
    if (opts.file !== undefined) {
      await appendAnchorFile(opts.file, heads);
      process.stdout.write(`ledger anchor: ${heads.length} SKU heads appended to ${opts.file}\n`);
      return EXIT.ok;
    }
    const messages = await runEffect(
      Effect.scoped(
        Effect.gen(function* () {
          const nats = yield* natsTopology(settings, "tally-anchor");
          return yield* fromPromise(() => publishAnchors(nats, nats.topology, heads));
        }),
      ),
    );
    process.stdout.write(`ledger anchor: ${heads.length} SKU heads published in ${messages} messages\n`);
    return EXIT.ok;
  });
}

export interface ExportOptions {
  readonly cursor?: string;
  readonly from?: string;
  readonly to?: string;
  readonly format: "csv" | "ndjson";
  readonly out?: string;
}

/** `--from`, `--to`: an ISO-8601 date or date-time. */
function when(name: string, v: string | undefined): Date | undefined {
  if (v === undefined) return undefined;
  const d = new Date(v);
  if (Number.isNaN(d.getTime()) || !/^\d{4}-\d{2}-\d{2}/.test(v))
    throw new UsageError(`--${name}: expected an ISO-8601 date or date-time, got ${JSON.stringify(v)}`);
  return d;
}

/** A progress bar on a terminal (stderr), never mixed into the export itself. */
async function progressBar(sql: Sql, range: { from: Date | undefined; to: Date | undefined }) {
  const tty = process.stderr.isTTY === true;
  const total = tty
    ? (
        await sql<[{ total: number }]>`
          select count(*)::float8 as total from ledger_entries
           where true ${range.from ? sql`and recorded_at >= ${range.from}` : sql``} ${range.to ? sql`and recorded_at < ${range.to}` : sql``}`
      )[0].total
    : 0;
  let last = 0;
  return {
    tty,
    show(done: number) {
      if (!tty || Date.now() - last < 100) return;
      last = Date.now();
      const pct = total > 0 ? Math.min(1, done / total) : 1;
      const width = 30;
      process.stderr.write(`\r[${"#".repeat(Math.round(pct * width)).padEnd(width, ".")}] ${(pct * 100).toFixed(1)}%  ${done}/${total} entries`);
    },
  };
}

/**
 * `tally ledger export`: the same stream as GET /v1/ledger/export, to a file or standard output.
 * The summary never goes into the file: beside it as `<file>.summary.json` with --out, and always as
 * one JSON line on stderr (which is also where the cursor for the next increment is).
 */
export async function exportLedger(opts: ExportOptions): Promise<number> {
  const settings = loadSettings();
  const { EXPORT_CURSOR_PATTERN, openExport } = await import("../../../ledger/index.ts");
  if (opts.cursor !== undefined && !EXPORT_CURSOR_PATTERN.test(opts.cursor))
    throw new UsageError(`--cursor: expected the nextCursor of a previous export (digits), got ${JSON.stringify(opts.cursor)}`);
  const range = { cursor: opts.cursor, from: when("from", opts.from), to: when("to", opts.to) };
  const { createWriteStream } = await import("node:fs");
  const { writeFile } = await import("node:fs/promises");
  const { pipeline } = await import("node:stream/promises");
  const { Readable } = await import("node:stream");
  return withPostgres(requireDatabaseUrl(settings), "tally-export", 2, async (sql) => {
    await assertEnvironment(sql, settings.env);
    const progress = await progressBar(sql, range);
    const out = opts.out ? createWriteStream(opts.out) : process.stdout;
    const exp = await openExport(sql, opts.format, range, (s) => progress.show(s.count));
    let summary: unknown = null;
    const source = Readable.from(
      (async function* () {
        summary = yield* exp.chunks;
      })(),
    );
    try {
      await pipeline(source, out, { end: opts.out !== undefined });
    } finally {
      await exp.close();
    }
    if (progress.tty) process.stderr.write("\n");
    const json = JSON.stringify(summary);
    if (opts.out) await writeFile(`${opts.out}.summary.json`, `${json}\n`);
    process.stderr.write(`${json}\n`);
    return EXIT.ok;
  });
}

export interface ArchiveOptions {
  readonly before: string;
  readonly out: string;
  readonly drop?: boolean;
}

/**
 * `tally ledger archive --before <month>`: whole past months to files and detached. Exit 0 (also when
 * there was nothing to archive), 1 when a month was refused (the message says why) or it failed.
 */
export async function archive(opts: ArchiveOptions): Promise<number> {
  const settings = loadSettings();
  return withPostgres(requireDatabaseUrl(settings), "tally-archive", 2, async (sql) => {
    await assertEnvironment(sql, settings.env);
    try {
      const done = await archiveLedger(sql, opts);
      if (done.length === 0) process.stdout.write(`ledger archive: no month before ${opts.before} is left to archive\n`);
      for (const m of done)
        process.stdout.write(
          `ledger archive: ${m.month} — ${m.entries} entries to ${m.file} (sha256 ${m.sha256}), manifest ${m.manifest}; partition ${m.detachedAs === null ? "dropped" : `detached as ${m.detachedAs}`}\n`,
        );
      return EXIT.ok;
    } catch (error) {
      if ((error as Error)?.name === "ArchiveRefused") throw new CommandError(`ledger archive refused: ${(error as Error).message}`);
      throw error;
    }
  });
}
