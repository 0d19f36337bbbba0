/**
 * Checkout holds. A reservation is a row (the durable record, its expiry the durable timer) and one
 * `reserve` command per line, decided by the SKU's actor (the single writer), so two carts racing
 * for the last unit cannot both win. A cart succeeds or fails whole: when any line is refused, the
 * lines already held are released. Every command id is deterministic from the reservation
 * (`res:<id>:<line>:<attempt>`, `res:<id>:<line>:release|fulfill`), so a retry, a second process
 * or the sweeper after a restart can re-drive it without doing anything twice. Each attempt is its
 * own hold in the ledger, named by its reserve command's id (a channel line refused at one location
 * and tried at another leaves a refused hold behind); release and fulfil name the held attempt.
 */
import { randomUUID } from "node:crypto";
import type { Sql } from "postgres";
import type { Logger } from "pino";
import {
  decodeCommand,
  locationAvailable,
  reserveCommandId,
  settleCommandId,
  withheldBy,
  type Command,
  type ReserveScope,
} from "../contract/index.ts";
import { type ChannelConfig, sleep } from "../platform/index.ts";
import { deadLetter, publishDeadLetter } from "../wire/index.ts";
import type { NatsHandles } from "../wire/index.ts";
import { releaseBrokenBundleHolds } from "./bundleHolds.ts";
import { expireDueHolds } from "./holdExpiry.ts";
import { publishCommands } from "../wire/index.ts";
import type { Topology } from "../wire/index.ts";
import { payloadHash } from "../ingest/index.ts";
import type { OutcomeWaiter } from "../wire/index.ts";
import { HoldAdmission, isShed, type Shed, type Ticket } from "./admission.ts";
import { ReservationError, type WithheldLine } from "./errors.ts";
import { INITIAL_STATUS, movesFrom, nextStatus, type LifecycleEventType, type ReservationStatus } from "./lifecycle.ts";

export type { ReservationStatus } from "./lifecycle.ts";
type LineState = "pending" | "held" | "rejected" | "released" | "fulfilled";

export interface ReservationDeps {
  readonly sql: Sql;
  readonly nats: NatsHandles;
  readonly topology: Topology;
  readonly log: Logger;
  readonly outcomes: OutcomeWaiter;
  readonly metrics: ReservationMetrics;
  readonly channels: Readonly<Record<string, ChannelConfig>>;
  readonly decisionTimeoutMs: number;
  /** How long one publish may wait for its PubAck before the request fails (NATS down, JetStream full). */
  readonly requestTimeoutMs: number;
  /**
   * `TALLY_RESERVATION_SHED_LAG_MS`: when a partition's holds take longer than this to be decided, new holds
   * there are shed (`overloaded`) before anything is written or published (see admission.ts); 0 or absent sheds none.
   */
  readonly shedLagMs?: number;
}

/** A line as asked for (bundles already expanded into their components). */
export interface LineRequest {
  readonly sku: string;
  readonly qty: number;
  readonly location: string | null;
  /** The bundle this line is a component of, as asked (its own status counts too). */
  readonly bundle?: string | null;
}

export interface CreateRequest {
  readonly principal: string;
  readonly idempotencyKey: string;
  /** What the client sent, hashed: the same key with another body is refused. */
  readonly body: unknown;
  readonly channel: string | null;
  readonly lines: ReadonlyArray<LineRequest>;
  readonly ttlSeconds: number;
}

/** What the service reports to its metrics, by outcome. */
export type ReservationOutcome =
  | "held"
  | "insufficient_stock"
  | "withheld"
  | "invalid"
  | "timeout"
  | "replayed"
  | "committed"
  | "released"
  | "fulfilled"
  | "expired"
  /** Refused at once, the apply path being behind (admission control): nothing written or published. */
  | "shed";

/** The metrics hooks the service needs (the API process implements them with its Prometheus registry). */
export interface ReservationMetrics {
  /** A reservation request decided (or given up on) after `seconds`. */
  observeDecision(outcome: ReservationOutcome, seconds: number): void;
  /** One more reservation request or transition with this outcome. */
  count(outcome: ReservationOutcome): void;
  /** A command this process published. */
  commandPublished(type: Command["type"], source: string): void;
  /** Registers the source of the largest partition's hold lag, in seconds (a gauge reads it when scraped). */
  holdLag?(read: () => number): void;
}

/**
 * How a reservation request was decided: every line `held`, a line refused for `insufficient` stock,
 * an `invalid` line no command could be made of (given up on), or still `undecided` (the actors did
 * not answer in time; a retry with the same key, or the sweeper, decides it).
 */
export type Decision = "held" | "insufficient" | "invalid" | "undecided";

/** A decision and the body that describes it (stored with the reservation, given again on a replay). */
export interface Answer {
  readonly decision: Decision;
  readonly body: Record<string, unknown>;
}

