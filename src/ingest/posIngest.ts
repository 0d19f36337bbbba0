/**
 * POS ingest: a batch of POS transactions → validated, mapped through the item crosswalk to
 * canonical commands with ids `pos:<store>:<terminal>:<txn>:<line>`, claimed in `pos_transactions`
 * before anything is published (so of two racing posts with other content only the first publishes, all
 * its lines or none), published (PubAck) and its result recorded, so a resend gets the same result. A transaction with
 * any bad field is rejected whole, names each bad field, and is dead-lettered with its payload. A transaction with
 * amounts posts its money journal (revenue, tax, tenders, gift cards) in the same Postgres transaction as its claim:
 * once, whoever wins the claim.
 */
import type { ISql, Sql } from "postgres";
import type { Logger } from "pino";
import { Either } from "effect";
import type { Command } from "../contract/index.ts";
import { Crosswalk } from "../../cdc/index.ts";
import { MappingError, posLineCommandId } from "../contract/index.ts";
import { ITEMS_CHANNEL } from "../../cdc/index.ts";
import { deadLetter, publishDeadLetter, type DeadLetter } from "../wire/index.ts";
import type { NatsHandles } from "../wire/index.ts";
import { pauser, type FinanceConfig } from "../platform/index.ts";
import { postMoneyJournals, type MoneyJournal } from "../../ledger/index.ts";
import { moneyJournal, type RevenueItem } from "./posMoney.ts";
import { publishCommands } from "../wire/index.ts";
import type { Topology } from "../wire/index.ts";
import {
  MAX_BATCH_LINES,
  MAX_TRANSACTIONS,
  decodePosTransaction,
  payloadHash,
  transactionKey,
  type Issue,
  type PosLine,
  type PosTransaction,
} from "./posTransaction.ts";

/** What happened to one line of an accepted transaction. */
export interface LineResult {
  readonly line: number;
  /** The commands it became (a bundle: one per component; none when voided or not stocked). */
  readonly commands: ReadonlyArray<string>;
  readonly voided?: number;
  readonly skipped?: "non_inventory" | "voided";
}

export type TransactionResult =
  | {
      readonly status: "accepted";
      readonly store: string;
      readonly terminal: string;
      readonly id: string;
      readonly lines: ReadonlyArray<LineResult>;
      /** The GL money journal it posted (`money:<store>:<terminal>:<id>`), when it carries amounts. */
      readonly journal?: string;
    }
  | {
      readonly status: "rejected";
      readonly store?: string;
      readonly terminal?: string;
      readonly id?: string;
      readonly reason: string;
      readonly errors: ReadonlyArray<Issue>;
    };

/** The reply to a batch: per transaction (in order, with its index), and counts. */
export interface BatchResult {
  readonly accepted: number;
  readonly rejected: number;
  readonly results: ReadonlyArray<TransactionResult & { readonly index: number }>;
  /** Set when the batch as a whole is unusable or every transaction was rejected. */
  /** `idempotency_conflict` when every one was refused because its id was taken by other content (HTTP 409). */
  readonly error?: "invalid_request" | "invalid_transactions" | "idempotency_conflict";
  readonly message?: string;
  readonly errors?: ReadonlyArray<Issue>;
}

export interface IngestContext {
  /** `http` or `nats`. */
  readonly via: string;
  /** The API token (HTTP) or subject (NATS) it came by, for the dead letter's context. */
  readonly by: string;
  /** Stores the sender may post for (a channel-scoped token); null: any. */
  readonly stores?: ReadonlySet<string> | null;
  /** NATS only: the store the subject names; every transaction must be of it. */
  readonly subjectStore?: string;
  /** False when replaying a dead letter: a failed replay leaves the letter as it is (default true). */
  readonly deadLetter?: boolean;
  /** Epoch ms by which the commands must be acknowledged, else the ingest fails (PublishDeadlineExceeded); default none. */
  readonly deadline?: number;
}

export interface PosIngestDeps {
  readonly sql: Sql;
  readonly nats: NatsHandles;
  readonly topology: Topology;
  readonly log: Logger;
  /** The stores of the config (`knownStores`): a transaction for any other store is refused, naming `store`. */
  readonly stores: ReadonlySet<string>;
  /** The company's books (`finance` of the config): the currency amounts must be in, accounts, cost centers, time zone. */
  readonly finance: FinanceConfig;
  readonly onCommands?: (commands: ReadonlyArray<Command>) => void;
  readonly onTransaction?: (outcome: "accepted" | "duplicate" | "rejected", via: string) => void;
}

