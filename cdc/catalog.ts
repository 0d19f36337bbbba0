/**
 * The catalog channels show, kept in Tally's Postgres: catalog facts from the item master and the
 * price lists become numbered catalog versions (one per source transaction that changed the
 * catalog; monotonic per environment), each version recomputes the projections of the items it
 * touched for every catalog channel, and a price that starts (or ends) later is put on the durable
 * schedule `catalog_due`, which the catalog publisher turns into a version when it is due.
 */
import type { Sql, TransactionSql } from "postgres";
import {
  CURRENCY_PATTERN,
  MappingError,
  UnknownItem,
  isIsoDateTimeWithZone,
  quantityValue,
  toMinorUnits,
  type CatalogFact,
  type CatalogValue,
} from "../src/contract/index.ts";
import type { Crosswalk } from "./crosswalk.ts";

/** NOTIFY channel: a catalog version was recorded (payload: the version). */
export const CATALOG_CHANNEL = "tally_catalog";

type ItemFact = Extract<CatalogFact, { kind: "item" }>;
type PriceListFact = Extract<CatalogFact, { kind: "price_list" }>;

/** A catalog fact with its item resolved to a SKU. */
export type ResolvedCatalogFact =
  | ItemFact
  | Extract<CatalogFact, { kind: "item_removed" | "price_list_removed" }>
  | PriceListFact
  | {
      readonly kind: "price";
      readonly sku: string;
      readonly priceList: string;
      readonly validFrom: string;
      readonly validTo: string | null;
      readonly amount: string;
    }
  | { readonly kind: "price_removed"; readonly sku: string; readonly priceList: string; readonly validFrom: string };

const STATUSES = new Set(["active", "discontinued", "blocked"]);

function checkTime(field: string, value: string): void {
  if (!isIsoDateTimeWithZone(value)) throw new MappingError(field, `expected an ISO-8601 date-time with a zone, got ${JSON.stringify(value)}`);
}

/** One fact checked and its item resolved through the crosswalk (null: nothing to do). */
function resolveOne(crosswalk: Crosswalk, f: CatalogFact): ResolvedCatalogFact | null {
  switch (f.kind) {
    case "item":
      if (!STATUSES.has(f.status))
        throw new MappingError("catalog.status", `expected active, discontinued or blocked, got ${JSON.stringify(f.status)}`);
      return f;
    case "price_list":
      if (!CURRENCY_PATTERN.test(f.currency))
        throw new MappingError("catalog.currency", `expected an ISO 4217 code, got ${JSON.stringify(f.currency)}`);
      return f;
    case "item_removed":
    case "price_list_removed":
      return f;
    case "price": {
      const found = crosswalk.lookup(f.item.system, f.item.id);
      if (!found) throw new UnknownItem(f.item);
      if (!/^\d+(\.\d+)?$/.test(f.amount))
        throw new MappingError("catalog.amount", `expected a non-negative decimal, got ${JSON.stringify(f.amount)}`);
      checkTime("catalog.validFrom", f.validFrom);
      if (f.validTo !== null) checkTime("catalog.validTo", f.validTo);
      if (f.validTo !== null && Date.parse(f.validTo) <= Date.parse(f.validFrom))
        throw new MappingError("catalog.validTo", `${f.validTo} is not after validFrom ${f.validFrom}`);
      return { kind: "price", sku: found.sku, priceList: f.priceList, validFrom: f.validFrom, validTo: f.validTo, amount: f.amount };
    }
    case "price_removed": {
      // An item already gone from the crosswalk took its prices with it.
      const found = crosswalk.lookup(f.item.system, f.item.id);
      return found ? { kind: "price_removed", sku: found.sku, priceList: f.priceList, validFrom: f.validFrom } : null;
    }
  }
}

/** A mapping's catalog facts, checked, items resolved to SKUs. Throws MappingError naming the field. */
export function resolveCatalogFacts(crosswalk: Crosswalk, facts: ReadonlyArray<CatalogFact>): Array<ResolvedCatalogFact> {
  return facts.flatMap((f) => resolveOne(crosswalk, f) ?? []);
}