/**
 * The stored answer's `response_status` column holds the HTTP status the first request got (the
 * schema's encoding of a final decision); these are the only values it holds.
 */
const STORED_STATUS = { held: 201, insufficient: 409, invalid: 400 } as const satisfies Record<Exclude<Decision, "undecided">, number>;

const storedAnswer = (status: number, body: Record<string, unknown>): Answer => {
  const decision = (Object.keys(STORED_STATUS) as Array<keyof typeof STORED_STATUS>).find((d) => STORED_STATUS[d] === status);
  if (decision === undefined) throw new Error(`reservation answer stored with an unknown status ${status}`);
  return { decision, body };
};

/** A reservation as stored (callers see its id and channel; `get` gives its view). */
export interface ReservationRow {
  id: string;
  principal: string;
  request_hash: string;
  channel: string | null;
  status: ReservationStatus;
  ttl_seconds: number;
  expires_at: Date | null;
  response_status: number | null;
  response_body: Record<string, unknown> | null;
  created_at: Date;
}
type Row = ReservationRow;

interface LineRow {
  reservation_id: string;
  line: number;
  sku: string;
  qty: number;
  fixed_location: string | null;
  location: string | null;
  command_id: string | null;
  tried: Array<string>;
  state: LineState;
  available: number | null;
}

const CLAIM_SLACK_MS = 5_000;
/**
 * How long a hold left undecided at its request's timeout is still watched for its outcome (admission
 * control's measurement); past it, it counts as decided this late.
 */
const WATCH_UNDECIDED_MS = 60_000;

export class Reservations {
  readonly #admission: HoldAdmission;

  constructor(readonly deps: ReservationDeps) {
    this.#admission = new HoldAdmission(deps.shedLagMs ?? 0, undefined, deps.decisionTimeoutMs + CLAIM_SLACK_MS + WATCH_UNDECIDED_MS * 2);
    deps.metrics.holdLag?.(() => this.#admission.maxLagMs() / 1000);
  }

  /**
   * Creates (or, for a known Idempotency-Key, answers again) a reservation. When a partition of its
   * lines is behind (admission control), a new one is refused (`overloaded`) before anything is written.
   */
  async create(req: CreateRequest): Promise<Answer & { replayed: boolean }> {
    const hash = payloadHash(req.body);
    const id = `r_${randomUUID().replaceAll("-", "")}`;
    const claimMs = this.deps.decisionTimeoutMs + CLAIM_SLACK_MS;
    const started = performance.now();
    const admitted = this.#admission.admit(req.lines.map((l) => this.deps.topology.partitionOf(l.sku)));
    if (isShed(admitted)) return this.#shed(req, hash, admitted);
    let watched = false;
    try {
      await this.#refuseWithheld(req);
      const created = await this.#insert(id, req, hash, claimMs);
      if (created === null) return await this.#replay(req, hash, claimMs);
      const answer = await this.#driveOrGiveUp(id, this.deps.decisionTimeoutMs, created);
      if (answer.decision === "held" || answer.decision === "insufficient") this.#admission.decided(admitted);
      else if (answer.decision === "undecided") watched = this.#watch(id, admitted);
      this.deps.metrics.observeDecision(outcomeOf(answer), (performance.now() - started) / 1000);
      this.deps.metrics.count(outcomeOf(answer));
      return { ...answer, replayed: false };
    } finally {
      if (!watched) this.#admission.drop(admitted);
    }
  }

  /**
   * A hold the actors did not decide before its request's timeout stays in its partitions' lag until
   * its outcome is known (or WATCH_UNDECIDED_MS passes): a stopped or stalled worker keeps the
   * partition shed though nothing comes back from it.
   */
  #watch(id: string, ticket: Ticket): boolean {
    const { sql, outcomes } = this.deps;
    void (async () => {
      const rows = await sql<Array<{ command_id: string }>>`
        select command_id from reservation_lines where reservation_id = ${id} and state = 'pending' and command_id is not null`;
      if (rows.length === 0) return this.#admission.drop(ticket);
      await outcomes.wait(
        rows.map((r) => r.command_id),
        WATCH_UNDECIDED_MS,
      ).done;
      this.#admission.decided(ticket);
    })().catch(() => this.#admission.drop(ticket));
    return true;
  }

  /**
   * A request shed by admission control: a known Idempotency-Key still gets its stored answer (or, still
   * pending, `undecided` at once: the sweeper drives it); a new one is refused, nothing written or published.
   */
  async #shed(req: CreateRequest, hash: string, shed: Shed): Promise<Answer & { replayed: boolean }> {
    const known = await this.#ofKey(req, hash);
    if (!known) {
      this.deps.metrics.count("shed");
      throw ReservationError.overloaded(shed);
    }
    this.deps.metrics.count("replayed");
    if ("answer" in known) return known.answer;
    return { ...undecided(known.row.id), replayed: true };
  }

