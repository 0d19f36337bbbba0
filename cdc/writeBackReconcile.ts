/**
 * What reconciliation needs from the write-back: the movements still in flight to the ERP (so they
 * are not reported as drift), and a correction written into the ERP where Tally is the system of record.
 */
import type { Logger } from "pino";
import type { ISql } from "postgres";
import type { Sql } from "../src/platform/index.ts";
import type { ResolvedSource } from "./sources.ts";
import { erpItems, openSink, scaleDown } from "./writeBackSinks.ts";

/** Where a source's write-back stood when read: read it before the ERP snapshot is taken. */
export interface WriteBackMark {
  readonly source: string;
  /** Every leg below it was sent (null: none yet). */
  readonly horizon: string | null;
  readonly upper: string | null;
  readonly afterEntry: string;
}

/** The write-back's position of a source (all null before its first round). */
export async function writeBackMark(tally: Sql, source: string): Promise<WriteBackMark> {
  const [p] = await tally<Array<{ horizon: string | null; upper: string | null; after_entry: string }>>`
    select horizon::text, upper::text, after_entry::text from writeback_positions where source = ${source}`;
  return { source, horizon: p?.horizon ?? null, upper: p?.upper ?? null, afterEntry: p?.after_entry ?? "0" };
}

/** On_hand units of a (SKU, location) that Tally has and the ERP does not have yet (Tally's base units). */
export interface InFlight {
  readonly sku: string;
  readonly location: string;
  readonly qty: number;
}

/**
 * Per (SKU, location), the on_hand units of eligible legs (not from this source, with an ERP item)
 * that the ERP does not have in the snapshot `erp` reads in: for a Postgres write-back, legs at or
 * above `mark` whose (command_id, leg) is not in the inbound table; over HTTP, legs the writer has
 * not yet sent past. Subtract them from the ledger's on-hand before comparing with the ERP's.
 *
 * `mark` must be read (`writeBackMark`) before the ERP snapshot is taken: a leg sent after it is
 * then still checked against the snapshot. `erp` is a connection inside that REPEATABLE READ snapshot.
 */
export async function writeBackInFlight(tally: Sql, source: ResolvedSource, erp: ISql, mark: WriteBackMark): Promise<Array<InFlight>> {
  const w = source.writeBack;
  if (!w) return [];
  const legs = await tally<Array<{ command_id: string; leg: number; sku: string; location: string; delta: string; sent: boolean }>>`
    select e.command_id, e.leg, e.sku, e.location, e.delta::text as delta,
           (${mark.upper}::xid8 is not null and e.txid < ${mark.upper}::xid8 and e.entry_id <= ${mark.afterEntry}::bigint) as sent
      from ledger_entries e
     where e.bucket = 'on_hand' and e.source_system <> ${source.name}
       and (${mark.horizon}::xid8 is null or e.txid >= ${mark.horizon}::xid8)
     order by e.entry_id`;
  const items = await erpItems(
    tally,
    source,
    legs.map((l) => l.sku),
  );
  const eligible = legs.filter((l) => "itemNo" in items.get(l.sku)!);
  let missing = eligible.filter((l) => !l.sent);
  if (w.movements) {
    const present = await erp<Array<{ command_id: string; leg: number }>>`
      select command_id, leg from ${erp(w.movements)}
       where (command_id, leg) in (select * from unnest(${erp.array(eligible.map((l) => l.command_id))}::text[], ${erp.array(eligible.map((l) => l.leg))}::int2[]))`;
    const there = new Set(present.map((p) => `${p.command_id}\u0000${p.leg}`));
    missing = eligible.filter((l) => !there.has(`${l.command_id}\u0000${l.leg}`));
  }
  const sums = new Map<string, InFlight>();
  for (const l of missing) {
    const key = `${l.sku}\u0000${l.location}`;
    const before = sums.get(key)?.qty ?? 0;
    sums.set(key, { sku: l.sku, location: l.location, qty: before + Number(l.delta) });
  }
  return [...sums.values()].filter((s) => s.qty !== 0);
}

/** One correction of the ERP's on-hand toward Tally's: `qty` base units added (negative: removed). */
export interface Correction {
  readonly sku: string;
  readonly location: string;
  readonly qty: number;
  /** Makes the ERP row's key: the same key (e.g. the reconciliation's position) inserts nothing a second time. */
  readonly key: string;
  readonly occurredAt?: Date;
}

/**
 * Writes a reconciliation correction into the ERP through the write-back's sink (tagged like every
 * write-back, so it does not come back as a movement), keyed `reconcile:<source>:<key>:<sku>:<location>`
 * leg 1: a second run with the same key inserts nothing. Throws naming the SKU when the ERP has no item for it.
 */
export async function writeBackCorrection(tally: Sql, source: ResolvedSource, correction: Correction, log: Logger): Promise<void> {
  if (!source.writeBack) throw new Error(`sources.${source.name}.writeBack: not configured, so corrections cannot be written to the ERP`);
  const { sku, location, qty, key } = correction;
  const item = (await erpItems(tally, source, [sku])).get(sku)!;
  if ("missing" in item) throw new Error(`write-back ${source.name}: ${item.missing}`);
  const erpQty = scaleDown(BigInt(qty), item.factor);
  if (erpQty === null || qty === 0)
    throw new Error(`write-back ${source.name}: ${qty} is not a non-zero whole number of ${item.uom} (× ${item.factor})`);
  const sink = openSink(source, log, "correction");
  try {
    await sink.send({
      kind: "movements",
      rows: [
        {
          command_id: `reconcile:${source.name}:${key}:${sku}:${location}`,
          leg: 1,
          item_no: item.itemNo,
          location,
          qty: erpQty,
          uom: item.uom,
          movement: "reconciliation",
          unit_cost: null,
          value: null,
          currency: null,
          occurred_at: (correction.occurredAt ?? new Date()).toISOString(),
          source_system: "tally",
          source_ref: `reconcile:${key}`,
        },
      ],
    });
  } finally {
    await sink.close();
  }
}