const DLQ_ORIGIN = "pos";

/** The batch is not a batch (not JSON, not an object with a `transactions` array …). */
export class InvalidBatch extends Error {
  override readonly name = "InvalidBatch";
  constructor(readonly issues: ReadonlyArray<Issue>) {
    super(issues.map((i) => (i.path ? `${i.path}: ${i.message}` : i.message)).join("; "));
  }
}

/** POS transactions → commands; shared by the HTTP route and the NATS subject. */
export class PosIngest {
  #crosswalk: Crosswalk | null = null;
  #loading: Promise<Crosswalk> | null = null;
  #unlisten: (() => Promise<void>) | null = null;

  constructor(readonly deps: PosIngestDeps) {}

  /** Loads the crosswalk and follows item changes other processes make. */
  async start(): Promise<void> {
    await this.#crosswalkNow();
    try {
      const l = await this.deps.sql.listen(
        ITEMS_CHANNEL,
        (sku) =>
          void this.#crosswalk?.refresh(this.deps.sql, [sku]).catch((err: unknown) => this.deps.log.warn({ err, sku }, "crosswalk reload failed")),
      );
      this.#unlisten = l.unlisten;
    } catch (err) {
      this.deps.log.warn({ err }, "crosswalk LISTEN failed: items are refreshed on a miss only");
    }
  }

  async stop(): Promise<void> {
    await this.#unlisten?.().catch((err: unknown) => this.deps.log.debug({ err }, "crosswalk UNLISTEN failed")); // the pool closes next anyway
  }

  /** The item crosswalk, loaded once and kept current. */
  crosswalk(): Promise<Crosswalk> {
    return this.#crosswalkNow();
  }

  async #crosswalkNow(): Promise<Crosswalk> {
    if (this.#crosswalk) return this.#crosswalk;
    this.#loading ??= Crosswalk.load(this.deps.sql).then((c) => (this.#crosswalk = c));
    try {
      return await this.#loading;
    } finally {
      this.#loading = null;
    }
  }

  /**
   * Ingests a raw batch (`{transactions: [...]}`; over NATS a single transaction is accepted too).
   * Throws InvalidBatch (after dead-lettering the payload) when it is not a batch at all.
   */
  async ingest(payload: unknown, ctx: IngestContext): Promise<BatchResult> {
    const list = await this.#transactionsOf(payload, ctx);
    const crosswalk = await this.#crosswalkNow();
    // A batch may hold 100,000 lines: the work yields to the event loop every few milliseconds.
    const pause = pauser();
    const decoded: Array<Decoded> = [];
    for (const raw of list) {
      await pause();
      decoded.push({ raw, hash: payloadHash(raw), result: decodePosTransaction(raw) });
    }
    const work = newWork(list.length);
    await this.#triage(work, decoded, crosswalk, ctx, pause);
    // Claim before publishing anything: of two racing posts of one transaction only the first publishes; the
    // other sees the claim (other content: a conflict; the same: the stored result, or it finishes the job).
    await this.#settleLostClaims(work, ctx);
    // A copy later in the batch of a transaction that was just refused is refused alike.
    refuseCopiesOfRefused(work, decoded);
    await this.#publishAndRecord(work, ctx, pause);
    return batchResult(work);
  }

