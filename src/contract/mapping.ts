import type { CommandType } from "./command.ts";

/**
 * A column value as pgoutput sent it, in Postgres's text form (numeric stays an exact decimal
 * string, timestamps keep their zone). `null` is SQL NULL; `undefined` is a value Postgres did not
 * send (an unchanged TOAST value, or a non-key column of an old row under REPLICA IDENTITY DEFAULT).
 */
export type ColumnValue = string | null | undefined;
export type RawRow = Readonly<Record<string, ColumnValue>>;

/** A mapping could not turn a change into commands: names the field; the change is dead-lettered. */
export class MappingError extends Error {
  override readonly name = "MappingError";
  constructor(
    readonly field: string,
    readonly problem: string,
    /** A short machine-readable reason: `unknown_item`, `missing_column`, `bad_value`, `non_integral_qty`… */
    readonly reason: string = "bad_value",
  ) {
    super(`${field}: ${problem}`);
  }
}

/** The crosswalk has no such identifier (yet): it may have been defined by another source a moment ago. */
export class UnknownItem extends MappingError {
  constructor(readonly item: ItemRef) {
    super(`item.${item.system}`, `unknown item ${JSON.stringify(item.id)} (not in the crosswalk)`, "unknown_item");
  }
}

/** Typed, deliberate access to one row's columns; every accessor names the column when it fails. */
export class RowView {
  constructor(
    readonly table: string,
    readonly which: "new" | "old",
    readonly raw: RawRow,
  ) {}

  #value(column: string): string | null {
    if (!(column in this.raw)) throw new MappingError(`${this.which}.${column}`, `no such column in ${this.table}`, "missing_column");
    const v = this.raw[column];
    if (v === undefined)
      throw new MappingError(
        `${this.which}.${column}`,
        `value not sent by Postgres (unchanged TOAST value, or old row without REPLICA IDENTITY FULL)`,
        "value_not_sent",
      );
    return v;
  }

  has(column: string): boolean {
    return column in this.raw && this.raw[column] !== undefined;
  }

  /** A non-null text value. */
  text(column: string): string {
    const v = this.#value(column);
    if (v === null) throw new MappingError(`${this.which}.${column}`, "is null", "bad_value");
    return v;
  }

  optionalText(column: string): string | null {
    return this.#value(column);
  }

  /** A non-null integer (int2/int4/int8 text, or an integral numeric). */
  int(column: string): number {
    const v = this.text(column);
    if (!/^-?\d+(\.0+)?$/.test(v)) throw new MappingError(`${this.which}.${column}`, `expected an integer, got ${JSON.stringify(v)}`);
    const n = Number(v.split(".")[0]);
    if (!Number.isSafeInteger(n)) throw new MappingError(`${this.which}.${column}`, `out of range: ${v}`);
    return n;
  }

  /** A non-null exact decimal, as its text (`12.500`): never through a float. */
  decimal(column: string): string {
    const v = this.text(column);
    if (!/^-?\d+(\.\d+)?$/.test(v)) throw new MappingError(`${this.which}.${column}`, `expected a decimal, got ${JSON.stringify(v)}`);
    return v;
  }

  bool(column: string): boolean {
    const v = this.text(column);
    if (v === "t" || v === "true") return true;
    if (v === "f" || v === "false") return false;
    throw new MappingError(`${this.which}.${column}`, `expected a boolean, got ${JSON.stringify(v)}`);
  }

  /**
   * A timestamptz as an ISO-8601 string with its zone preserved to the microsecond
   * (`2026-11-26 10:00:00.123456+01` → `2026-11-26T10:00:00.123456+01:00`). A `timestamp` without
   * zone is refused: its instant is ambiguous.
   */
  timestamp(column: string): string {
    const v = this.text(column);
    const m = /^(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2}(?:\.\d+)?)([+-]\d{2})(?::?(\d{2}))?(?::?(\d{2}))?$/.exec(v);
    if (!m) throw new MappingError(`${this.which}.${column}`, `expected a timestamp with time zone, got ${JSON.stringify(v)}`);
    if (m[5] && m[5] !== "00") throw new MappingError(`${this.which}.${column}`, `time zone offsets with seconds are not supported: ${v}`);
    return `${m[1]}T${m[2]}${m[3]}:${m[4] ?? "00"}`;
  }
}

/** One captured row change, in commit order. */
export interface Change {
  readonly source: string;
  readonly op: "insert" | "update" | "delete";
  /** `schema.table` */
  readonly table: string;
  /** The new row (insert, update). */
  readonly new: RowView | null;
  /** The old row (update, delete): every column under REPLICA IDENTITY FULL, the key columns otherwise, or null. */
  readonly old: RowView | null;
  /** The transaction's commit LSN, e.g. `0/16B3748`. */
  readonly commitLsn: string;
  /** The change's position in its transaction (0-based). */
  readonly index: number;
  /** The commit time, ISO-8601. */
  readonly commitTime: string;
}

/** An item identifier in one system's namespace (`erp_item`, `shop_sku`, `barcode`, `plu`…). */
export interface ItemRef {
  readonly system: string;
  readonly id: string;
}

/**
 * What a mapping returns for a change: a command about an item known by one of its identifiers, in
 * any unit. The crosswalk turns it into canonical commands (SKU, base units, bundle components).
 */
