/**
 * Replenishment requests for the write-back: the `low_stock` events (a location's available fell to
 * its reorder point or below) read from the events stream by a durable consumer per source, and
 * turned into purchase-requisition suggestions in the ERP's item and unit.
 */
import { AckPolicy, type Consumer, DeliverPolicy, type JetStreamClient, type JetStreamManager, type JsMsg } from "@nats-io/jetstream";
import { nanos } from "@nats-io/transport-node";
import type { Sql } from "../src/platform/index.ts";
import type { Topology } from "../src/wire/index.ts";
import type { ResolvedSource } from "./sources.ts";
import { type RequisitionRow, erpItems, scaleDown } from "./writeBackSinks.ts";

interface LowStock {
  readonly sku: string;
  readonly location: string;
  readonly available: number | string;
  readonly reorderPoint: number;
  readonly replenishmentRequested: { readonly shortfall: number | string };
  readonly commandId: string;
  readonly occurredAt: string;
}

/** The source's durable consumer of low_stock events (created on first use: requests from then on). */
export async function requisitionConsumer(jsm: JetStreamManager, js: JetStreamClient, topology: Topology, source: string): Promise<Consumer> {
  const name = `writeback_${source.replace(/-/g, "_")}_requisitions`;
  const exists = await jsm.consumers.info(topology.eventsStream, name).then(
    () => true,
    () => false, // not found: created below
  );
  if (!exists)
    await jsm.consumers.add(topology.eventsStream, {
      durable_name: name,
      filter_subject: topology.eventSubject("low_stock"),
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.New,
      ack_wait: nanos(120_000),
    });
  return js.consumers.get(topology.eventsStream, name);
}

/** The events as requisition rows (keyed by command, SKU and location); what cannot be sent, with the reason. */
export async function requisitionRows(
  sql: Sql,
  source: ResolvedSource,
  msgs: ReadonlyArray<JsMsg>,
): Promise<{ rows: Array<RequisitionRow>; dead: Array<{ payload: unknown; reason: string }> }> {
  const events: Array<LowStock> = [];
  const dead: Array<{ payload: unknown; reason: string }> = [];
  for (const m of msgs) {
    try {
      events.push(m.json<LowStock>());
    } catch (error) {
      dead.push({ payload: m.string(), reason: `write-back ${source.name}: low_stock event is not JSON: ${(error as Error).message}` });
    }
  }
  const items = await erpItems(
    sql,
    source,
    events.map((e) => e.sku),
  );
  const rows: Array<RequisitionRow> = [];
  for (const e of events) {
    const item = items.get(e.sku)!;
    if ("missing" in item) {
      dead.push({ payload: e, reason: `write-back ${source.name}: ${item.missing}` });
      continue;
    }
    // A shortfall is ordered in whole stock units (rounded up); available and reorder point as they are.
    const up = (q: number | string) => (BigInt(q) + BigInt(item.factor) - 1n) / BigInt(item.factor);
    const qty = up(e.replenishmentRequested.shortfall).toString();
    rows.push({
      requisition_id: `${e.commandId}:${e.sku}:${e.location}`,
      item_no: item.itemNo,
      location: e.location,
      qty,
      uom: item.uom,
      available: exact(BigInt(e.available), item.factor),
      reorder_point: exact(BigInt(e.reorderPoint), item.factor),
      command_id: e.commandId,
      requested_at: e.occurredAt,
    });
  }
  return { rows, dead };
}

/** Base units in the stock unit, exact to the thousandth (the inbound table's scale). */
const exact = (q: bigint, factor: number): string => scaleDown(q, factor) ?? (Number(q) / factor).toFixed(3);
