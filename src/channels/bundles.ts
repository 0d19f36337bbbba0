/**
 * Bundle availability, derived by the outbox relay. A bundle has no ledger: what a channel may sell of
 * it is the bundle rule (`bundleAvailable`, src/contract) over what the channel may sell of each
 * component. The relay derives it right after it published a component's new availability, for the
 * bundles that contain that component (the reverse index `bundle_components`) and only in the channels
 * that component changed in, and after a bundle's definition changed (`bundle_changes`, queued by a
 * trigger on the item master). A derived figure equal to the last published one (`bundle_availability`)
 * publishes nothing; a new one goes into the outbox as an availability row of the bundle, in the same
 * transaction that deletes the published component rows, so it leaves through the same path, subjects
 * and KV keys as any SKU's, exactly once.
 *
 * Ordering: derivations of one bundle are serialised (an advisory lock per bundle, taken before the
 * components are read), each reads the components' latest published values, and its sequence is
 * bumped under that lock, so however two components' changes interleave, the last figure published is
 * the rule over their latest values, and a reader that drops older sequences never goes back.
 */
import type { Fragment, Sql, TransactionSql } from "postgres";
import { bundleAvailable, quantityValue, type AvailabilityJson, type BundlePart } from "../contract/index.ts";
import type { NatsHandles, Topology } from "../wire/index.ts";

/** What the bundle rule needs of a component's published availability in one channel. */
export interface ComponentFigure {
  readonly available: bigint;
  readonly onHand: bigint;
  readonly status: string;
}

/** Channel → SKU → the availability the relay just published. */
export type PublishedFigures = Map<string, Map<string, ComponentFigure>>;

/** A bundle's figure in one channel: everything it publishes except its sequence and time. */
interface BundleFigure {
  readonly available: number | string;
  readonly onHand: number | string;
  readonly status: "in_stock" | "low" | "out";
  readonly components: ReadonlyArray<{ readonly sku: string; readonly qty: number }>;
}

/** Definitions changed per round at most (a migration that defines thousands is worked off over rounds). */
const CHANGES_PER_ROUND = 200;

/** The figure of an availability payload (the relay forwards the text; only these fields are read). */
export function componentFigure(payload: string): { channel: string; sku: string; figure: ComponentFigure } | null {
  try {
    const v = JSON.parse(payload) as Partial<AvailabilityJson>;
    if (typeof v.channel !== "string" || typeof v.sku !== "string" || v.available === undefined || v.onHand === undefined) return null;
    return { channel: v.channel, sku: v.sku, figure: { available: BigInt(v.available), onHand: BigInt(v.onHand), status: String(v.status) } };
  } catch {
    // Not an availability payload the rule can read: the bundle reads the component from the KV bucket instead.
    return null;
  }
}

/**
 * True when a round has bundles to derive: a definition change waits, or a SKU it published is a component.
 * Checked before the round's delete, so a relay without bundles keeps its one-statement delete.
 */
export async function bundlesAffected(sql: Sql, published: PublishedFigures): Promise<boolean> {
  const skus = [...new Set([...published.values()].flatMap((m) => [...m.keys()]))];
  const [row] = await sql<Array<{ affected: boolean }>>`
    select ${bundlesAffectedSql(sql, sql`select unnest(${sql.array(skus)}::text[])`)} as affected`;
  return row?.affected ?? false;
}

/**
 * The condition of `bundlesAffected`, for a query of the caller's: `components` is a subquery of the
 * SKUs published (the relay reads it with its page, from the page itself).
 */
export const bundlesAffectedSql = (sql: Sql, components: Fragment) =>
  sql`(exists (select from bundle_changes) or exists (select from bundle_components where component in (${components})))`;

/** Queues every bundle that has no published figure in one of these channels (a channel added to the config). */
export async function queueUnpublishedBundles(sql: Sql, channels: ReadonlyArray<string>): Promise<void> {
  await sql`
    insert into bundle_changes (bundle)
    select i.sku from items i
     where i.kind = 'bundle'
       and exists (select from unnest(${sql.array([...channels])}::text[]) c
                    where not exists (select from bundle_availability a where a.bundle = i.sku and a.channel = c))
    on conflict (bundle) do nothing`;
}

export interface DeriveContext {
  readonly tx: TransactionSql;
  readonly nats: NatsHandles;
  readonly topology: Topology;
  readonly channels: ReadonlyArray<string>;
}

