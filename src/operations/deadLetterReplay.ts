import { AckPolicy, DeliverPolicy } from "@nats-io/jetstream";
import type { Sql } from "postgres";
import { decodeCommand, type Command } from "../contract/index.ts";
import { Crosswalk, changeFrom, mapChange, mapWith, recordCatalogVersion, type ChangePayload, type ResolvedSource } from "../../cdc/index.ts";
import { RowView, snapshotCommandId } from "../contract/index.ts";
import { withStoredPayload, type DeadLetter } from "../wire/index.ts";
import type { NatsHandles } from "../wire/index.ts";
import { publishCommands } from "../wire/index.ts";
import type { Topology } from "../wire/index.ts";
import { resendCurrent, WEBHOOK_ORIGIN, type WebhookTarget } from "../channels/index.ts";

/** A dead letter as stored: its stream sequence is its id. */
export interface StoredDeadLetter extends DeadLetter {
  readonly id: number;
  readonly subject: string;
}

/** Every dead letter (optionally of one origin), oldest first. */
export async function listDeadLetters(nats: NatsHandles, topology: Topology, origin?: string): Promise<Array<StoredDeadLetter>> {
  const info = await nats.jsm.consumers.add(topology.dlqStream, {
    filter_subject: origin === undefined ? topology.dlqSubjects : topology.dlqSubject(origin),
    ack_policy: AckPolicy.None,
    deliver_policy: DeliverPolicy.All,
    inactive_threshold: 30_000_000_000,
  });
  const pending = info.num_pending;
  const out: Array<StoredDeadLetter> = [];
  if (pending === 0) return out;
  const consumer = await nats.js.consumers.get(topology.dlqStream, info.name);
  while (out.length < pending) {
    const batch = await consumer.fetch({ max_messages: Math.min(1000, pending - out.length), expires: 2000 });
    let n = 0;
    for await (const m of batch) {
      n++;
      out.push({ ...m.json<DeadLetter>(), id: m.seq, subject: m.subject });
    }
    if (n === 0) break;
  }
  await nats.jsm.consumers.delete(topology.dlqStream, info.name).catch(() => {}); // best effort: the ephemeral consumer expires by itself
  return out;
}

export async function getDeadLetter(nats: NatsHandles, topology: Topology, id: number): Promise<StoredDeadLetter | null> {
  const m = await nats.jsm.streams.getMessage(topology.dlqStream, { seq: id }).catch(() => null); // no such letter (answered as null: not found)
  if (!m) return null;
  return { ...m.json<DeadLetter>(), id: m.seq, subject: m.subject };
}

export type ReplayResult =
  | { readonly id: number; readonly ok: true; readonly commands: number }
  | { readonly id: number; readonly ok: false; readonly reason: string };

export interface ReplayDeps {
  readonly sql: Sql;
  readonly nats: NatsHandles;
  readonly topology: Topology;
  /** Configured CDC sources, by name: their letters are mapped again with the current crosswalk. */
  readonly sources: ReadonlyMap<string, ResolvedSource>;
  /** POS letters (origin `pos`) are whole transactions: the POS ingest validates and maps them again. */
  readonly pos?: { replay(letter: DeadLetter): Promise<{ ok: true; commands: number } | { ok: false; reason: string }> };
  /** Webhook letters (origin `webhook`) re-send the channel's current availability of their SKUs. */
  readonly webhooks?: ReadonlyArray<WebhookTarget>;
}

/**
 * Replays a dead letter: a CDC change is mapped again (so a crosswalk fixed since then now
 * resolves it), a command is decoded again; on success its commands are published (same
 * deterministic ids, so a replay is applied once) and the letter is removed. On failure the
 * letter stays, and the new reason is returned.
 */
