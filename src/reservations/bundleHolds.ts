/**
 * A bundle's hold is all of its components or none. Through the API a bundle line is a cart of its
 * components (the reservation service releases what it held when one is short). Through CDC a
 * shop's order line for a bundle becomes one reserve per component (`<id>#<component>`, sharing the
 * order line's hold id), each decided by its own SKU: when one is refused, this releases the open
 * holds of the others. Durable without a timer of its own: it reads the `holds` table on every
 * sweep, so a component whose reserve is applied after its sibling's refusal is released by the
 * next sweep. Two holds belong to one bundle line when they share the hold id and both SKUs are
 * components of one bundle. The release id is deterministic from the hold (published once, however
 * many sweepers see it). A sale is a fact and is not touched here: its commands carry every component.
 */
import type { JetStreamClient } from "@nats-io/jetstream";
import type { Sql } from "postgres";
import { bundleHoldReleaseCommandId, decodeCommand, type Command } from "../contract/index.ts";
import { publishCommands } from "../wire/index.ts";
import type { Topology } from "../wire/index.ts";

/** Publishes the release of up to `limit` open component holds whose bundle line had a component refused. */
export async function releaseBrokenBundleHolds(
  sql: Sql,
  js: JetStreamClient,
  topology: Topology,
  limit = 200,
): Promise<{ readonly published: number; readonly failed: ReadonlyArray<{ sku: string; holdId: string; message: string }> }> {
  const broken = await sql<Array<{ sku: string; hold_id: string; location: string; open_qty: string; refused: string }>>`
    select o.sku, o.hold_id, o.location, o.open_qty::text, min(r.sku) as refused
      from holds o
      join holds r on r.hold_id = o.hold_id and r.sku <> o.sku and r.status = 'refused'
     where o.status = 'open'
       and exists (select from bundle_components a join bundle_components b on b.bundle = a.bundle
                    where a.component = o.sku and b.component = r.sku)
     group by o.sku, o.hold_id, o.location, o.open_qty
     limit ${limit}`;
  const commands: Array<Command> = [];
  const failed: Array<{ sku: string; holdId: string; message: string }> = [];
  for (const h of broken) {
    const decoded = decodeCommand({
      id: bundleHoldReleaseCommandId(h.sku, h.hold_id),
      type: "release",
      sku: h.sku,
      location: h.location,
      qty: Number(h.open_qty),
      reservationId: h.hold_id,
      source: { system: "tally", ref: `bundle-release:${h.hold_id}:${h.refused}` },
      occurredAt: new Date().toISOString(),
    });
    if (decoded._tag === "Left") failed.push({ sku: h.sku, holdId: h.hold_id, message: decoded.left.message });
    else commands.push(decoded.right);
  }
  if (commands.length > 0) await publishCommands(js, topology, commands);
  return { published: commands.length, failed };
}
