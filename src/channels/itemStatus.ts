/**
 * Availability and item status agree. The outbox relay is the one door every availability goes
 * through on its way to channels (KV bucket, subjects, and from them `GET /v1/availability`, SSE,
 * webhooks and the bundles derived from components), so the status rule (`withheldBy`,
 * src/contract) is applied there, to each payload as it is published, with the item's status as
 * the item master has it then: a blocked item shows 0 in every channel, a discontinued one in every
 * channel that does not sell remaining stock (`channels.<name>.sellsDiscontinued`).
 *
 * A status change moves no stock, so no worker writes a new availability: a trigger on `items`
 * queues the SKU (`availability_restate`, migration 0082) and the relay copies its last published
 * availability in each channel back into the outbox, to be published under the status rule as any
 * other row. The copy keeps the payload's `seq` and `version` (the stock has not moved) and is
 * dropped when a newer availability of the same key is published in the same round.
 */
import type { Sql } from "postgres";
import { applyWithheld, withheldBy, type AvailabilityJson } from "../contract/index.ts";
import type { NatsHandles, Topology } from "../wire/index.ts";

/** The `source` of the outbox rows a status change queued (they carry no source time). */
export const RESTATE_SOURCE = "tally:item_status";

/** SKUs restated per round at most. */
const RESTATE_PER_ROUND = 200;

/** What the status rule needs of an outbox row (the relay's rows have more). */
interface PageRow {
  readonly kind: "availability" | "event";
  readonly kv_key: string | null;
  payload: string;
  readonly source: string | null;
}

/**
 * The rows to publish of a page: each availability under the status rule (its payload rewritten
 * when the rule changes it), without the status copies a newer availability of the same key
 * supersedes. One query, on the SKUs that are not active.
 */
export async function applyItemStatus<R extends PageRow>(
  sql: Sql,
  page: ReadonlyArray<R>,
  sellsDiscontinued: ReadonlySet<string>,
  /** The status of the page's SKUs that are not active, when the caller read them with the page (else one query here). */
  known?: ReadonlyMap<string, string>,
): Promise<Array<R>> {
  const parsed = new Map<R, AvailabilityJson>();
  const fresh = new Set<string>();
  for (const r of page) {
    if (r.kind !== "availability") continue;
    try {
      parsed.set(r, JSON.parse(r.payload) as AvailabilityJson);
    } catch {
      continue; // not a payload the rule can read: forwarded as it is
    }
    if (r.source !== RESTATE_SOURCE && r.kv_key) fresh.add(r.kv_key);
  }
  if (parsed.size === 0) return [...page];
  const skus = [...new Set([...parsed.values()].map((v) => v.sku))];
  const statuses =
    known ??
    new Map(
      (
        await sql<Array<{ sku: string; status: string }>>`
        select sku, status from items where status <> 'active' and sku = any(${sql.array(skus)}::text[])`
      ).map((r) => [r.sku, r.status]),
    );
  const out: Array<R> = [];
  for (const r of page) {
    const v = parsed.get(r);
    if (!v) {
      out.push(r);
      continue;
    }
    if (r.source === RESTATE_SOURCE && r.kv_key && fresh.has(r.kv_key)) continue;
    const reason = withheldBy(statuses.get(v.sku) ?? "active", { sellsDiscontinued: sellsDiscontinued.has(v.channel) });
    if (reason !== null || v.reason !== undefined || v.stock !== undefined) r.payload = JSON.stringify(applyWithheld(v, reason));
    out.push(r);
  }
  return out;
}

/** The condition "a status change waits to be restated", for a query of the caller's (the relay reads it with its page). */
export const restatePendingSql = (sql: Sql) => sql`exists (select from availability_restate)`;

/** True when a status change waits to be restated. */
export async function restatePending(sql: Sql): Promise<boolean> {
  const [row] = await sql<Array<{ pending: boolean }>>`select ${restatePendingSql(sql)} as pending`;
  return row?.pending ?? false;
}

/**
 * Copies the last published availability of each queued SKU, in every channel that has one, back
 * into the outbox (in the transaction that takes the SKUs off the queue). Returns the rows written.
 */
export async function restateQueued(
  sql: Sql,
  { nats, topology, channels }: { nats: NatsHandles; topology: Topology; channels: ReadonlyArray<string> },
): Promise<number> {
  return sql.begin(async (tx) => {
    const skus = (
      await tx<Array<{ sku: string }>>`
        delete from availability_restate
         where sku in (select sku from availability_restate order by queued_at limit ${RESTATE_PER_ROUND} for update skip locked)
        returning sku`
    ).map((r) => r.sku);
    const at = new Date().toISOString();
    const rows: Array<{ subject: string; kv_key: string; payload: AvailabilityJson }> = [];
    for (const sku of skus)
      for (const channel of channels) {
        const key = topology.availabilityKey(channel, sku);
        const e = await nats.availability.get(key);
        if (e?.operation !== "PUT" || e.length === 0) continue; // never published there: shown as 0 already
        rows.push({ subject: topology.availabilitySubject(channel, sku), kv_key: key, payload: { ...e.json<AvailabilityJson>(), updatedAt: at } });
      }
    if (rows.length > 0)
      await tx`
        insert into outbox (kind, subject, kv_key, payload, source)
        select 'availability', subject, kv_key, payload, ${RESTATE_SOURCE}
          from jsonb_to_recordset(${tx.json(rows as never)}::jsonb) as t(subject text, kv_key text, payload jsonb)`;
    return rows.length;
  });
}