export async function replayDeadLetter(deps: ReplayDeps, letter: StoredDeadLetter, crosswalk?: Crosswalk): Promise<ReplayResult> {
  letter = await withStoredPayload(deps.sql, letter);
  if (letter.origin === "pos") {
    if (!deps.pos) return { id: letter.id, ok: false, reason: "replaying a POS transaction needs the POS ingest" };
    const r = await deps.pos.replay(letter);
    if (!r.ok) return { id: letter.id, ok: false, reason: r.reason };
    await deps.nats.jsm.streams.deleteMessage(deps.topology.dlqStream, letter.id);
    return { id: letter.id, ok: true, commands: r.commands };
  }
  if (letter.origin === WEBHOOK_ORIGIN) {
    const r = await resendCurrent(deps.webhooks ?? [], deps.nats, deps.topology, letter);
    if ("reason" in r) return { id: letter.id, ok: false, reason: r.reason };
    await deps.nats.jsm.streams.deleteMessage(deps.topology.dlqStream, letter.id);
    return { id: letter.id, ok: true, commands: 0 };
  }
  const commands = await commandsOf(deps, letter, crosswalk);
  if ("reason" in commands) return { id: letter.id, ok: false, reason: commands.reason };
  if (commands.list.length > 0) await publishCommands(deps.nats.js, deps.topology, commands.list);
  await deps.nats.jsm.streams.deleteMessage(deps.topology.dlqStream, letter.id);
  return { id: letter.id, ok: true, commands: commands.list.length };
}

/** Removes a dead letter for good. */
export async function discardDeadLetter(nats: NatsHandles, topology: Topology, id: number): Promise<boolean> {
  return nats.jsm.streams.deleteMessage(topology.dlqStream, id).catch(() => false); // not there (any more): reported as not discarded
}

async function commandsOf(
  deps: ReplayDeps,
  letter: StoredDeadLetter,
  cached?: Crosswalk,
): Promise<{ list: ReadonlyArray<Command> } | { reason: string }> {
  const source = deps.sources.get(letter.origin);
  if (source) {
    const crosswalk = cached ?? (await Crosswalk.load(deps.sql));
    const payload = letter.payload as Omit<ChangePayload, "op"> & { op: ChangePayload["op"] | "snapshot" };
    const context = letter.context as { key?: string; lsn?: string };
    const outcome =
      payload.op === "snapshot"
        ? (() => {
            const table = source.snapshot.find((t) => t.table === payload.table);
            return mapWith(
              source.name,
              crosswalk,
              snapshotCommandId(source.name, `${context.lsn}`, payload.table, `${context.key}`),
              `${payload.table}:${context.key}`,
              letter.at,
              context.lsn,
              () => {
                if (!table) throw new Error(`${payload.table} is no longer a snapshot table of ${source.name}`);
                return table.map(new RowView(payload.table, "new", payload.new ?? {}));
              },
            );
          })()
        : mapChange(source.name, source.tables, crosswalk, changeFrom(source.name, payload as ChangePayload));
    if (outcome.error) return { reason: outcome.error.message };
    if (outcome.items.length > 0 || outcome.removedItems.length > 0)
      await Crosswalk.persist(deps.sql, source.name, outcome.items, outcome.removedItems);
    // A catalog change mapped again: its facts become a catalog version of their own (once per letter).
    if (outcome.catalog.length > 0)
      await recordCatalogVersion(deps.sql, { source: source.name, ref: `dlq:${letter.id}`, sourceAt: letter.at, facts: outcome.catalog });
    return { list: outcome.commands };
  }
  // A whole stream message (an envelope skipped by an operator): every command in it, or none.
  const envelope = letter.payload as { v?: unknown; commands?: unknown } | null;
  if (typeof envelope === "object" && envelope !== null && envelope.v === 1 && Array.isArray(envelope.commands)) {
    const list: Array<Command> = [];
    for (const [index, raw] of envelope.commands.entries()) {
      const decoded = decodeCommand(raw);
      if (decoded._tag === "Left") return { reason: `commands[${index}]: ${decoded.left.message}` };
      list.push(decoded.right);
    }
    return { list };
  }
  const decoded = decodeCommand(letter.payload);
  if (decoded._tag === "Left") return { reason: decoded.left.message };
  return { list: [decoded.right] };
}