/** The next catalog version: locks the head row, so versions are handed out (and committed) in order. */
async function nextVersion(tx: TransactionSql): Promise<number> {
  const [row] = await tx<[{ version: string }]>`update catalog_head set version = version + 1 returning version::text`;
  return Number(row.version);
}

/**
 * How long recording a catalog version waits for a lock (the catalog head's above all) before it
 * fails. The head is held only while one version is written; a holder for longer is stuck (an
 * admin's open transaction, a hung process), and waiting for it without a bound would hang the
 * CDC reader, its stop included, with nothing saying why. The caller's failure path retries.
 */
export const CATALOG_LOCK_TIMEOUT_MS = 5_000;

/** Recording a catalog version waited longer than {@link CATALOG_LOCK_TIMEOUT_MS} for a lock another session holds. */
export class CatalogLockTimeout extends Error {
  override readonly name = "CatalogLockTimeout";
}

/**
 * Records one source transaction's catalog facts as one catalog version: applies them, schedules
 * what starts or ends later, and recomputes the projections they touch. Idempotent per source and
 * ref (a transaction sent again after a restart): returns null when it was recorded before. Throws
 * {@link CatalogLockTimeout} when a lock it needs stays held by another session too long.
 */
export async function recordCatalogVersion(
  sql: Sql,
  change: { readonly source: string; readonly ref: string; readonly sourceAt: string | null; readonly facts: ReadonlyArray<ResolvedCatalogFact> },
): Promise<number | null> {
  if (change.facts.length === 0) return null;
  let waitingFor = "the catalog head (catalog_head)";
  return sql
    .begin(async (tx) => {
      await tx`select set_config('lock_timeout', ${`${CATALOG_LOCK_TIMEOUT_MS}ms`}, true)`;
      await tx`select version from catalog_head for update`;
      waitingFor = "a catalog row (items, catalog_prices, catalog_price_lists or catalog_projections)";
      return recordLocked(tx, change);
    })
    .catch((err: unknown) => {
      // 55P03 lock_not_available: what lock_timeout raises.
      if ((err as { code?: string }).code !== "55P03") throw err;
      throw new CatalogLockTimeout(
        `catalog version of ${change.source} ${change.ref} not recorded: another session held a lock on ${waitingFor} for more than ` +
          `${CATALOG_LOCK_TIMEOUT_MS / 1000} s (pg_locks and pg_stat_activity in the ledger database show the holder)`,
        { cause: err },
      );
    });
}

async function recordLocked(tx: TransactionSql, change: Parameters<typeof recordCatalogVersion>[1]): Promise<number | null> {
  const [seen] = await tx`select 1 from catalog_versions where source = ${change.source} and source_ref = ${change.ref}`;
  if (seen) return null;
  const version = await nextVersion(tx);
  await tx`
      insert into catalog_versions (version, source, source_ref, source_at, facts)
      values (${version}, ${change.source}, ${change.ref}, ${change.sourceAt}::timestamptz, ${change.facts.length})`;
  const touched = await applyFacts(tx, change.source, change.facts);
  await scheduleDue(tx, version, change.facts);
  await project(tx, version, touched);
  await tx`select pg_notify(${CATALOG_CHANNEL}, ${String(version)})`;
  return version;
}

/** The last fact per key wins, as if they were applied one after the other. */
function lastPerKey<T>(facts: ReadonlyArray<T>, key: (f: T) => string): Array<T> {
  return [...new Map(facts.map((f) => [key(f), f])).values()];
}

