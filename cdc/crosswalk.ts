import type { Sql } from "postgres";
import { bundleComponentCommandId, decodeCommand, type Command } from "../src/contract/index.ts";
import { MappingError, UnknownItem, type ItemDefinition, type ItemRef, type MappedCommand } from "../src/contract/index.ts";

/** NOTIFY channel: a SKU's definition changed (payload: the SKU). */
export const ITEMS_CHANNEL = "tally_items";

interface StoredItem {
  readonly sku: string;
  readonly kind: ItemDefinition["kind"];
  readonly baseUnit: string;
  readonly units: Readonly<Record<string, number>>;
  readonly components: ReadonlyArray<{ readonly sku: string; readonly qty: number }>;
}

/** The outcome of resolving one mapped command. */
export type Resolution =
  | { readonly kind: "commands"; readonly commands: ReadonlyArray<Command> }
  | { readonly kind: "skipped"; readonly reason: "non_inventory"; readonly sku: string };

export interface ResolveContext {
  readonly source: string;
  /** The default command id (the caller makes it deterministic from the source position). */
  readonly id: string;
  readonly ref: string;
  readonly occurredAt: string;
  readonly lsn?: string;
}

/**
 * `qty × factor` exactly (decimal string or number times an integer), or null when the result is
 * not an integer: 1.25 kg × 1000 = 1250 g, but 1.2345 kg × 1000 is not a whole number of grams.
 */
export function scaleExact(qty: number | string, factor: number): number | null {
  const text = typeof qty === "number" ? String(qty) : qty.trim();
  const m = /^(-)?(\d+)(?:\.(\d+))?$/.exec(text);
  if (!m || !Number.isSafeInteger(factor)) return null;
  const frac = (m[3] ?? "").replace(/0+$/, "");
  const scaled = BigInt(m[2]! + frac) * BigInt(factor);
  const divisor = 10n ** BigInt(frac.length);
  if (scaled % divisor !== 0n) return null;
  const value = Number(scaled / divisor) * (m[1] ? -1 : 1);
  return Number.isSafeInteger(value) ? value : null;
}

interface StoredRows {
  readonly items: ReadonlyArray<{
    sku: string;
    kind: StoredItem["kind"];
    base_unit: string;
    units: Record<string, number>;
    components: Array<{ sku: string; qty: number }>;
  }>;
  readonly ids: ReadonlyArray<{ system: string; identifier: string; sku: string; uom: string | null }>;
}

/** The items and their identifiers as stored: all of them, or only these SKUs'. */
async function readItems(sql: Sql, skus?: ReadonlyArray<string>): Promise<StoredRows> {
  const only = () => (skus === undefined ? sql`` : sql`where sku = any(${sql.array(skus as Array<string>)}::text[])`);
  const items = await sql<Array<StoredRows["items"][number]>>`select sku, kind, base_unit, units, components from items ${only()}`;
  const ids = await sql<Array<StoredRows["ids"][number]>>`select system, identifier, sku, uom from item_identifiers ${only()}`;
  return { items, ids };
}

/**
 * The item crosswalk: every system's identifier → the canonical SKU, with units of measure,
 * bundles and non-inventory items. Held in memory, persisted in `items`/`item_identifiers`.
 */
export class Crosswalk {
  readonly #items = new Map<string, StoredItem>();
  readonly #ids = new Map<string, { sku: string; uom: string | null }>();
  readonly #keysBySku = new Map<string, Array<string>>();

  static async load(sql: Sql): Promise<Crosswalk> {
    const cw = new Crosswalk();
    cw.#add(await readItems(sql));
    return cw;
  }

  get size(): number {
    return this.#items.size;
  }