  /**
   * The reservation stored under this request's Idempotency-Key (null when none): its stored answer once
   * decided, else the row (with whether its claim lapsed). A different request under the key is a conflict.
   */
  async #ofKey(req: CreateRequest, hash: string): Promise<{ answer: Answer & { replayed: true } } | { row: Row & { claimable: boolean } } | null> {
    const [row] = await this.deps.sql<Array<Row & { claimable: boolean }>>`
      select *, (claimed_until is null or claimed_until < now()) as claimable
        from reservations where principal = ${req.principal} and idempotency_key = ${req.idempotencyKey}`;
    if (!row) return null;
    if (row.request_hash !== hash) throw ReservationError.idempotencyConflict(row.id, req.idempotencyKey);
    if (row.status !== INITIAL_STATUS && row.response_status !== null)
      return { answer: { ...storedAnswer(row.response_status, row.response_body!), replayed: true } };
    return { row };
  }

  /**
   * Refuses (throws `item_withheld`) a new request a line of which names an item its channel may not
   * sell, by the status rule availability follows (`withheldBy`): nothing is written or published. A
   * known Idempotency-Key is not checked: its stored answer stands (a hold placed before the item was
   * blocked stays, as any hold does when its item's status changes). A reservation without a channel
   * follows the default policy (no remaining stock of a discontinued item is sold).
   */
  async #refuseWithheld(req: CreateRequest): Promise<void> {
    const skus = [...new Set(req.lines.flatMap((l) => (l.bundle ? [l.sku, l.bundle] : [l.sku])))];
    const [found] = await this.deps.sql<[{ known: boolean; statuses: Array<{ sku: string; status: string }> }]>`
      select exists (select from reservations where principal = ${req.principal} and idempotency_key = ${req.idempotencyKey}) as known,
             coalesce((select json_agg(json_build_object('sku', sku, 'status', status)) from items
                        where status <> 'active' and sku = any(${this.deps.sql.array(skus)}::text[])), '[]'::json) as statuses`;
    if (!found || found.known || found.statuses.length === 0) return;
    const status = new Map(found.statuses.map((r) => [r.sku, r.status]));
    const policy = { sellsDiscontinued: (req.channel !== null && this.deps.channels[req.channel]?.sellsDiscontinued) || false };
    const withheld: Array<WithheldLine> = [];
    for (const [index, l] of req.lines.entries())
      for (const sku of l.bundle ? [l.bundle, l.sku] : [l.sku]) {
        const reason = withheldBy(status.get(sku) ?? "active", policy);
        if (reason !== null) {
          withheld.push({ index, sku, reason });
          break;
        }
      }
    if (withheld.length === 0) return;
    this.deps.metrics.count("withheld");
    throw ReservationError.withheld(req.channel, withheld);
  }

  /** The new reservation and its lines, or null when the principal already used the idempotency key. */
  async #insert(id: string, req: CreateRequest, hash: string, claimMs: number): Promise<{ row: Row; lines: ReadonlyArray<LineRow> } | null> {
    const { sql } = this.deps;
    // One statement (atomic without a transaction): the reservation and its lines, or nothing when the
    // key exists. A line at a fixed location gets its first command id at once (what #driveLine would
    // assign), so the decision needs no further write before its command goes out.
    const fixed = req.lines.map((l, i) => (l.location !== null ? reserveCommandId(id, i + 1, 1) : null));
    const inserted = await sql<Array<LineRow & { reservation_created_at: Date }>>`
      with r as (
        insert into reservations (id, principal, idempotency_key, request_hash, channel, status, ttl_seconds, claimed_until)
        values (${id}, ${req.principal}, ${req.idempotencyKey}, ${hash}, ${req.channel}, ${INITIAL_STATUS}, ${req.ttlSeconds},
                now() + ${claimMs} * interval '1 millisecond')
        on conflict (principal, idempotency_key) do nothing
        returning id, created_at
      ), l as (
        insert into reservation_lines (reservation_id, line, sku, qty, fixed_location, location, command_id, tried, state)
        select r.id, t.l, t.s, t.q, t.f, t.f, t.c, case when t.f is null then '{}'::text[] else array[t.f] end, 'pending'
          from r cross join unnest(
          ${sql.array(req.lines.map((_, i) => i + 1))}::int[],
          ${sql.array(req.lines.map((l) => l.sku))}::text[],
          ${sql.array(req.lines.map((l) => l.qty))}::bigint[],
          ${sql.array(req.lines.map((l) => l.location) as Array<string>)}::text[],
          ${sql.array(fixed as Array<string>)}::text[]) as t(l, s, q, f, c)
        returning *
      )
      select l.*, r.created_at as reservation_created_at from l cross join r order by l.line`;
    if (inserted.length === 0) return null;
    const row: Row = {
      id,
      principal: req.principal,
      request_hash: hash,
      channel: req.channel,
      status: INITIAL_STATUS,
      ttl_seconds: req.ttlSeconds,
      expires_at: null,
      response_status: null,
      response_body: null,
      created_at: inserted[0]!.reservation_created_at,
    };
    return { row, lines: inserted.map(({ reservation_created_at: _, ...l }) => l) };
  }

  /** A retry with the same Idempotency-Key: the stored answer, or the decision taken over once its claim lapsed. */
  async #replay(req: CreateRequest, hash: string, claimMs: number): Promise<Answer & { replayed: boolean }> {
    const deadline = Date.now() + this.deps.decisionTimeoutMs;
    for (;;) {
      const known = await this.#ofKey(req, hash);
      if (!known) throw new Error("reservation vanished");
      if ("answer" in known) {
        this.deps.metrics.count("replayed");
        return known.answer;
      }
      const { row } = known;
      if (row.claimable && (await this.#claim(row.id, claimMs))) {
        const answer = await this.#driveOrGiveUp(row.id, Math.max(1000, deadline - Date.now()));
        return { ...answer, replayed: true };
      }
      if (Date.now() > deadline) throw ReservationError.inProgress(row.id);
      await sleep(50);
    }
  }

  async #claim(id: string, ms: number): Promise<boolean> {
    const rows = await this.deps.sql`
      update reservations set claimed_until = now() + ${ms} * interval '1 millisecond'
       where id = ${id} and status = ${INITIAL_STATUS} and (claimed_until is null or claimed_until < now())`;
    return rows.count === 1;
  }

  /** The reservation as the API shows it, or null. */
  async get(id: string): Promise<{ row: Row; body: Record<string, unknown> } | null> {
    const [row] = await this.deps.sql<Array<Row>>`select * from reservations where id = ${id}`;
    if (!row) return null;
    const lines = await this.#lines(this.deps.sql, id);
    return { row, body: view(row, lines) };
  }

  async #lines(sql: Sql, id: string): Promise<Array<LineRow>> {
    return sql<Array<LineRow>>`select * from reservation_lines where reservation_id = ${id} order by line`;
  }

  /**
   * Decides a pending reservation: each line's reserve command goes to its SKU's actor (a channel
   * line tries the channel's locations, best first); then all held → `held`, any refused → the
   * others released and `rejected`. Answers `undecided` (leaving it pending) when the actors did not
   * answer in time; a retry or the sweeper picks it up again.
   */
  async #drive(id: string, timeoutMs: number, created?: { row: Row; lines: ReadonlyArray<LineRow> }): Promise<Answer> {
    const { sql } = this.deps;
    // Created just now: the rows are known, and no command of theirs can have an outcome yet.
    const [[row], lines] = created
      ? [[created.row], created.lines]
      : await Promise.all([sql<Array<Row>>`select * from reservations where id = ${id}`, this.#lines(sql, id)]);
    const deadline = Date.now() + timeoutMs;
    const decided = await Promise.all(
      lines.map((l) => (l.state === "pending" ? this.#driveLine(row!, l, deadline, created !== undefined) : { state: l.state, line: l })),
    );
    const states = decided.map((d) => d.state);
    if (states.every((s) => s === "held"))
      return this.#hold(
        row!,
        decided.map((d) => d.line),
      );
    const heldLines = decided.filter((d) => d.state === "held").map((d) => d.line);
    if (heldLines.length > 0)
      await sql`
        update reservation_lines set state = 'held'
         where reservation_id = ${id} and line = any(${sql.array(heldLines.map((l) => l.line))}::int[]) and state = 'pending'`;
    // A line still undecided may yet be applied: nothing is final (nor released) until every line is decided.
    if (states.some((s) => s === "rejected") && !states.includes("undecided")) return this.#refuse(row!, heldLines);
    await sql`update reservations set claimed_until = null where id = ${id} and status = ${INITIAL_STATUS}`;
    return undecided(id);
  }

  /** Every line held: the lines and the reservation (`hold`) in one statement, the answer stored with it. */
  async #hold(row: Row, lines: ReadonlyArray<LineRow>): Promise<Answer> {
    const { sql, log } = this.deps;
    const { id } = row;
    const step = nextStatus(row.status, "hold");
    if (step.kind !== "move") return this.#decidedElsewhere(id);
    const { from, to } = step;
    const held = lines.map((l) => ({ ...l, state: "held" as const }));
    const body = view({ ...row, status: to, expires_at: null }, held);
    const [done] = await sql<Array<{ expires_at: Date }>>`
      with l as (
        update reservation_lines set state = 'held'
         where reservation_id = ${id} and line = any(${sql.array(held.map((l) => l.line))}::int[]) and state = 'pending'
      )
      update reservations
         set status = ${to}, expires_at = now() + ttl_seconds * interval '1 second', updated_at = now(), claimed_until = null,
             response_status = ${STORED_STATUS.held},
             response_body = jsonb_set(${sql.json(body as never)}::jsonb, '{expiresAt}',
               to_jsonb(to_char((now() + ttl_seconds * interval '1 second') at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')))
       where id = ${id} and status = ${from}
       returning expires_at`;
    if (!done) {
      // Decided meanwhile by another driver (a retry, the sweeper): its stored answer stands.
      const stored = await this.#stored(id);
      if (stored) return stored;
    }
    log.info({ reservationId: id, commandIds: held.map((l) => l.command_id) }, "reservation held");
    return { decision: "held", body: { ...body, expiresAt: done?.expires_at.toISOString() ?? null } };
  }

  /** A line refused: the held ones released, the reservation `reject`ed with the insufficient-stock answer. */
  async #refuse(row: Row, heldLines: ReadonlyArray<LineRow>): Promise<Answer> {
    const { sql, log } = this.deps;
    const { id } = row;
    await this.#settle(id, heldLines, "release", "released");
    const final = await this.#lines(sql, id);
    const refused = final.filter((l) => l.state === "rejected");
    const body = {
      error: "insufficient_stock",
      message: refused
        .map((l) => `cannot reserve ${l.qty} of ${l.sku}${l.location ? ` at ${l.location}` : ""}: only ${l.available ?? 0} available`)
        .join("; "),
      id,
      ...(refused.length === 1 ? { available: refused[0]!.available ?? 0 } : {}),
      lines: final.map((l) => ({ line: l.line, sku: l.sku, qty: l.qty, location: l.location, state: l.state, available: l.available })),
    };
    const answer = await this.#finish(row, "reject", { decision: "insufficient", body });
    log.info({ reservationId: id, commandIds: refused.map((l) => l.command_id) }, "reservation refused: insufficient stock");
    return answer;
  }

  /** A reservation another driver (a retry, the sweeper) decided while this one was deciding it: its stored answer stands. */
  async #decidedElsewhere(id: string): Promise<Answer> {
    const stored = await this.#stored(id);
    if (!stored) throw new Error(`reservation ${id} was decided elsewhere, but no answer is stored`);
    return stored;
  }

  /** The answer stored with a decided reservation, if any. */
  async #stored(id: string): Promise<Answer | null> {
    const [r] = await this.deps.sql<Array<Row>>`select * from reservations where id = ${id}`;
    return r?.response_status != null ? storedAnswer(r.response_status, r.response_body!) : null;
  }

  /**
   * Decides one line: its reserve command out, its outcome back. A hold is not written here (the
   * caller writes the lines with the reservation); a refusal is.
   */
  async #driveLine(row: Row, line: LineRow, deadline: number, created: boolean): Promise<{ state: LineState | "undecided"; line: LineRow }> {
    const { sql, outcomes } = this.deps;
    let l = line;
    for (;;) {
      // A command id assigned just now cannot have an outcome yet: no need to look it up.
      let assignedNow = created && l.command_id !== null;
      if (l.command_id === null) {
        const pick = await this.#pickLocation(row, l);
        const attempt = l.tried.length + 1;
        const commandId = reserveCommandId(row.id, l.line, attempt);
        const [updated] = await sql<Array<LineRow>>`
          update reservation_lines set location = ${pick.location}, command_id = ${commandId}, tried = array_append(tried, ${pick.location}::text)
           where reservation_id = ${row.id} and line = ${l.line} and command_id is null returning *`;
        if (!updated) return { state: "undecided", line: l }; // someone else is driving it
        l = updated;
        assignedNow = true;
      }
      const commandId = l.command_id!;
      let outcome = assignedNow ? undefined : (await outcomes.known([commandId])).get(commandId);
      if (!outcome) {
        const waiting = outcomes.wait([commandId], Math.max(0, deadline - Date.now()));
        try {
          await this.#publish([this.#command("reserve", row.id, l, commandId, { scope: this.#scope(row) })]);
        } catch (error) {
          waiting.cancel();
          await waiting.done;
          throw error;
        }
        outcome = (await waiting.done).get(commandId);
      }
      if (!outcome) return { state: "undecided", line: l };
      if (outcome.status === "applied") return { state: "held", line: l };
      const detail = outcome.detail as { available?: number; channelAvailable?: number } | null;
      const available = detail?.available ?? 0;
      // Another location may have it, unless the channel as a whole does not.
      const channelShort = detail?.channelAvailable !== undefined && detail.channelAvailable < l.qty;
      if (outcome.reason === "insufficient_stock" && l.fixed_location === null && row.channel !== null && !channelShort) {
        const next = await this.#pickLocation(row, l);
        if (next.enough && !l.tried.includes(next.location) && Date.now() < deadline) {
          const [updated] = await sql<Array<LineRow>>`
            update reservation_lines set command_id = null where reservation_id = ${row.id} and line = ${l.line} and command_id = ${commandId} returning *`;
          if (!updated) return { state: "undecided", line: l };
          l = updated;
          continue;
        }
      }
      await sql`update reservation_lines set state = 'rejected', available = ${available} where reservation_id = ${row.id} and line = ${l.line}`;
      return { state: "rejected", line: { ...l, state: "rejected", available } };
    }
  }

  /** The line's location: the one asked for, else the channel's location with the most available not yet tried. */
  async #pickLocation(row: Row, l: LineRow): Promise<{ location: string; enough: boolean }> {
    if (l.fixed_location !== null) return { location: l.fixed_location, enough: true };
    const channel = this.deps.channels[row.channel!]!;
    const stock = await this.deps.sql<
      Array<{ location: string; on_hand: number | bigint; reserved: number | bigint; safety_stock: number | bigint }>
    >`
      select loc as location,
             coalesce((select sum(qty) from balances b where b.sku = ${l.sku} and b.location = loc and b.bucket = 'on_hand'), 0)::int8 as on_hand,
             coalesce((select sum(qty) from balances b where b.sku = ${l.sku} and b.location = loc and b.bucket = 'reserved'), 0)::int8 as reserved,
             coalesce((select safety_stock from sku_locations s where s.sku = ${l.sku} and s.location = loc), 0)::int8 as safety_stock
        from unnest(${this.deps.sql.array([...channel.locations])}::text[]) with ordinality as t(loc, n)
       order by n`;
    // The one availability formula (src/contract), most available first; ties keep the channel's order.
    const rows = stock
      .map((r) => ({
        location: r.location,
        available: locationAvailable({ onHand: BigInt(r.on_hand), reserved: BigInt(r.reserved), safetyStock: BigInt(r.safety_stock) }),
      }))
      .sort((a, b) => (a.available === b.available ? 0 : a.available > b.available ? -1 : 1));
    const open = rows.filter((r) => !l.tried.includes(r.location));
    const best = open[0] ?? rows[0]!;
    return { location: best.location, enough: best.available >= BigInt(l.qty) };
  }

  /** A channel's hold is checked against what the channel may sell (its buffer held back). */
  #scope(row: Row): ReserveScope | undefined {
    const channel = row.channel === null ? undefined : this.deps.channels[row.channel];
    return channel ? { channel: row.channel!, locations: channel.locations as ReserveScope["locations"], buffer: channel.buffer } : undefined;
  }

  /** A line's command; its hold is the line's current attempt, named by that attempt's reserve command id. */
  #command(
    type: "reserve" | "release" | "fulfill",
    reservationId: string,
    l: LineRow,
    id: string,
    opts: { readonly scope?: ReserveScope | undefined; readonly expired?: boolean } = {},
  ): Command {
    const decoded = decodeCommand({
      ...(opts.scope ? { scope: opts.scope } : {}),
      ...(opts.expired ? { expired: true } : {}),
      id,
      type,
      sku: l.sku,
      location: l.location,
      qty: l.qty,
      reservationId: l.command_id,
      source: { system: "api", ref: `reservation:${reservationId}` },
      occurredAt: new Date().toISOString(),
    });
    if (decoded._tag === "Left") throw new UndrivableLine(reservationId, l.line, decoded.left.message);
    return decoded.right;
  }

  async #publish(commands: ReadonlyArray<Command>): Promise<void> {
    if (commands.length === 0) return;
    await publishCommands(this.deps.nats.js, this.deps.topology, commands, { deadline: Date.now() + this.deps.requestTimeoutMs });
    for (const c of commands) this.deps.metrics.commandPublished(c.type, c.source.system);
  }

  /** Publishes release/fulfill for these held lines (PubAck: durable), then marks them; `expired`: their holds lapsed. */
  async #settle(
    id: string,
    lines: ReadonlyArray<LineRow>,
    type: "release" | "fulfill",
    state: LineState,
    sql: Sql = this.deps.sql,
    expired = false,
  ): Promise<void> {
    if (lines.length === 0) return;
    const commands = lines.map((l) => this.#command(type, id, l, settleCommandId(id, l.line, type), { expired }));
    await this.#publish(commands);
    this.deps.log.info({ reservationId: id, commandIds: commands.map((c) => c.id) }, `reservation lines ${type}d`);
    await sql`
      update reservation_lines set state = ${state}
       where reservation_id = ${id} and line = any(${sql.array(lines.map((l) => l.line))}::int[])`;
  }

  /**
   * Ends a pending reservation with `event` (per the lifecycle) and stores its final answer. When
   * another driver decided it meanwhile, that driver's stored answer stands.
   */
  async #finish(row: Row, event: LifecycleEventType, answer: Answer & { decision: keyof typeof STORED_STATUS }): Promise<Answer> {
    const { sql } = this.deps;
    const step = nextStatus(row.status, event);
    if (step.kind !== "move") return this.#decidedElsewhere(row.id);
    const { from, to } = step;
    const updated = await sql`
      update reservations set status = ${to}, response_status = ${STORED_STATUS[answer.decision]}, response_body = ${sql.json(answer.body as never)},
             expires_at = null, claimed_until = null, updated_at = now()
       where id = ${row.id} and status = ${from}`;
    if (updated.count === 1) return answer;
    return (await this.#stored(row.id)) ?? answer;
  }

  /** Order placed: the hold stays until fulfilled or released, and no longer expires. Its view. */
  async commit(id: string, may: (row: Row) => void): Promise<Record<string, unknown>> {
    const { sql } = this.deps;
    const found = await this.get(id);
    if (!found) throw ReservationError.notFound(id);
    may(found.row);
    const step = nextStatus(found.row.status, "commit");
    if (step.kind === "move") {
      // A hold past its expiry is not committed (the sweeper expires it): the database's clock decides.
      const [row] = await sql<Array<Row>>`
        update reservations set status = ${step.to}, updated_at = now()
         where id = ${id} and status = ${step.from} and expires_at > now() returning *`;
      if (row) {
        this.deps.metrics.count("committed");
        return view(row, await this.#lines(sql, id));
      }
    }
    const now = step.kind === "move" ? (await this.get(id))! : found;
    if (nextStatus(now.row.status, "commit").kind === "repeat") return now.body;
    throw ReservationError.wrongStatus(id, now.row.status, "commit");
  }

  /** Releases a held or committed reservation (idempotent for one already released, expired or refused). Its view. */
  async release(id: string, may: (row: Row) => void): Promise<Record<string, unknown>> {
    return this.#close(id, may, "release", "released");
  }

  /** Ships a held or committed reservation: `fulfill` per line (reserved − qty, on hand − qty). Its view. */
  async fulfill(id: string, may: (row: Row) => void): Promise<Record<string, unknown>> {
    return this.#close(id, may, "fulfill", "fulfilled");
  }

  async #close(id: string, may: (row: Row) => void, type: "release" | "fulfill", lineState: LineState): Promise<Record<string, unknown>> {
    const found = await this.get(id);
    if (!found) throw ReservationError.notFound(id);
    may(found.row);
    const step = await this.deps.sql.begin(async (tx) => {
      const [row] = await tx<Array<Row>>`select * from reservations where id = ${id} for update`;
      const step = nextStatus(row!.status, type);
      if (step.kind === "move") {
        const lines = await this.#lines(tx as unknown as Sql, id);
        await this.#settle(
          id,
          lines.filter((l) => l.state === "held"),
          type,
          lineState,
          tx as unknown as Sql,
        );
        await tx`update reservations set status = ${step.to}, updated_at = now() where id = ${id} and status = ${step.from}`;
      }
      return step;
    });
    if (step.kind === "refused") throw ReservationError.wrongStatus(id, step.status, type);
    if (step.kind === "move") this.deps.metrics.count(step.to as "released" | "fulfilled");
    const now = await this.get(id);
    return now!.body;
  }

  /** One sweep: expire due holds (deterministic release ids, safe to run in several processes), re-drive stale pending ones. */
  async sweep(signal?: AbortSignal): Promise<{ expired: number; redriven: number }> {
    const { sql } = this.deps;
    let expired = 0;
    for (;;) {
      const n = await sql.begin(async (tx) => {
        const due = await tx<Array<{ id: string; status: ReservationStatus }>>`
          select id, status from reservations where status = any(${tx.array([...movesFrom("expire")])}::text[]) and expires_at <= now()
           order by expires_at limit 50 for update skip locked`;
        for (const { id, status } of due) {
          const { from, to } = move(status, "expire");
          const lines = await this.#lines(tx as unknown as Sql, id);
          await this.#settle(
            id,
            lines.filter((l) => l.state === "held"),
            "release",
            "released",
            tx as unknown as Sql,
            true,
          );
          await tx`update reservations set status = ${to}, updated_at = now() where id = ${id} and status = ${from}`;
          this.deps.metrics.count("expired");
        }
        return due.length;
      });
      expired += n;
      if (n < 50 || signal?.aborted) break;
    }
    // Holds with an expiry of their own (from a CDC mapping) lapse here too.
    const holds = await expireDueHolds(sql, this.deps.nats.js, this.deps.topology);
    for (const f of holds.failed) this.deps.log.warn({ sku: f.sku, holdId: f.holdId, reason: f.message }, "cannot expire hold: it stays open");
    // A CDC bundle line whose component was refused: its other components' holds go too (all or none).
    const bundles = await releaseBrokenBundleHolds(sql, this.deps.nats.js, this.deps.topology);
    for (const f of bundles.failed)
      this.deps.log.warn({ sku: f.sku, holdId: f.holdId, reason: f.message }, "cannot release a bundle component's hold");
    let redriven = 0;
    const stale = await sql<Array<{ id: string }>>`
      select id from reservations where status = ${INITIAL_STATUS} and (claimed_until is null or claimed_until < now())
       order by created_at limit 20`;
    for (const { id } of stale) {
      if (signal?.aborted) break;
      if (!(await this.#claim(id, this.deps.decisionTimeoutMs + CLAIM_SLACK_MS))) continue;
      // One row must not hold up the others: a row no command can be made of is given up (dead-lettered,
      // answered 400); any other failure leaves it for the next sweep and moves on to the next row.
      try {
        await this.#driveOrGiveUp(id, Math.min(2000, this.deps.decisionTimeoutMs));
        redriven++;
      } catch (error) {
        this.deps.log.warn({ err: error, reservationId: id }, "reservation re-drive failed; the next sweep retries it");
      }
    }
    return { expired, redriven };
  }

  /** #drive, except that a reservation no command can be made of is given up: its stored `invalid` answer. */
  async #driveOrGiveUp(id: string, timeoutMs: number, created?: { row: Row; lines: ReadonlyArray<LineRow> }): Promise<Answer> {
    try {
      return await this.#drive(id, timeoutMs, created);
    } catch (error) {
      if (!(error instanceof UndrivableLine)) throw error;
      return await this.#giveUp(id, error);
    }
  }

  /** A pending reservation whose line cannot become a command: its held lines released, it is rejected (`invalid`) and dead-lettered. */
  async #giveUp(id: string, error: UndrivableLine): Promise<Answer> {
    const { sql, nats, topology, log } = this.deps;
    const [[row], lines] = await Promise.all([sql<Array<Row>>`select * from reservations where id = ${id}`, this.#lines(sql, id)]);
    const letter = deadLetter(DLQ_ORIGIN, error.message, { reservation: row, lines }, { reservationId: id, line: error.line });
    await publishDeadLetter({ js: nats.js, nc: nats.nc, sql, topology }, letter);
    await this.#settle(
      id,
      lines.filter((l) => l.state === "held"),
      "release",
      "released",
    );
    await sql`update reservation_lines set state = 'rejected' where reservation_id = ${id} and state = 'pending'`;
    const path = `lines[${error.line - 1}]`;
    const body = { error: "invalid_request", message: `${path}: ${error.problem}`, issues: [{ path, message: error.problem }], id };
    const answer = await this.#finish(row!, "reject", { decision: "invalid", body });
    log.warn({ reservationId: id, reason: error.message }, "reservation cannot be driven: rejected and dead-lettered");
    return answer;
  }
}

