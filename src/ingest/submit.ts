import type { JetStreamClient } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import type { Sql } from "postgres";
import { decodeCommand, type Command } from "../contract/index.ts";
import { knownCommandIds } from "../../ledger/index.ts";
import { deadLetter, publishDeadLetter } from "../wire/index.ts";
import { publishCommands } from "../wire/index.ts";
import type { Topology } from "../wire/index.ts";
import { sleep } from "../platform/index.ts";

export interface SubmitOptions {
  readonly js: JetStreamClient;
  readonly topology: Topology;
  /** Tells NATS's max_payload, for an invalid line too large for it (its payload is kept in Postgres, given `sql`). */
  readonly nc?: NatsConnection;
  /** Needed for `wait` (outcomes) and to count commands already applied as duplicates. */
  readonly sql?: Sql;
  readonly wait?: boolean;
  readonly timeoutMs?: number;
  /** Called for each invalid line (already dead-lettered). */
  readonly onInvalid?: (line: number, message: string) => void;
  /** Commands decoded per publish round (default 5000): bounds memory for large files. */
  readonly chunk?: number;
}

export interface SubmitReport {
  readonly lines: number;
  readonly invalid: number;
  readonly published: number;
  /** Re-sent commands: already applied/rejected before, repeated in the input, or dropped by the stream. */
  readonly duplicate: number;
  readonly accepted: number;
  readonly rejected: number;
  readonly rejectedByReason: Readonly<Record<string, number>>;
  /** Commands without an outcome when `wait` timed out. */
  readonly pending: number;
}

/**
 * `tally submit`: decodes canonical commands (one JSON per line), dead-letters the invalid ones
 * with their line number and reason, publishes the rest through the normal path (envelopes,
 * PubAck) and, with `wait`, returns once every one has an outcome.
 */
export async function submit(lines: AsyncIterable<string>, opts: SubmitOptions): Promise<SubmitReport> {
  const chunkSize = opts.chunk ?? 5000;
  let lineNo = 0;
  let invalid = 0;
  let published = 0;
  let duplicate = 0;
  const seen = new Set<string>();
  const waitFor: Array<string> = [];
  let chunk: Array<Command> = [];

  const flush = async () => {
    if (chunk.length === 0) return;
    let send = chunk;
    chunk = [];
    if (opts.sql) {
      const known = await knownCommandIds(
        opts.sql,
        send.map((c) => c.id),
      );
      duplicate += known.size;
      send = send.filter((c) => !known.has(c.id));
    }
    const result = await publishCommands(opts.js, opts.topology, send);
    published += send.length;
    duplicate += result.duplicates;
    if (opts.wait) for (const c of send) waitFor.push(c.id);
  };

  for await (const raw of lines) {
    lineNo++;
    const text = raw.trim();
    if (text === "") continue;
    let parsed: unknown;
    let problem: string | null = null;
    try {
      parsed = JSON.parse(text);
    } catch {
      // Parse fallback: the line is dead-lettered with this problem.
      problem = "not valid JSON";
    }
    let command: Command | null = null;
    if (problem === null) {
      const decoded = decodeCommand(parsed);
      if (decoded._tag === "Left") problem = decoded.left.message;
      else command = decoded.right;
    }
    if (problem !== null || command === null) {
      invalid++;
      const reason = problem ?? "invalid";
      opts.onInvalid?.(lineNo, reason);
      const letter = deadLetter("submit", reason, parsed ?? text, { line: lineNo });
      await publishDeadLetter({ js: opts.js, nc: opts.nc, sql: opts.sql, topology: opts.topology }, letter, { hashOf: [text] });
      continue;
    }
    if (seen.has(command.id)) {
      duplicate++;
      continue;
    }
    seen.add(command.id);
    chunk.push(command);
    if (chunk.length >= chunkSize) await flush();
  }
  await flush();

  let accepted = 0;
  let rejected = 0;
  const rejectedByReason: Record<string, number> = {};
  let pending = 0;
  if (opts.wait && opts.sql) {
    const outcome = await waitForOutcomes(opts.sql, waitFor, opts.timeoutMs ?? 60_000);
    accepted = outcome.applied;
    rejected = outcome.rejected;
    Object.assign(rejectedByReason, outcome.byReason);
    pending = outcome.pending;
  }
  return { lines: lineNo, invalid, published, duplicate, accepted, rejected, rejectedByReason, pending };
}

/** Polls `command_outcomes` until every id has one, or the timeout passes. */
export async function waitForOutcomes(
  sql: Sql,
  ids: ReadonlyArray<string>,
  timeoutMs: number,
): Promise<{ applied: number; rejected: number; pending: number; byReason: Record<string, number> }> {
  const deadline = Date.now() + timeoutMs;
  let remaining = [...ids];
  let applied = 0;
  let rejected = 0;
  const byReason: Record<string, number> = {};
  let delay = 20;
  while (remaining.length > 0) {
    const found = new Set<string>();
    for (let i = 0; i < remaining.length; i += 10_000) {
      const slice = remaining.slice(i, i + 10_000);
      const rows = await sql<Array<{ command_id: string; status: string; reason: string | null }>>`
        select command_id, status, reason from command_outcomes where command_id = any(${sql.array(slice)}::text[])`;
      for (const r of rows) {
        found.add(r.command_id);
        if (r.status === "applied") applied++;
        else {
          rejected++;
          byReason[r.reason ?? "unknown"] = (byReason[r.reason ?? "unknown"] ?? 0) + 1;
        }
      }
    }
    remaining = remaining.filter((id) => !found.has(id));
    if (remaining.length === 0 || Date.now() >= deadline) break;
    await sleep(delay);
    delay = Math.min(500, delay * 2);
  }
  return { applied, rejected, pending: remaining.length, byReason };
}