export interface MappedCommand {
  readonly type: CommandType;
  readonly item: ItemRef;
  readonly location: string;
  /** In `uom` (default: the unit the identifier implies, else the item's base unit). Decimal strings are exact. */
  readonly qty?: number | string;
  readonly uom?: string;
  /** Default: `<source>:<commit lsn>:<index>`, suffixed `:<n>` when one change yields several commands. */
  readonly id?: string;
  /** `source.ref`; default `<table>`. */
  readonly ref?: string;
  /** Default: the commit time. */
  readonly occurredAt?: string;
  /** Type-specific fields: reservationId, transferId, to, from, reason, restockable, safetyStock, reorderPoint. */
  readonly fields?: Readonly<Record<string, unknown>>;
}

/** An item of the catalog, as the item master defines it (kept in the crosswalk). */
export interface ItemDefinition {
  readonly sku: string;
  /** `stock`: counted in base units; `non_inventory`: gift cards, services (skipped and counted); `bundle`: a kit of components. */
  readonly kind: "stock" | "non_inventory" | "bundle";
  /** `EA`, or `g` for variable-weight items. */
  readonly baseUnit: string;
  /** Integral base units per unit: `{ CASE: 12 }`, `{ kg: 1000 }`. */
  readonly units?: Readonly<Record<string, number>>;
  /** Bundles: base units of each component per bundle. */
  readonly components?: ReadonlyArray<{ readonly sku: string; readonly qty: number }>;
  /** Every identifier of the item in other systems; each may imply a unit (a case barcode). */
  readonly identifiers: ReadonlyArray<ItemRef & { readonly uom?: string }>;
}

/** An item's status in the catalog: channels sell `active` items only. */
export type CatalogStatus = "active" | "discontinued" | "blocked";

/**
 * A fact about the catalog channels show: an item's name and status (from the item master, by SKU),
 * a price list (which channel it prices, in which currency), or a price of an item known by one of
 * its identifiers. Every fact of one source transaction becomes one catalog version.
 */
export type CatalogFact =
  | {
      readonly kind: "item";
      readonly sku: string;
      readonly name: string;
      readonly description?: string;
      readonly status: CatalogStatus;
      /** The unit a price is for, when it is not the base unit (`kg` for loose bananas counted in g). */
      readonly unit?: string;
      readonly attributes?: Readonly<Record<string, unknown>>;
      /** The SKU the item had before (a renamed SKU keeps its prices). */
      readonly renamedFrom?: string;
    }
  | { readonly kind: "item_removed"; readonly sku: string }
  | { readonly kind: "price_list"; readonly priceList: string; readonly channel: string; readonly currency: string }
  | { readonly kind: "price_list_removed"; readonly priceList: string }
  | {
      readonly kind: "price";
      readonly item: ItemRef;
      readonly priceList: string;
      /** ISO-8601 with a zone; a price starting later is published when it starts. */
      readonly validFrom: string;
      readonly validTo: string | null;
      /** The exact decimal in the list's currency (`12.99`); projections carry it in minor units. */
      readonly amount: string;
    }
  | { readonly kind: "price_removed"; readonly item: ItemRef; readonly priceList: string; readonly validFrom: string };

/** What a table handler makes of a change. */
export interface MappingResult {
  readonly commands?: ReadonlyArray<MappedCommand>;
  /** Item master changes: upserts to the crosswalk, applied before any later change is mapped. */
  readonly items?: ReadonlyArray<ItemDefinition>;
  /** Items removed from the item master (by SKU). */
  readonly removeItems?: ReadonlyArray<string>;
  /** Catalog facts (names, statuses, price lists, prices): one catalog version per source transaction. */
  readonly catalog?: ReadonlyArray<CatalogFact>;
}

/** A table's handler: pure, from a change to commands and/or crosswalk updates. Throw MappingError for bad rows. */
export type TableMapping = (change: Change) => MappingResult | ReadonlyArray<MappedCommand>;

/**
 * A table read inside the slot's exported snapshot on first start, in list order: the item master
 * first (its rows become crosswalk entries), then policies, then opening balances (usually `count`).
 */
export interface SnapshotTable {
  /** `schema.table` */
  readonly table: string;
  /** Columns that identify a row (for deterministic command ids). */
  readonly key: ReadonlyArray<string>;
  /** Row → commands and/or item definitions. */
  readonly map: (row: RowView) => MappingResult | ReadonlyArray<MappedCommand>;
}

/** One row of a source's on-hand, as its mapping reads it: an item in the source's namespace, in any unit. */
export interface OnHandRow {
  readonly item: ItemRef;
  readonly location: string;
  /** In `uom` (default: the unit the identifier implies, else the item's base unit). Decimal strings are exact. */
  readonly qty: number | string;
  readonly uom?: string;
}

/**
 * Where a source keeps its stock on hand, for `tally reconcile`: a table read whole in one
 * REPEATABLE READ snapshot, each row mapped to an item, a location and a quantity (the crosswalk
 * turns it into a SKU and base units).
 */
export interface OnHandDeclaration {
  /** `schema.table` */
  readonly table: string;
  readonly map: (row: RowView) => OnHandRow;
}