  /**
   * Sorts each decoded transaction: rejected, a resend of a recorded one, a copy of one earlier in the batch,
   * or fresh (mapped to commands). Already recorded (a resend): the stored result, or a conflict when the content differs.
   */
  async #triage(
    work: IngestWork,
    decoded: ReadonlyArray<Decoded>,
    crosswalk: Crosswalk,
    ctx: IngestContext,
    pause: ReturnType<typeof pauser>,
  ): Promise<void> {
    const { results, fresh, duplicates, reject } = work;
    const keys = decoded.flatMap((d) => (Either.isRight(d.result) ? [d.result.right] : []));
    const stored = await this.#stored(keys);
    const firstInBatch = new Map<string, number>();
    for (const [index, d] of decoded.entries()) {
      await pause();
      if (Either.isLeft(d.result)) {
        reject(
          index,
          d.raw,
          "invalid_transaction",
          d.result.left.map((i) => ({ path: prefix(index, i.path), message: i.message })),
        );
        continue;
      }
      const t = d.result.right;
      if (ctx.subjectStore !== undefined && t.store !== ctx.subjectStore) {
        reject(
          index,
          d.raw,
          "invalid_transaction",
          [{ path: prefix(index, "store"), message: `expected ${ctx.subjectStore} (the store the subject names), got ${JSON.stringify(t.store)}` }],
          t,
        );
        continue;
      }
      if (!this.deps.stores.has(t.store)) {
        reject(
          index,
          d.raw,
          "unknown_store",
          [
            {
              path: prefix(index, "store"),
              message: `unknown store ${JSON.stringify(t.store)} (not a location of any channel nor in the config's stores)`,
            },
          ],
          t,
        );
        continue;
      }
      const key = transactionKey(t);
      const prior = stored.get(key);
      if (prior && prior.hash !== d.hash) {
        reject(index, d.raw, "idempotency_conflict", [{ path: prefix(index, "id"), message: conflictMessage(key) }], t);
        continue;
      }
      if (prior?.result) {
        results[index] = { ...prior.result, index };
        this.deps.onTransaction?.("duplicate", ctx.via);
        continue;
      }
      // Checked after the resend case: a recorded transaction keeps its answer even if the config changed since.
      if (t.currency !== null && t.currency !== this.deps.finance.currency) {
        const message = `expected ${this.deps.finance.currency} (the company's currency, finance.currency of the config), got ${JSON.stringify(t.currency)}`;
        reject(index, d.raw, "invalid_transaction", [{ path: prefix(index, "currency"), message }], t);
        continue;
      }
      // A prior claim with this content and no result yet (in flight elsewhere, or failed before its PubAcks) is
      // finished here: the same content makes the same commands with the same ids, which the stream drops as repeats.
      const first = firstInBatch.get(key);
      if (first !== undefined) {
        if (decoded[first]!.hash === d.hash) duplicates.push({ index, of: first });
        else
          reject(
            index,
            d.raw,
            "idempotency_conflict",
            [{ path: prefix(index, "id"), message: `transaction ${key} appears earlier in this batch with different content` }],
            t,
          );
        continue;
      }
      firstInBatch.set(key, index);
      const mapped = await this.#map(crosswalk, t, index);
      if ("errors" in mapped) reject(index, d.raw, mapped.reason, mapped.errors, t);
      else fresh.push({ index, raw: d.raw, t, hash: d.hash, claimed: prior !== undefined, ...mapped });
    }
  }

  /** Transactions whose claim another post won: a conflict, or that post's result; the rest stay fresh. */
  async #settleLostClaims(work: IngestWork, ctx: IngestContext): Promise<void> {
    const { results, fresh, reject } = work;
    const lost = await this.#claim(fresh.filter((f) => !f.claimed));
    if (lost.size > 0) {
      const now = await this.#stored(fresh.filter((f) => lost.has(transactionKey(f.t))).map((f) => f.t));
      for (const f of fresh.filter((f) => lost.has(transactionKey(f.t)))) {
        const key = transactionKey(f.t);
        const winner = now.get(key);
        if (winner && winner.hash !== f.hash)
          reject(f.index, f.raw, "idempotency_conflict", [{ path: prefix(f.index, "id"), message: conflictMessage(key) }], f.t);
        else if (winner?.result) {
          results[f.index] = { ...winner.result, index: f.index };
          this.deps.onTransaction?.("duplicate", ctx.via);
        } else continue;
        fresh.splice(fresh.indexOf(f), 1);
      }
    }
  }

  /** Dead-letters the rejected, publishes the fresh transactions' commands, records their results. */
  async #publishAndRecord(work: IngestWork, ctx: IngestContext, pause: ReturnType<typeof pauser>): Promise<void> {
    const { results, fresh, rejected, duplicates } = work;
    // Dead letters first: once the caller hears "rejected", the payload is kept.
    if (rejected.length > 0) await this.#deadLetter(rejected, ctx);
    const commands = fresh.flatMap((f) => f.commands);
    if (commands.length > 0) {
      await publishCommands(this.deps.nats.js, this.deps.topology, commands, ctx.deadline !== undefined ? { deadline: ctx.deadline } : {});
      this.deps.onCommands?.(commands);
    }
    for (const f of fresh) {
      await pause();
      const result: TransactionResult = {
        status: "accepted",
        store: f.t.store,
        terminal: f.t.terminal,
        id: f.t.id,
        lines: f.lines,
        ...(f.journal ? { journal: f.journal.journalId } : {}),
      };
      results[f.index] = { ...result, index: f.index };
      this.deps.onTransaction?.("accepted", ctx.via);
      this.deps.log.debug({ pos: transactionKey(f.t), commandIds: f.commands.map((c) => c.id), via: ctx.via }, "POS transaction accepted");
    }
    if (fresh.length > 0) await this.#record(fresh.map((f) => ({ t: f.t, hash: f.hash, result: stripIndex(results[f.index]!) })));
    for (const dup of duplicates) {
      results[dup.index] = { ...stripIndex(results[dup.of]!), index: dup.index };
      this.deps.onTransaction?.("duplicate", ctx.via);
    }
    for (const _r of rejected) this.deps.onTransaction?.("rejected", ctx.via);
  }

  /** Replays a dead-lettered POS transaction: ingested again (the crosswalk may know its items now). */
  async replay(letter: DeadLetter): Promise<{ ok: true; commands: number } | { ok: false; reason: string }> {
    const ctx = letter.context as { by?: string };
    const p = letter.payload;
    const batch = typeof p === "object" && p !== null && !Array.isArray(p) && "transactions" in p ? p : { transactions: [p] };
    let result: BatchResult;
    try {
      result = await this.ingest(batch, { via: "replay", by: ctx.by ?? "replay", deadLetter: false });
    } catch (error) {
      if (error instanceof InvalidBatch) return { ok: false, reason: error.message };
      throw error;
    }
    const bad = result.results.flatMap((r) => (r.status === "rejected" ? r.errors.map((e) => `${e.path}: ${e.message}`) : []));
    if (bad.length > 0) return { ok: false, reason: bad.join("; ") };
    return {
      ok: true,
      commands: result.results.reduce((n, r) => n + (r.status === "accepted" ? r.lines.reduce((m, l) => m + l.commands.length, 0) : 0), 0),
    };
  }

  async #transactionsOf(payload: unknown, ctx: IngestContext): Promise<ReadonlyArray<unknown>> {
    let issue: Issue | null = null;
    let list: ReadonlyArray<unknown> | null = null;
    if (typeof payload !== "object" || payload === null || Array.isArray(payload))
      issue = {
        path: "",
        message: `expected an object with a transactions array, got ${payload === null ? "null" : Array.isArray(payload) ? "an array" : typeof payload}`,
      };
    else if ("transactions" in payload) {
      const t = (payload as { transactions: unknown }).transactions;
      if (!Array.isArray(t)) issue = { path: "transactions", message: "expected an array of transactions" };
      else if (t.length === 0) issue = { path: "transactions", message: "expected at least one transaction" };
      else if (t.length > MAX_TRANSACTIONS)
        issue = { path: "transactions", message: `expected at most ${MAX_TRANSACTIONS} transactions, got ${t.length}` };
      else if (linesIn(t) > MAX_BATCH_LINES)
        issue = { path: "transactions", message: `expected at most ${MAX_BATCH_LINES} lines in one batch, got ${linesIn(t)} (split the batch)` };
      else list = t;
    } else if (ctx.via === "nats") list = [payload];
    else issue = { path: "transactions", message: "is missing" };
    if (list) return list;
    const issues = [issue!];
    if (!isNoDlq(ctx))
      await this.#deadLetter([{ index: -1, raw: payload, result: { status: "rejected", reason: "invalid_request", errors: issues } }], ctx);
    this.deps.onTransaction?.("rejected", ctx.via);
    throw new InvalidBatch(issues);
  }

  /** Dead-letters a payload that is not JSON at all (or nests too deep to be one); `problem` says which. */
  async rejectUnparsable(text: string, problem: string, ctx: IngestContext): Promise<InvalidBatch> {
    const issues = [{ path: "", message: problem }];
    await this.#deadLetter([{ index: -1, raw: text, result: { status: "rejected", reason: "invalid_json", errors: issues } }], ctx);
    this.deps.onTransaction?.("rejected", ctx.via);
    return new InvalidBatch(issues);
  }

  /** Recorded transactions: their payload hash, and their result (null while claimed and not yet acknowledged). */
  async #stored(ts: ReadonlyArray<PosTransaction>): Promise<Map<string, { hash: string; result: TransactionResult | null }>> {
    const out = new Map<string, { hash: string; result: TransactionResult | null }>();
    if (ts.length === 0) return out;
    const { sql } = this.deps;
    const rows = await sql<
      Array<{ store: string; terminal: string; transaction_id: string; payload_hash: string; result: TransactionResult | null }>
    >`
      select p.store, p.terminal, p.transaction_id, p.payload_hash, p.result
        from pos_transactions p
        join unnest(${sql.array(ts.map((t) => t.store))}::text[], ${sql.array(ts.map((t) => t.terminal))}::text[], ${sql.array(ts.map((t) => t.id))}::text[])
             as k(store, terminal, transaction_id)
          on p.store = k.store and p.terminal = k.terminal and p.transaction_id = k.transaction_id`;
    for (const r of rows)
      out.set(transactionKey({ store: r.store, terminal: r.terminal, id: r.transaction_id }), { hash: r.payload_hash, result: r.result });
    return out;
  }

  /** Claims transactions not yet recorded (result still null); returns the keys another post claimed first. */
  async #claim(fs: ReadonlyArray<Fresh>): Promise<Set<string>> {
    if (fs.length === 0) return new Set();
    // Without money to post, the claim is one statement: no transaction around it (one round trip, not three,
    // before the commands can be published).
    const money = fs.some((f) => f.journal !== null && f.journal.lines.length > 0);
    if (!money) return this.#claimRows(this.deps.sql, fs);
    return this.deps.sql.begin((sql) => this.#claimRows(sql, fs, true));
  }

  async #claimRows(sql: ISql, fs: ReadonlyArray<Fresh>, money = false): Promise<Set<string>> {
    const won = await sql<Array<{ store: string; terminal: string; transaction_id: string }>>`
    insert into pos_transactions (store, terminal, transaction_id, payload_hash, result)
    select store, terminal, transaction_id, payload_hash, null from unnest(
      ${sql.array(fs.map((f) => f.t.store))}::text[],
      ${sql.array(fs.map((f) => f.t.terminal))}::text[],
      ${sql.array(fs.map((f) => f.t.id))}::text[],
      ${sql.array(fs.map((f) => f.hash))}::text[]) as k(store, terminal, transaction_id, payload_hash)
    -- In key order: two posts claiming overlapping batches wait for each other instead of deadlocking.
    order by store, terminal, transaction_id
    on conflict do nothing
    returning store, terminal, transaction_id`;
    const mine = new Set(won.map((r) => transactionKey({ store: r.store, terminal: r.terminal, id: r.transaction_id })));
    // The money of the transactions this post claimed, with their claims: a journal exists exactly when its claim does.
    if (money)
      await postMoneyJournals(
        sql,
        fs.flatMap((f) => (f.journal && mine.has(transactionKey(f.t)) ? [f.journal] : [])),
      );
    return new Set(fs.map((f) => transactionKey(f.t)).filter((k) => !mine.has(k)));
  }

  /** Stores the result of claimed transactions once every command was acknowledged. */
  async #record(rows: ReadonlyArray<{ t: PosTransaction; hash: string; result: TransactionResult }>): Promise<void> {
    const { sql } = this.deps;
    await sql`
      update pos_transactions p set result = k.result
        from unnest(
          ${sql.array(rows.map((r) => r.t.store))}::text[],
          ${sql.array(rows.map((r) => r.t.terminal))}::text[],
          ${sql.array(rows.map((r) => r.t.id))}::text[],
          ${sql.array(rows.map((r) => r.hash))}::text[],
          ${sql.array(rows.map((r) => JSON.stringify(r.result)))}::jsonb[]) as k(store, terminal, transaction_id, payload_hash, result)
       where p.store = k.store and p.terminal = k.terminal and p.transaction_id = k.transaction_id
         and p.payload_hash = k.payload_hash and p.result is null`;
  }

  /** A transaction's commands, or the issues (each naming its field) that reject it. */
  async #map(
    crosswalk: Crosswalk,
    t: PosTransaction,
    index: number,
  ): Promise<{ commands: Array<Command>; lines: Array<LineResult>; journal: MoneyJournal | null } | { reason: string; errors: Array<Issue> }> {
    const commands: Array<Command> = [];
    const lines: Array<LineResult> = [];
    const items = new Map<number, RevenueItem>();
    const errors: Array<Issue> = [];
    let reason = "invalid_transaction";
    for (const l of t.lines) {
      if (l.fullyVoided) {
        lines.push({ line: l.line, commands: [], voided: l.voided, skipped: "voided" });
        continue;
      }
      let resolved = this.#resolve(crosswalk, t, l);
      if ("error" in resolved && resolved.error.reason === "unknown_item" && (await crosswalk.refreshIdentifier(this.deps.sql, l.item)))
        resolved = this.#resolve(crosswalk, t, l);
      if ("error" in resolved) {
        const e = resolved.error;
        if (e.reason === "unknown_item") reason = "unknown_item";
        errors.push({ path: prefix(index, fieldOf(l, e.field)), message: e.problem });
        continue;
      }
      const counted = typeof l.qty === "number" ? l.qty : null;
      if (resolved.kind === "skipped") {
        items.set(l.line, { sku: resolved.sku, qty: counted });
        lines.push({ line: l.line, commands: [], skipped: "non_inventory", ...(l.voided ? { voided: l.voided } : {}) });
        continue;
      }
      // One stock SKU: its quantity in base units, as its ledger entry has it; a bundle: its own SKU and count.
      const [only, ...more] = resolved.commands;
      items.set(
        l.line,
        more.length === 0 && only && "qty" in only
          ? { sku: only.sku, qty: only.qty }
          : { sku: crosswalk.lookup(l.item.system, l.item.id)?.sku ?? null, qty: counted },
      );
      commands.push(...resolved.commands);
      lines.push({ line: l.line, commands: resolved.commands.map((c) => c.id), ...(l.voided ? { voided: l.voided } : {}) });
    }
    return errors.length > 0 ? { reason, errors } : { commands, lines, journal: moneyJournal(t, items, this.deps.finance) };
  }

  #resolve(crosswalk: Crosswalk, t: PosTransaction, l: PosLine) {
    try {
      return crosswalk.resolve(
        {
          type: l.type === "sale" ? "sell" : "return",
          item: l.item,
          location: t.store,
          qty: l.qty,
          ...(l.unit !== null ? { uom: l.unit } : {}),
          id: posLineCommandId(t, l.line),
          ref: transactionKey(t),
          occurredAt: t.occurredAt,
          ...(l.type === "return" ? { fields: { restockable: l.restockable } } : {}),
        },
        { source: "pos", id: posLineCommandId(t, l.line), ref: transactionKey(t), occurredAt: t.occurredAt },
      );
    } catch (error) {
      if (error instanceof MappingError) return { error };
      throw error;
    }
  }

  async #deadLetter(
    rejected: ReadonlyArray<{ index: number; raw: unknown; result: Extract<TransactionResult, { status: "rejected" }> }>,
    ctx: IngestContext,
  ): Promise<void> {
    if (isNoDlq(ctx)) return;
    const { nats, topology, log } = this.deps;
    await Promise.all(
      rejected.map(async (r) => {
        const reason = r.result.errors.map((e) => `${e.path ? `${e.path}: ` : ""}${e.message}`).join("; ");
        const key = r.result.store !== undefined ? transactionKey(r.result as { store: string; terminal: string; id: string }) : null;
        // Relative paths in the stored reason: a replay sees the transaction alone.
        const letter = deadLetter(DLQ_ORIGIN, reason, r.raw, {
          via: ctx.via,
          by: ctx.by,
          reason: r.result.reason,
          ...(key ? { transaction: key } : {}),
          ...(r.index >= 0 ? { index: r.index } : {}),
        });
        const identity = { hashOf: [typeof r.raw === "string" ? r.raw : payloadHash(r.raw), reason] };
        await publishDeadLetter({ js: nats.js, nc: nats.nc, sql: this.deps.sql, topology }, letter, identity);
        log.warn({ pos: key, reason, via: ctx.via }, "POS transaction rejected (dead-lettered)");
      }),
    );
  }
}