const DLQ_ORIGIN = "reservations";

/** The answer for a reservation still pending: retry with the same key. */
const undecided = (id: string): Answer => ({
  decision: "undecided",
  body: { error: "decision_pending", message: "the stock actors have not decided yet; retry with the same Idempotency-Key", id },
});

/** A reservation line no valid command can be made of (a row written before its fields were checked as strictly). */
class UndrivableLine extends Error {
  override readonly name = "UndrivableLine";
  constructor(
    readonly reservationId: string,
    readonly line: number,
    readonly problem: string,
  ) {
    super(`reservation ${reservationId} line ${line}: ${problem}`);
  }
}

function view(row: Row, lines: ReadonlyArray<LineRow>): Record<string, unknown> {
  // A hold past its TTL is expired from that moment (commit already refuses it), even before the
  // sweeper has released its lines; the lines keep their real state until it has.
  const lapse = nextStatus(row.status, "expire");
  const lapsed = lapse.kind === "move" && row.expires_at !== null && row.expires_at.getTime() <= Date.now();
  return {
    id: row.id,
    status: lapsed ? lapse.to : row.status,
    channel: row.channel,
    expiresAt: lapse.kind === "move" && row.expires_at && !lapsed ? row.expires_at.toISOString() : null,
    createdAt: row.created_at.toISOString(),
    lines: lines.map((l) => ({ line: l.line, sku: l.sku, qty: l.qty, location: l.location, state: l.state })),
  };
}

const OUTCOME_OF: Record<Decision, ReservationOutcome> = {
  held: "held",
  insufficient: "insufficient_stock",
  invalid: "invalid",
  undecided: "timeout",
};
const outcomeOf = (a: Answer): ReservationOutcome => OUTCOME_OF[a.decision];

/** The status change `event` makes from `status`, per the lifecycle; callers ask only where the lifecycle allows one. */
function move(status: ReservationStatus, event: LifecycleEventType): { readonly from: ReservationStatus; readonly to: ReservationStatus } {
  const step = nextStatus(status, event);
  if (step.kind !== "move") throw new Error(`reservation lifecycle: a ${status} reservation cannot ${event}`);
  return step;
}