/** Writes the facts; returns the SKUs whose projections may change ("all" after a price list change). */
async function applyFacts(tx: TransactionSql, source: string, facts: ReadonlyArray<ResolvedCatalogFact>): Promise<Set<string> | "all"> {
  const touched = new Set<string>();
  const items = lastPerKey(
    facts.filter((f) => f.kind === "item" || f.kind === "item_removed"),
    (f) => f.sku,
  );
  const named = items.filter((f): f is ItemFact => f.kind === "item");
  if (named.length > 0) {
    const rows = named.map((f) => ({
      sku: f.sku,
      name: f.name,
      description: f.description ?? null,
      status: f.status,
      price_unit: f.unit ?? null,
      attributes: f.attributes ?? {},
    }));
    await tx`
      update items i set name = t.name, description = t.description, status = t.status, price_unit = t.price_unit, attributes = t.attributes
        from jsonb_to_recordset(${tx.json(rows as never)}::jsonb) as t(sku text, name text, description text, status text, price_unit text, attributes jsonb)
       where i.sku = t.sku`;
  }
  // A renamed SKU takes its prices along before the old SKU leaves the catalog.
  for (const f of named)
    if (f.renamedFrom !== undefined && f.renamedFrom !== f.sku) {
      await tx`update catalog_prices set sku = ${f.sku} where sku = ${f.renamedFrom}`;
      touched.add(f.renamedFrom);
    }
  const removed = items.filter((f) => f.kind === "item_removed").map((f) => f.sku);
  if (removed.length > 0) await tx`delete from catalog_prices where sku = any(${tx.array(removed)}::text[])`;
  for (const f of items) touched.add(f.sku);
  const lists = lastPerKey(
    facts.filter((f) => f.kind === "price_list" || f.kind === "price_list_removed"),
    (f) => f.priceList,
  );
  for (const f of lists)
    if (f.kind === "price_list")
      await tx`
        insert into catalog_price_lists (price_list, channel, currency, defined_by) values (${f.priceList}, ${f.channel}, ${f.currency}, ${source})
        on conflict (price_list) do update set channel = excluded.channel, currency = excluded.currency, defined_by = excluded.defined_by, updated_at = now()`;
    else await tx`delete from catalog_price_lists where price_list = ${f.priceList}`;
  await applyPrices(tx, facts, touched);
  return lists.length > 0 ? "all" : touched;
}

async function applyPrices(tx: TransactionSql, facts: ReadonlyArray<ResolvedCatalogFact>, touched: Set<string>): Promise<void> {
  const prices = lastPerKey(
    facts.filter((f) => f.kind === "price" || f.kind === "price_removed"),
    (f) => `${f.sku}\u0000${f.priceList}\u0000${Date.parse(f.validFrom)}`,
  );
  const gone = prices.filter((f) => f.kind === "price_removed");
  if (gone.length > 0)
    await tx`
      delete from catalog_prices p using jsonb_to_recordset(${tx.json(gone as never)}::jsonb) as t("sku" text, "priceList" text, "validFrom" timestamptz)
       where p.sku = t.sku and p.price_list = t."priceList" and p.valid_from = t."validFrom"`;
  const set = prices.filter((f) => f.kind === "price");
  if (set.length > 0)
    await tx`
      insert into catalog_prices (sku, price_list, valid_from, valid_to, amount)
      select sku, "priceList", "validFrom", "validTo", amount::numeric
        from jsonb_to_recordset(${tx.json(set as never)}::jsonb) as t(sku text, "priceList" text, "validFrom" timestamptz, "validTo" timestamptz, amount text)
      on conflict (sku, price_list, valid_from) do update set valid_to = excluded.valid_to, amount = excluded.amount`;
  for (const f of prices) touched.add(f.sku);
}

/** Puts every start and end of a price that lies in the future on the durable schedule. */
async function scheduleDue(tx: TransactionSql, version: number, facts: ReadonlyArray<ResolvedCatalogFact>): Promise<void> {
  const due = facts.flatMap((f) =>
    f.kind === "price" ? [{ sku: f.sku, at: f.validFrom }, ...(f.validTo ? [{ sku: f.sku, at: f.validTo }] : [])] : [],
  );
  if (due.length === 0) return;
  await tx`
    insert into catalog_due (due_at, sku, scheduled_by)
    select at, sku, ${version} from jsonb_to_recordset(${tx.json(due as never)}::jsonb) as t(sku text, at timestamptz)
     where at > now()`;
}