  /** Upserts item definitions in memory (call `persist` in the same unit of work). */
  apply(defs: ReadonlyArray<ItemDefinition>, removed: ReadonlyArray<string> = []): void {
    for (const d of defs) {
      this.#forget(d.sku);
      this.#items.set(d.sku, {
        sku: d.sku,
        kind: d.kind,
        baseUnit: d.baseUnit,
        units: d.units ?? {},
        components: d.components ?? [],
      });
      this.#index(d.sku, "sku", d.sku, null);
      for (const i of d.identifiers) this.#index(d.sku, i.system, i.id, i.uom ?? null);
    }
    for (const sku of removed) {
      this.#forget(sku);
      this.#items.delete(sku);
    }
  }

  #index(sku: string, system: string, id: string, uom: string | null): void {
    const k = key(system, id);
    this.#ids.set(k, { sku, uom });
    let keys = this.#keysBySku.get(sku);
    if (!keys) this.#keysBySku.set(sku, (keys = []));
    keys.push(k);
  }

  #forget(sku: string): void {
    for (const k of this.#keysBySku.get(sku) ?? []) if (this.#ids.get(k)?.sku === sku) this.#ids.delete(k);
    this.#keysBySku.delete(sku);
  }

  /** Writes item definitions and removals to the ledger database. */
  static async persist(sql: Sql, source: string, defs: ReadonlyArray<ItemDefinition>, removed: ReadonlyArray<string> = []): Promise<void> {
    if (defs.length === 0 && removed.length === 0) return;
    // A few statements for the whole batch, not several per item: an initial snapshot persists thousands at once.
    // Where an item (or an identifier) comes twice, the last one wins, as if they were stored one after the other.
    const items = [...new Map(defs.map((d) => [d.sku, d])).values()];
    const ids = [...new Map(items.flatMap((d) => d.identifiers.map((i) => [`${i.system}\u0000${i.id}`, { ...i, sku: d.sku }] as const))).values()];
    await sql.begin(async (tx) => {
      if (items.length > 0) {
        const rows = items.map((d) => ({ sku: d.sku, kind: d.kind, base_unit: d.baseUnit, units: d.units ?? {}, components: d.components ?? [] }));
        await tx`
          insert into items (sku, kind, base_unit, units, components, defined_by, updated_at)
          select sku, kind, base_unit, units, components, ${source}, now()
            from jsonb_to_recordset(${tx.json(rows as never)}::jsonb) as t(sku text, kind text, base_unit text, units jsonb, components jsonb)
          on conflict (sku) do update set kind = excluded.kind, base_unit = excluded.base_unit, units = excluded.units,
            components = excluded.components, defined_by = excluded.defined_by, updated_at = now()`;
        await tx`delete from item_identifiers where sku = any(${tx.array(items.map((d) => d.sku))}::text[])`;
      }
      if (ids.length > 0)
        await tx`
          insert into item_identifiers (system, identifier, sku, uom)
          select * from unnest(${tx.array(ids.map((i) => i.system))}::text[], ${tx.array(ids.map((i) => i.id))}::text[],
                               ${tx.array(ids.map((i) => i.sku))}::text[], ${tx.array(ids.map((i) => i.uom ?? null) as Array<string>)}::text[])
          on conflict (system, identifier) do update set sku = excluded.sku, uom = excluded.uom`;
      if (removed.length > 0) await tx`delete from items where sku = any(${tx.array(removed as Array<string>)}::text[])`;
      const notified = [...defs.map((d) => d.sku), ...removed];
      await tx`select pg_notify(${ITEMS_CHANNEL}, sku) from unnest(${tx.array(notified)}::text[]) with ordinality as t(sku, n) order by n`;
    });
  }

  /** Reloads these SKUs from the database (another process or source changed them). */
  async refresh(sql: Sql, skus: ReadonlyArray<string>): Promise<void> {
    if (skus.length === 0) return;
    const read = await readItems(sql, skus);
    for (const sku of skus) {
      this.#forget(sku);
      this.#items.delete(sku);
    }
    this.#add(read);
  }

  /** Holds these items and indexes them by SKU and by their identifiers. */
  #add({ items, ids }: StoredRows): void {
    for (const i of items) {
      this.#items.set(i.sku, { sku: i.sku, kind: i.kind, baseUnit: i.base_unit, units: i.units, components: i.components });
      this.#index(i.sku, "sku", i.sku, null);
    }
    for (const r of ids) this.#index(r.sku, r.system, r.identifier, r.uom);
  }

  /** Looks an identifier up in the database (a miss in memory may be an item defined a moment ago elsewhere). */
  async refreshIdentifier(sql: Sql, ref: ItemRef): Promise<boolean> {
    const [row] =
      ref.system === "sku"
        ? await sql<Array<{ sku: string }>>`select sku from items where sku = ${ref.id}`
        : await sql<Array<{ sku: string }>>`select sku from item_identifiers where system = ${ref.system} and identifier = ${ref.id}`;
    if (!row) return false;
    await this.refresh(sql, [row.sku]);
    return true;
  }

  /** The SKU an identifier names, or undefined. */
  lookup(system: string, id: string): { sku: string; uom: string | null } | undefined {
    return this.#ids.get(key(system, id));
  }

  /**
   * Turns a mapped command into canonical commands: identifier → SKU, units → base units (exactly),
   * a bundle → one command per component (`<id>#<component sku>`), non-inventory → skipped.
   * Throws MappingError naming the field for an unknown item, a unit the item lacks, or a
   * quantity that is not whole in base units.
   */
  resolve(m: MappedCommand, ctx: ResolveContext): Resolution {
    const found = this.lookup(m.item.system, m.item.id);
    if (!found) throw new UnknownItem(m.item);
    const item = this.#items.get(found.sku);
    if (!item)
      throw new MappingError(
        `item.${m.item.system}`,
        `item ${JSON.stringify(m.item.id)} names SKU ${found.sku}, which is not defined`,
        "unknown_item",
      );
    if (item.kind === "non_inventory") return { kind: "skipped", reason: "non_inventory", sku: item.sku };
    const id = m.id ?? ctx.id;
    const base = m.qty === undefined ? undefined : this.#toBase(item, m.qty, m.uom ?? found.uom ?? item.baseUnit);
    const build = (sku: string, qty: number | undefined, commandId: string): Command => {
      const raw = {
        ...m.fields,
        id: commandId,
        type: m.type,
        sku,
        location: m.location,
        ...(qty !== undefined ? { qty } : {}),
        source: { system: ctx.source, ref: m.ref ?? ctx.ref, ...(ctx.lsn ? { lsn: ctx.lsn } : {}) },
        occurredAt: m.occurredAt ?? ctx.occurredAt,
      };
      const decoded = decodeCommand(raw);
      if (decoded._tag === "Left") throw new MappingError("command", decoded.left.message, "invalid_command");
      return decoded.right;
    };
    if (item.kind === "bundle") {
      if (item.components.length === 0) throw new MappingError(`item.${m.item.system}`, `bundle ${item.sku} has no components`, "bad_item");
      return {
        kind: "commands",
        commands: item.components.map((c) => build(c.sku, base === undefined ? undefined : base * c.qty, bundleComponentCommandId(id, c.sku))),
      };
    }
    return { kind: "commands", commands: [build(item.sku, base, id)] };
  }

  #toBase(item: StoredItem, qty: number | string, uom: string): number {
    const factor = uom === item.baseUnit ? 1 : item.units[uom];
    if (factor === undefined)
      throw new MappingError(
        "uom",
        `item ${item.sku} has no unit ${JSON.stringify(uom)} (base unit ${item.baseUnit}, units ${Object.keys(item.units).join(", ") || "none"})`,
        "unknown_unit",
      );
    const value = scaleExact(qty, factor);
    if (value === null) throw new MappingError("qty", `${qty} ${uom} is not a whole number of ${item.baseUnit} (× ${factor})`, "non_integral_qty");
    return value;
  }
}

/** A SKU's identifier in another system (the reverse of `Crosswalk.lookup`), with the SKU's base unit. */
export interface ForeignItem {
  readonly sku: string;
  readonly id: string;
  readonly baseUnit: string;
}

/**
 * The reverse lookup: each of these SKUs' identifier in `system` (the smallest, should a SKU have
 * several), read from the database; a SKU without one is absent from the map.
 */
export async function identifiersOf(sql: Sql, system: string, skus: ReadonlyArray<string>): Promise<Map<string, ForeignItem>> {
  if (skus.length === 0) return new Map();
  const rows = await sql<Array<{ sku: string; id: string; base_unit: string }>>`
    select i.sku, min(x.identifier) as id, i.base_unit
      from items i join item_identifiers x on x.sku = i.sku and x.system = ${system}
     where i.sku = any(${sql.array([...new Set(skus)])}::text[])
     group by i.sku, i.base_unit`;
  return new Map(rows.map((r) => [r.sku, { sku: r.sku, id: r.id, baseUnit: r.base_unit }]));
}

const key = (system: string, id: string) => `${system}\u0000${id}`;