/** What one derivation did: outbox rows written, and KV keys of bundles that are no longer bundles (delete after commit). */
export interface Derived {
  readonly rows: number;
  readonly removedKeys: ReadonlyArray<string>;
}

/** Derives the bundles that `published` (this round's component changes) and queued definition changes affect. */
export async function deriveBundles(ctx: DeriveContext, published: PublishedFigures): Promise<Derived> {
  const { tx } = ctx;
  const skus = [...new Set([...published.values()].flatMap((m) => [...m.keys()]))];
  const redefined = (
    await tx<Array<{ bundle: string }>>`
      delete from bundle_changes where bundle in (select bundle from bundle_changes order by changed_at limit ${CHANGES_PER_ROUND})
      returning bundle`
  ).map((r) => r.bundle);
  const containing =
    skus.length === 0
      ? []
      : await tx<Array<{ component: string; bundle: string }>>`
          select component, bundle from bundle_components where component = any(${tx.array(skus)}::text[])`;
  // Which (bundle, channel) to derive: every channel after a definition change, else where a component changed.
  const todo = new Map<string, Set<string>>();
  for (const b of redefined) todo.set(b, new Set(ctx.channels));
  for (const { component, bundle } of containing) {
    const channels = todo.get(bundle) ?? new Set<string>();
    for (const [channel, changed] of published) if (changed.has(component)) channels.add(channel);
    todo.set(bundle, channels);
  }
  if (todo.size === 0) return { rows: 0, removedKeys: [] };
  const bundles = [...todo.keys()].sort();
  await tx`select pg_advisory_xact_lock(hashtextextended('tally_bundle:' || b, 0)) from (select unnest(${tx.array(bundles)}::text[]) as b order by 1) s`;
  return write(ctx, todo, published, await definitions(tx, bundles));
}

type Definition = { readonly components: ReadonlyArray<{ sku: string; qty: number }>; readonly malformed: boolean };

/** Each bundle's components as the item master has them now (absent: no longer a bundle). */
async function definitions(tx: TransactionSql, bundles: ReadonlyArray<string>): Promise<Map<string, Definition>> {
  const rows = await tx<Array<{ sku: string; components: unknown }>>`
    select sku, components from items where kind = 'bundle' and sku = any(${tx.array([...bundles])}::text[])`;
  const out = new Map<string, Definition>();
  for (const r of rows) {
    const list = Array.isArray(r.components) ? (r.components as Array<{ sku?: unknown; qty?: unknown }>) : [];
    const summed = new Map<string, number>();
    let malformed = !Array.isArray(r.components) || list.length === 0;
    for (const c of list) {
      if (typeof c?.sku !== "string" || typeof c.qty !== "number" || !Number.isSafeInteger(c.qty) || c.qty <= 0) malformed = true;
      else summed.set(c.sku, (summed.get(c.sku) ?? 0) + c.qty);
    }
    out.set(r.sku, { components: [...summed].map(([sku, qty]) => ({ sku, qty })), malformed });
  }
  return out;
}

