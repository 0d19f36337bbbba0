/**
 * The durable timer of holds that carry their own expiry (a CDC mapping may give a reserve an
 * `expiresAt`): releases each open hold past its time with a `release` marked `expired`, so the hold
 * ends `expired`. The command id is deterministic from the hold, so several sweepers, or a sweep
 * repeated before the worker applied the first, publish it once (the stream and the ledger both
 * drop a repeat). Reservations made through the API expire with their reservation instead.
 */
import type { JetStreamClient } from "@nats-io/jetstream";
import type { Sql } from "postgres";
import { decodeCommand, holdExpiryCommandId, type Command } from "../contract/index.ts";
import { publishCommands } from "../wire/index.ts";
import type { Topology } from "../wire/index.ts";

/**
 * Publishes the expiring release of up to `limit` open holds whose `expires_at` has passed: how many,
 * and the holds it could not make a command for (the caller reports them; they stay open).
 */
export async function expireDueHolds(
  sql: Sql,
  js: JetStreamClient,
  topology: Topology,
  limit = 200,
): Promise<{ readonly published: number; readonly failed: ReadonlyArray<{ sku: string; holdId: string; message: string }> }> {
  const due = await sql<Array<{ sku: string; hold_id: string; location: string; open_qty: number; expires_at: Date }>>`
    select sku, hold_id, location, open_qty, expires_at from holds
     where status = 'open' and expires_at <= now()
     order by expires_at limit ${limit}`;
  const commands: Array<Command> = [];
  const failed: Array<{ sku: string; holdId: string; message: string }> = [];
  for (const h of due) {
    const decoded = decodeCommand({
      id: holdExpiryCommandId(h.sku, h.hold_id),
      type: "release",
      sku: h.sku,
      location: h.location,
      qty: Number(h.open_qty),
      reservationId: h.hold_id,
      expired: true,
      source: { system: "tally", ref: `hold-expiry:${h.hold_id}` },
      occurredAt: h.expires_at.toISOString(),
    });
    if (decoded._tag === "Left") failed.push({ sku: h.sku, holdId: h.hold_id, message: decoded.left.message });
    else commands.push(decoded.right);
  }
  if (commands.length > 0) await publishCommands(js, topology, commands);
  return { published: commands.length, failed };
}