/**
 * The durable scheduler's step: one catalog version of every price change due by now, marked done
 * in it; every channel's projection of those items switches at that version. Null when nothing was
 * due (or another process is publishing them right now).
 */
export async function publishDue(sql: Sql): Promise<number | null> {
  return sql.begin(async (tx) => {
    const [lock] = await tx<[{ got: boolean }]>`select pg_try_advisory_xact_lock(hashtext('tally catalog schedule')) as got`;
    if (!lock.got) return null;
    const due = await tx<Array<{ id: string; sku: string }>>`
      select id::text, sku from catalog_due where done_version is null and due_at <= now() order by catalog_due.id`;
    if (due.length === 0) return null;
    await tx`select version from catalog_head for update`;
    const version = await nextVersion(tx);
    await tx`
      insert into catalog_versions (version, source, source_ref, source_at, facts)
      values (${version}, 'schedule', ${`due:${version}`}, now(), ${due.length})`;
    await tx`update catalog_due set done_version = ${version} where id = any(${tx.array(due.map((d) => d.id))}::bigint[])`;
    await project(tx, version, new Set(due.map((d) => d.sku)));
    await tx`select pg_notify(${CATALOG_CHANNEL}, ${String(version)})`;
    return version;
  });
}

/** When the next scheduled change is due (null: none is scheduled). */
export async function nextDue(sql: Sql): Promise<Date | null> {
  const [row] = await sql<[{ at: Date | null }]>`select min(due_at) as at from catalog_due where done_version is null`;
  return row?.at ?? null;
}

interface ItemRow {
  sku: string;
  base_unit: string;
  name: string | null;
  description: string | null;
  status: CatalogValue["status"];
  price_unit: string | null;
  attributes: Record<string, unknown>;
  components: Array<{ sku: string; qty: number }>;
  identifiers: Array<{ system: string; id: string; uom?: string }>;
}

interface PriceRow {
  sku: string;
  price_list: string;
  channel: string;
  currency: string;
  valid_from: Date;
  valid_to: Date | null;
  amount: string;
  effective: boolean;
}

/**
 * Recomputes the projections of `skus` (or of every item) for every catalog channel (a channel some
 * price list prices) as of now, and records the ones that changed at `version`, with an outbox row
 * each. An item no longer in the catalog, or a channel no longer priced, leaves a tombstone.
 */