/** Computes each figure, writes the changed ones (outbox and `bundle_availability`), forgets removed bundles. */
async function write(
  ctx: DeriveContext,
  todo: Map<string, Set<string>>,
  published: PublishedFigures,
  defs: Map<string, Definition>,
): Promise<Derived> {
  const { tx, topology } = ctx;
  const bundles = [...todo.keys()];
  const stored = new Map<string, { seq: number; figure: BundleFigure | typeof WITHDRAWN }>();
  for (const r of await tx<Array<{ bundle: string; channel: string; seq: string; figure: BundleFigure | typeof WITHDRAWN }>>`
    select bundle, channel, seq::text as seq, figure from bundle_availability where bundle = any(${tx.array(bundles)}::text[])`)
    stored.set(`${r.channel}\u0000${r.bundle}`, { seq: Number(r.seq), figure: r.figure });
  const read = componentReader(ctx, published);
  const at = new Date().toISOString();
  const figures: Array<{ bundle: string; channel: string; seq: number; figure: BundleFigure }> = [];
  const outbox: Array<{ subject: string; kv_key: string; payload: AvailabilityJson }> = [];
  for (const [bundle, channels] of todo) {
    const def = defs.get(bundle);
    if (!def) continue;
    for (const channel of channels) {
      const figure = bundleFigure(def, await Promise.all(def.components.map((c) => read(channel, c.sku))));
      const before = stored.get(`${channel}\u0000${bundle}`);
      if (before && sameFigure(before.figure, figure)) continue;
      const seq = (before?.seq ?? 0) + 1;
      figures.push({ bundle, channel, seq, figure });
      const { available, onHand, status, components } = figure;
      const payload: AvailabilityJson = {
        channel,
        sku: bundle,
        available,
        onHand,
        reserved: 0,
        status,
        seq,
        version: seq,
        updatedAt: at,
        components,
      };
      outbox.push({ subject: topology.availabilitySubject(channel, bundle), kv_key: topology.availabilityKey(channel, bundle), payload });
    }
  }
  if (figures.length > 0) {
    await tx`
      insert into bundle_availability (bundle, channel, seq, figure, updated_at)
      select bundle, channel, seq, figure, now()
        from jsonb_to_recordset(${tx.json(figures as never)}::jsonb) as t(bundle text, channel text, seq bigint, figure jsonb)
      on conflict (bundle, channel) do update set seq = excluded.seq, figure = excluded.figure, updated_at = now()`;
    await tx`
      insert into outbox (kind, subject, kv_key, payload)
      select 'availability', subject, kv_key, payload
        from jsonb_to_recordset(${tx.json(outbox as never)}::jsonb) as t(subject text, kv_key text, payload jsonb)`;
  }
  // No longer a bundle: withdrawn, its sequence kept, so a bundle defined again under the SKU goes on counting from it
  // (a reader keeps the highest version) and publishes its first figure whatever it is.
  const gone = bundles.filter((b) => !defs.has(b));
  const removed =
    gone.length === 0
      ? []
      : await tx<Array<{ bundle: string; channel: string }>>`
          update bundle_availability set figure = ${tx.json(WITHDRAWN as never)}, updated_at = now()
           where bundle = any(${tx.array(gone)}::text[]) and not figure ? 'withdrawn'
          returning bundle, channel`;
  return { rows: outbox.length, removedKeys: removed.map((r) => topology.availabilityKey(r.channel, r.bundle)) };
}

/** A component's figure in a channel: as published this round, else its current KV value (null: never published there). */
function componentReader(ctx: DeriveContext, published: PublishedFigures) {
  const cache = new Map<string, Promise<ComponentFigure | null>>();
  return (channel: string, sku: string): Promise<ComponentFigure | null> => {
    const now = published.get(channel)?.get(sku);
    if (now) return Promise.resolve(now);
    const key = ctx.topology.availabilityKey(channel, sku);
    let got = cache.get(key);
    if (!got) {
      got = ctx.nats.availability
        .get(key)
        .then((e) => (e && e.operation === "PUT" && e.length > 0 ? (componentFigure(e.string())?.figure ?? null) : null));
      cache.set(key, got);
    }
    return got;
  };
}

/** The bundle rule over the components' figures: available, on hand (whole bundles it makes), status. */
function bundleFigure(def: Definition, values: ReadonlyArray<ComponentFigure | null>): BundleFigure {
  const invalid: Array<BundlePart> = def.malformed ? [{ qty: 0, available: null }] : [];
  const parts = (pick: (f: ComponentFigure) => bigint): Array<BundlePart> => [
    ...invalid,
    ...def.components.map((c, i) => ({ qty: c.qty, available: values[i] ? pick(values[i]) : null })),
  ];
  const available = bundleAvailable(parts((f) => f.available));
  const onHand = bundleAvailable(parts((f) => f.onHand));
  const status = available <= 0n ? "out" : values.some((v) => v?.status === "low") ? "low" : "in_stock";
  return { available: quantityValue(available), onHand: quantityValue(onHand), status, components: def.components };
}

/** The stored figure of a bundle that is no longer one. */
const WITHDRAWN = { withdrawn: true } as const;

function sameFigure(a: BundleFigure | typeof WITHDRAWN, b: BundleFigure): boolean {
  if ("withdrawn" in a) return false;
  return (
    String(a.available) === String(b.available) &&
    String(a.onHand) === String(b.onHand) &&
    a.status === b.status &&
    JSON.stringify(a.components.map((c) => [c.sku, c.qty])) === JSON.stringify(b.components.map((c) => [c.sku, c.qty]))
  );
}