/** A transaction accepted by validation and mapping, on its way to be claimed and published. */
interface Fresh {
  readonly index: number;
  readonly raw: unknown;
  readonly t: PosTransaction;
  readonly hash: string;
  /** Already claimed with this content by an earlier post that did not finish. */
  readonly claimed: boolean;
  readonly commands: Array<Command>;
  readonly lines: Array<LineResult>;
  /** Its money journal, posted with its claim (null: no amounts). */
  readonly journal: MoneyJournal | null;
}

type Decoded = { raw: unknown; hash: string; result: ReturnType<typeof decodePosTransaction> };
type Rejected = { index: number; raw: unknown; result: Extract<TransactionResult, { status: "rejected" }> };

/** One batch's state while it is ingested: each transaction's result, and which are fresh, rejected or copies. */
interface IngestWork {
  readonly results: Array<TransactionResult & { index: number }>;
  readonly fresh: Array<Fresh>;
  readonly rejected: Array<Rejected>;
  readonly duplicates: Array<{ index: number; of: number }>;
  readonly reject: (
    index: number,
    raw: unknown,
    reason: string,
    errors: ReadonlyArray<Issue>,
    t?: { store: string; terminal: string; id: string },
  ) => void;
}

function newWork(size: number): IngestWork {
  const results: IngestWork["results"] = new Array(size);
  const rejected: Array<Rejected> = [];
  const reject: IngestWork["reject"] = (index, raw, reason, errors, t) => {
    const result = { status: "rejected" as const, ...(t ? { store: t.store, terminal: t.terminal, id: t.id } : idsOf(raw)), reason, errors };
    rejected.push({ index, raw, result });
    results[index] = { ...result, index };
  };
  return { results, fresh: [], rejected, duplicates: [], reject };
}