async function project(tx: TransactionSql, version: number, skus: Set<string> | "all"): Promise<void> {
  const only = skus === "all" ? null : [...skus];
  if (only?.length === 0) return;
  const where = (column: string) => (only === null ? tx`` : tx`where ${tx(column)} = any(${tx.array(only)}::text[])`);
  const channels = (await tx<Array<{ channel: string }>>`select distinct channel from catalog_price_lists order by 1`).map((r) => r.channel);
  const items = await tx<Array<ItemRow>>`
    select i.sku, i.base_unit, i.name, i.description, i.status, i.price_unit, i.attributes,
           case when i.kind = 'bundle' then i.components else '[]'::jsonb end as components,
           coalesce((select jsonb_agg(jsonb_strip_nulls(jsonb_build_object('system', x.system, 'id', x.identifier, 'uom', x.uom))
                                      order by x.system, x.identifier)
                       from item_identifiers x where x.sku = i.sku), '[]'::jsonb) as identifiers
      from items i ${where("i.sku")}`;
  const prices = await tx<Array<PriceRow>>`
    select p.sku, p.price_list, l.channel, l.currency, p.valid_from, p.valid_to, p.amount::text as amount,
           p.valid_from <= now() and (p.valid_to is null or p.valid_to > now()) as effective
      from catalog_prices p join catalog_price_lists l using (price_list) ${where("p.sku")}`;
  const existing = await tx<Array<{ channel: string; sku: string; payload: CatalogValue & { removed?: boolean } }>>`
    select channel, sku, payload from catalog_projections ${where("sku")}`;
  const [{ now }] = await tx<[{ now: Date }]>`select now() as now`;
  const pricesOf = new Map<string, Array<PriceRow>>();
  for (const p of prices) {
    const k = `${p.channel}\u0000${p.sku}`;
    pricesOf.set(k, [...(pricesOf.get(k) ?? []), p]);
  }
  const next = new Map<string, Record<string, unknown>>();
  for (const channel of channels)
    for (const item of items)
      next.set(`${channel}\u0000${item.sku}`, projection(channel, item, pricesOf.get(`${channel}\u0000${item.sku}`) ?? [], now));
  const changed: Array<{ channel: string; sku: string; payload: Record<string, unknown> }> = [];
  const before = new Map(existing.map((e) => [`${e.channel}\u0000${e.sku}`, e.payload]));
  for (const [k, p] of next) if (!sameProjection(before.get(k), p)) changed.push({ channel: p.channel as string, sku: p.sku as string, payload: p });
  for (const e of existing)
    if (!next.has(`${e.channel}\u0000${e.sku}`) && e.payload.removed !== true)
      changed.push({ channel: e.channel, sku: e.sku, payload: { ...e.payload, removed: true } });
  if (changed.length === 0) return;
  const rows = changed.map((c) => ({ ...c, payload: { ...c.payload, catalogVersion: version } }));
  await tx`
    insert into catalog_projections (channel, sku, version, payload)
    select channel, sku, ${version}, payload from jsonb_to_recordset(${tx.json(rows as never)}::jsonb) as t(channel text, sku text, payload jsonb)
    on conflict (channel, sku) do update set version = excluded.version, payload = excluded.payload`;
  await tx`
    insert into catalog_outbox (version, channel, sku, payload)
    select ${version}, channel, sku, payload
      from rows from (jsonb_to_recordset(${tx.json(rows as never)}::jsonb) as (channel text, sku text, payload jsonb)) with ordinality as t(channel, sku, payload, n)
     order by n`;
  await tx`
    insert into catalog_channel_versions (channel, version)
    select distinct channel, ${version}::bigint from jsonb_to_recordset(${tx.json(rows as never)}::jsonb) as t(channel text)
    on conflict do nothing`;
}

/** Equal but for the version they were recorded at. */
function sameProjection(a: (CatalogValue & { removed?: boolean }) | undefined, b: Record<string, unknown>): boolean {
  if (a === undefined || a.removed === true) return false;
  const { catalogVersion: _, ...rest } = a;
  return canonical(rest) === canonical(b);
}

const canonical = (v: unknown): string =>
  JSON.stringify(v, (_k, x) =>
    x && typeof x === "object" && !Array.isArray(x) ? Object.fromEntries(Object.entries(x).sort(([p], [q]) => (p < q ? -1 : 1))) : x,
  );

/**
 * One channel's projection of an item as of `now` (without its version): of the prices in effect,
 * the one that started last (a promotion over the regular price; ties by price list name); it is
 * valid until it ends or a later-starting price takes over.
 */
function projection(channel: string, item: ItemRow, prices: ReadonlyArray<PriceRow>, now: Date): Record<string, unknown> {
  const winner = prices
    .filter((p) => p.effective)
    .sort((a, b) => b.valid_from.getTime() - a.valid_from.getTime() || (a.price_list < b.price_list ? -1 : 1))[0];
  const limits = [
    ...(winner?.valid_to ? [winner.valid_to.getTime()] : []),
    ...prices.filter((p) => p.valid_from.getTime() > now.getTime()).map((p) => p.valid_from.getTime()),
  ];
  return {
    channel,
    sku: item.sku,
    name: item.name ?? item.sku,
    description: item.description,
    status: item.status,
    unit: item.price_unit ?? item.base_unit,
    price: winner
      ? { amount: quantityValue(toMinorUnits(winner.amount, winner.currency)), currency: winner.currency, priceList: winner.price_list }
      : null,
    validUntil: limits.length > 0 ? new Date(Math.min(...limits)).toISOString() : null,
    attributes: item.attributes,
    identifiers: item.identifiers,
    components: item.components,
  };
}
