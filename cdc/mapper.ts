import type { Command } from "../src/contract/index.ts";
import { cdcChangeCommandId, mappedCommandId } from "../src/contract/index.ts";
import type { Crosswalk } from "./crosswalk.ts";
import { resolveCatalogFacts, type ResolvedCatalogFact } from "./catalog.ts";
import {
  MappingError,
  RowView,
  type Change,
  type ItemDefinition,
  type MappedCommand,
  type MappingResult,
  type RawRow,
} from "../src/contract/index.ts";

/** A change as carried in a dead letter, so `tally dlq replay` can map it again. */
export interface ChangePayload {
  readonly table: string;
  readonly op: Change["op"];
  readonly new: RawRow | null;
  readonly old: RawRow | null;
  readonly commitLsn: string;
  readonly index: number;
  readonly commitTime: string;
}

/** What mapping one change produced. */
export interface MapOutcome {
  readonly commands: ReadonlyArray<Command>;
  readonly items: ReadonlyArray<ItemDefinition>;
  readonly removedItems: ReadonlyArray<string>;
  /** Catalog facts, their items resolved to SKUs (the caller records them as one version per transaction). */
  readonly catalog: ReadonlyArray<ResolvedCatalogFact>;
  /** Non-inventory lines skipped (gift cards, services). */
  readonly skipped: number;
  /** Set when the change cannot be mapped: it goes to the dead-letter stream. */
  readonly error: MappingError | null;
}

export function changeFrom(source: string, p: ChangePayload): Change {
  return {
    source,
    op: p.op,
    table: p.table,
    new: p.new ? new RowView(p.table, "new", p.new) : null,
    old: p.old ? new RowView(p.table, "old", p.old) : null,
    commitLsn: p.commitLsn,
    index: p.index,
    commitTime: p.commitTime,
  };
}

const normalize = (r: MappingResult | ReadonlyArray<MappedCommand>): MappingResult =>
  Array.isArray(r) ? { commands: r as ReadonlyArray<MappedCommand> } : (r as MappingResult);

/**
 * Runs a table's mapping and resolves its commands through the crosswalk. Item definitions the
 * mapping returns are applied to `crosswalk` at once (so the next change of the same transaction
 * sees them); the caller persists them. Never throws for bad input: the error comes back.
 */
export function mapWith(
  source: string,
  crosswalk: Crosswalk,
  defaultId: string,
  ref: string,
  occurredAt: string,
  lsn: string | undefined,
  run: () => MappingResult | ReadonlyArray<MappedCommand>,
): MapOutcome {
  try {
    const result = normalize(run());
    const items = result.items ?? [];
    const removedItems = result.removeItems ?? [];
    if (items.length > 0 || removedItems.length > 0) crosswalk.apply(items, removedItems);
    const catalog = resolveCatalogFacts(crosswalk, result.catalog ?? []);
    const mapped = result.commands ?? [];
    const commands: Array<Command> = [];
    let skipped = 0;
    mapped.forEach((m, k) => {
      const id = mappedCommandId(defaultId, k, mapped.length);
      const r = crosswalk.resolve(m, { source, id, ref, occurredAt, ...(lsn ? { lsn } : {}) });
      if (r.kind === "skipped") skipped++;
      else commands.push(...r.commands);
    });
    return { commands, items, removedItems, catalog, skipped, error: null };
  } catch (error) {
    const e =
      error instanceof MappingError ? error : new MappingError("mapping", `failed: ${(error as Error)?.message ?? String(error)}`, "mapping_failed");
    return { commands: [], items: [], removedItems: [], catalog: [], skipped: 0, error: e };
  }
}

/** Maps one captured change with its table's mapping (default id `<source>:<commit lsn>:<index>`). */
export function mapChange(
  source: string,
  tables: Readonly<Record<string, { readonly map: (c: Change) => MappingResult | ReadonlyArray<MappedCommand> }>>,
  crosswalk: Crosswalk,
  change: Change,
): MapOutcome {
  const table = tables[change.table];
  return mapWith(
    source,
    crosswalk,
    cdcChangeCommandId(source, change.commitLsn, change.index),
    change.table,
    change.commitTime,
    change.commitLsn,
    () => {
      if (!table) throw new MappingError("table", `${change.table} is not a captured table of source ${source}`, "unknown_table");
      return table.map(change);
    },
  );
}