/** A copy later in the batch of a transaction that was refused is refused alike; the other copies stay. */
function refuseCopiesOfRefused(work: IngestWork, decoded: ReadonlyArray<Decoded>): void {
  const { results, duplicates, reject } = work;
  for (const dup of duplicates.splice(0)) {
    const of = results[dup.of];
    if (of?.status === "rejected")
      reject(
        dup.index,
        decoded[dup.index]!.raw,
        of.reason,
        of.errors.map((e) => ({ ...e, path: e.path.replace(`transactions[${dup.of}]`, `transactions[${dup.index}]`) })),
        of as { store: string; terminal: string; id: string },
      );
    else duplicates.push(dup);
  }
}

function batchResult(work: IngestWork): BatchResult {
  const { results, rejected } = work;
  const accepted = results.filter((r) => r.status === "accepted").length;
  const out: BatchResult = { accepted, rejected: results.length - accepted, results };
  if (accepted === 0)
    return {
      ...out,
      error: rejected.every((r) => r.result.reason === "idempotency_conflict") ? "idempotency_conflict" : "invalid_transactions",
      message: `every transaction was rejected: ${rejected
        .flatMap((r) => r.result.errors.map((e) => `${e.path}: ${e.message}`))
        .slice(0, 5)
        .join("; ")}`,
    };
  return out;
}

const conflictMessage = (key: string): string => `transaction ${key} was already recorded with different content`;

/** Lines over all transactions of a batch (before decoding: what is not an array counts nothing). */
const linesIn = (ts: ReadonlyArray<unknown>): number =>
  ts.reduce<number>(
    (n, t) =>
      n +
      (typeof t === "object" && t !== null && Array.isArray((t as { lines?: unknown }).lines) ? (t as { lines: Array<unknown> }).lines.length : 0),
    0,
  );

const isNoDlq = (ctx: IngestContext): boolean => ctx.deadLetter === false;

const prefix = (index: number, path: string): string => `transactions[${index}]${path === "" ? "" : path.startsWith("[") ? path : `.${path}`}`;

/** The POS field a crosswalk error is about. */
function fieldOf(l: PosLine, field: string): string {
  const at = `lines[${l.index}]`;
  if (field.startsWith("item.")) return `${at}.${l.item.system}`;
  if (field === "uom") return l.unit !== null ? `${at}.weight.unit` : `${at}.${l.item.system}`;
  if (field === "qty") return l.unit !== null ? `${at}.weight.value` : `${at}.qty`;
  return at;
}

function idsOf(raw: unknown): { store?: string; terminal?: string; id?: string } {
  if (typeof raw !== "object" || raw === null) return {};
  const r = raw as Record<string, unknown>;
  const pick = (k: string) => (typeof r[k] === "string" && (r[k] as string).length <= 64 ? { [k]: r[k] as string } : {});
  return { ...pick("store"), ...pick("terminal"), ...pick("id") };
}

function stripIndex(r: TransactionResult & { index: number }): TransactionResult {
  const { index: _index, ...rest } = r;
  return rest as TransactionResult;
}
