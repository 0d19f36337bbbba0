import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encodeEnvelope } from "../src/wire/envelope.ts";
import { verifyLedger } from "../ledger/index.ts";
import { publishCommands } from "../src/wire/publisher.ts";
import { testContext, type TestContext } from "./support/context.ts";
import {
  decodedCommands,
  eventually,
  harness,
  outcomeCounts,
  readStream,
  runTally,
  startInProcess,
  tallyEnv,
  type Harness,
} from "./support/tally.ts";
import { expectationOf, rng, type RawCommand } from "./support/workload.ts";

let ctx: TestContext;
let h: Harness;
let tally: Awaited<ReturnType<typeof startInProcess>>;

beforeAll(async () => {
  ctx = await testContext();
  h = await harness(ctx);
  tally = await startInProcess(ctx, ["worker", "relay"]);
});

afterAll(async () => {
  await tally?.close();
  await h?.close();
});

let n = 0;
function command(type: string, sku: string, qty: number, extra: Record<string, unknown> = {}, location = "DC1"): RawCommand {
  n++;
  return {
    id: `hold-test:${n}`,
    type,
    sku,
    location,
    qty,
    source: { system: "shop", ref: `ref-${n}` },
    occurredAt: new Date(Date.UTC(2026, 10, 26, 9, 0, 0, n)).toISOString(),
    ...extra,
  };
}
const reserve = (sku: string, hold: string, qty: number) => command("reserve", sku, qty, { reservationId: hold });
const release = (sku: string, hold: string, qty: number) => command("release", sku, qty, { reservationId: hold });
const fulfill = (sku: string, hold: string, qty: number) => command("fulfill", sku, qty, { reservationId: hold });

const ndjson = (lines: ReadonlyArray<object>): string => `${lines.map((l) => JSON.stringify(l)).join("\n")}\n`;

/** Publishes the commands and waits until each has an outcome. */
async function apply(commands: ReadonlyArray<RawCommand>): Promise<void> {
  await publishCommands(h.nats.js, h.topology, decodedCommands(commands));
  const ids = commands.map((c) => c.id);
  await eventually("outcomes", async () => (await outcomeCounts(h.sql, ids)).distinct === new Set(ids).size, 60_000);
}

async function buckets(sku: string, location = "DC1"): Promise<Record<string, number>> {
  const rows = await h.sql<Array<{ bucket: string; qty: number }>>`
    select bucket, qty from balances where sku = ${sku} and location = ${location}`;
  const out: Record<string, number> = { on_hand: 0, reserved: 0 };
  for (const r of rows) out[r.bucket] = Number(r.qty);
  return out;
}

async function hold(sku: string, holdId: string): Promise<{ status: string; open: number; qty: number } | undefined> {
  const [row] = await h.sql<Array<{ status: string; open_qty: number; qty: number }>>`
    select status, open_qty, qty from holds where sku = ${sku} and hold_id = ${holdId}`;
  return row && { status: row.status, open: Number(row.open_qty), qty: Number(row.qty) };
}

async function outcome(id: string): Promise<{ status: string; reason: string | null }> {
  const [row] = await h.sql<Array<{ status: string; reason: string | null }>>`
    select status, reason from command_outcomes where command_id = ${id}`;
  return row!;
}

describe("a hold belongs to one order line", () => {
  it("A/B through `tally submit`: B's refused hold cannot release A's units, A ships all 5", async () => {
    const sku = "AB-1";
    const lines = [
      command("receive", sku, 5, {}),
      reserve(sku, "web:A:1", 5),
      reserve(sku, "web:B:1", 3),
      release(sku, "web:B:1", 3),
      fulfill(sku, "web:A:1", 5),
    ];
    const r = await runTally(["submit", "-", "--wait"], tallyEnv(ctx), ndjson(lines));
    expect(r.stdout).toContain("accepted 3  rejected 2");
    expect(r.stdout).toContain("rejected insufficient_stock: 1");
    expect(r.stdout).toContain("rejected unknown_hold: 1");
    expect(r.code).toBe(0);

    expect(await buckets(sku)).toMatchObject({ on_hand: 0, reserved: 0 });
    expect(await hold(sku, "web:A:1")).toEqual({ status: "fulfilled", open: 0, qty: 5 });
    expect(await hold(sku, "web:B:1")).toEqual({ status: "refused", open: 0, qty: 3 });
    expect(await outcome(lines[2]!.id)).toEqual({ status: "rejected", reason: "insufficient_stock" });
    expect(await outcome(lines[3]!.id)).toEqual({ status: "rejected", reason: "unknown_hold" });
    expect(await outcome(lines[4]!.id)).toEqual({ status: "applied", reason: null });
    // The release wrote nothing; the fulfil took A's 5 from reserved and on hand.
    const movements = await h.sql<Array<{ movement: string; bucket: string; delta: number }>>`
      select movement, bucket, delta from ledger_entries where sku = ${sku} order by sku_seq`;
    expect(movements.map((m) => [m.movement, m.bucket, Number(m.delta)])).toEqual([
      ["receive", "on_hand", 5],
      ["reserve", "reserved", 5],
      ["fulfill", "reserved", -5],
      ["fulfill", "on_hand", -5],
    ]);
    // The refused order line is published for its shop, naming the line.
    await eventually("hold_refused", async () => {
      const events = await readStream(h, h.topology.eventsStream, h.topology.eventSubject("hold_refused"));
      return events.some((e) => (e.data as { holdId?: string; sku?: string }).holdId === "web:B:1" && (e.data as { sku: string }).sku === sku);
    });
    expect(tally.worker!.metrics.holdsRefused).toBeGreaterThanOrEqual(1);
    expect((await verifyLedger(h.sql)).ok).toBe(true);
  });

  it("a partial fulfilment leaves the rest of the hold open; the rest can still ship", async () => {
    const sku = "PF-1";
    await apply([command("receive", sku, 10), reserve(sku, "o:1", 4), fulfill(sku, "o:1", 1)]);
    expect(await hold(sku, "o:1")).toEqual({ status: "open", open: 3, qty: 4 });
    expect(await buckets(sku)).toMatchObject({ on_hand: 9, reserved: 3 });
    await apply([fulfill(sku, "o:1", 3)]);
    expect(await hold(sku, "o:1")).toEqual({ status: "fulfilled", open: 0, qty: 4 });
    expect(await buckets(sku)).toMatchObject({ on_hand: 6, reserved: 0 });
  });

  it("a release after the fulfilment is a no-op rejected as hold_closed, and takes nothing from other holds", async () => {
    const sku = "RF-1";
    await apply([command("receive", sku, 10), reserve(sku, "o:1", 2), reserve(sku, "o:2", 3), fulfill(sku, "o:1", 2)]);
    const late = release(sku, "o:1", 2);
    await apply([late]);
    expect(await outcome(late.id)).toEqual({ status: "rejected", reason: "hold_closed" });
    expect(await buckets(sku)).toMatchObject({ on_hand: 8, reserved: 3 });
    expect(await hold(sku, "o:2")).toEqual({ status: "open", open: 3, qty: 3 });
  });

  it("a fulfilment with no hold is still recorded: goods leave on hand (fulfill_unreserved), with an event naming the order line", async () => {
    const sku = "NH-1";
    const ship = fulfill(sku, "shop:O-77:2", 4);
    await apply([command("receive", sku, 3), ship]);
    expect(await outcome(ship.id)).toEqual({ status: "applied", reason: null });
    expect(await buckets(sku)).toMatchObject({ on_hand: -1, reserved: 0 });
    const [entry] = await h.sql<Array<{ movement: string; delta: number }>>`
      select movement, delta from ledger_entries where command_id = ${ship.id}`;
    expect({ movement: entry!.movement, delta: Number(entry!.delta) }).toEqual({ movement: "fulfill_unreserved", delta: -4 });
    await eventually("the fulfill_unreserved and negative_stock events", async () => {
      const events = await readStream(h, h.topology.eventsStream, h.topology.eventSubjects);
      const mine = events.filter((e) => (e.data as { sku?: string }).sku === sku);
      return (
        mine.some((e) => e.subject.endsWith(".fulfill_unreserved") && (e.data as { holdId: string }).holdId === "shop:O-77:2") &&
        mine.some((e) => e.subject.endsWith(".negative_stock"))
      );
    });
  });

  it("keeps closed holds out of a live actor's memory and still knows them after a restart", async () => {
    const sku = "RS-1";
    await apply([command("receive", sku, 10), reserve(sku, "o:1", 2), release(sku, "o:1", 2)]);
    await tally.close();
    tally = await startInProcess(ctx, ["worker", "relay"]);
    const again = release(sku, "o:1", 1);
    const dup = reserve(sku, "o:1", 1);
    await apply([again, dup]);
    expect(await outcome(again.id)).toEqual({ status: "rejected", reason: "hold_closed" });
    expect(await outcome(dup.id)).toEqual({ status: "rejected", reason: "hold_exists" });
    expect(await buckets(sku)).toMatchObject({ on_hand: 10, reserved: 0 });
  });

  it("`tally ledger verify` catches reserved that disagrees with the open holds", async () => {
    const sku = "VH-1";
    await apply([command("receive", sku, 10), reserve(sku, "o:1", 4)]);
    expect((await verifyLedger(h.sql)).ok).toBe(true);
    await h.sql`update holds set open_qty = 3 where sku = ${sku} and hold_id = 'o:1'`;
    try {
      const report = await verifyLedger(h.sql);
      expect(report.ok).toBe(false);
      expect(report.problem).toMatchObject({ sku, message: "reserved DC1 is 4 but its open holds hold 3" });
      const cli = await runTally(["ledger", "verify"], tallyEnv(ctx));
      expect(cli.code).toBe(3);
    } finally {
      await h.sql`update holds set open_qty = 4 where sku = ${sku} and hold_id = 'o:1'`;
    }
  });
});

describe("the hold model", () => {
  /**
   * Random order-line lifecycles over a few SKUs: receipts and sales, then per line a reserve (some
   * refused for want of stock) followed by nothing, a release, a fulfilment (whole, partial, or
   * more than held), a release after the fulfilment, or a fulfilment of a line never reserved.
   */
  function lifecycles(count: number, seed: number): Array<RawCommand> {
    const r = rng(seed);
    const int = (lo: number, hi: number) => lo + Math.floor(r() * (hi - lo + 1));
    const skus = ["HM-1", "HM-2", "HM-3"];
    const locations = ["DC1", "S01"];
    const out: Array<RawCommand> = [];
    const pending: Array<Array<RawCommand>> = [];
    for (let i = 0; i < count; i++) {
      const sku = skus[int(0, skus.length - 1)]!;
      const location = locations[int(0, 1)]!;
      const roll = r();
      if (roll < 0.15) out.push(command("receive", sku, int(1, 8), {}, location));
      else if (roll < 0.25) out.push(command("sell", sku, int(1, 3), {}, location));
      else if (roll < 0.3) out.push(command("fulfill", sku, int(1, 3), { reservationId: `never:${i}` }, location));
      else {
        const line = `shop:M${seed}-${i}:1`;
        const qty = int(1, 6);
        out.push(command("reserve", sku, qty, { reservationId: line }, location));
        const next = r();
        const later: Array<RawCommand> = [];
        if (next < 0.25) later.push(command("release", sku, qty, { reservationId: line }, location));
        else if (next < 0.45) later.push(command("fulfill", sku, qty, { reservationId: line }, location));
        else if (next < 0.6) {
          const part = int(1, qty);
          later.push(command("fulfill", sku, part, { reservationId: line }, location));
          later.push(command(r() < 0.5 ? "fulfill" : "release", sku, qty, { reservationId: line }, location));
        } else if (next < 0.7) later.push(command("fulfill", sku, qty + int(1, 3), { reservationId: line }, location));
        else if (next < 0.8) {
          later.push(command("fulfill", sku, qty, { reservationId: line }, location));
          later.push(command("release", sku, qty, { reservationId: line }, location));
        }
        if (later.length > 0) pending.push(later);
      }
      // Lines progress out of order with each other, in order within themselves.
      if (pending.length > 0 && r() < 0.4) out.push(...pending.splice(int(0, pending.length - 1), 1)[0]!);
    }
    for (const later of pending) out.push(...later);
    return out;
  }

  it("reserved = Σ open holds and on hand = receipts − sales − shipments, through refusals, duplicates and restarts", async () => {
    const all = lifecycles(600, 11);
    const pick = rng(5);
    let duplicates = 0;
    for (let i = 0; i < all.length; i += 150) {
      const chunk = all.slice(i, i + 150);
      await publishCommands(h.nats.js, h.topology, decodedCommands(chunk));
      // Some commands again, under a new Nats-Msg-Id (as after the dedupe window): the ledger skips them.
      for (const c of all.slice(0, i + 150)) {
        if (pick() >= 0.03) continue;
        const [decoded] = decodedCommands([c]);
        await h.nats.js.publish(h.topology.commandSubject(h.topology.partitionOf(c.sku)), encodeEnvelope([decoded!]), {
          msgID: `again:${c.id}:${i}`,
        });
        duplicates++;
      }
      const ids = chunk.map((c) => c.id);
      await eventually("the chunk's outcomes", async () => (await outcomeCounts(h.sql, ids)).distinct === ids.length, 60_000);
      // A restart: the actors are rebuilt from the ledger tables (open holds), closed ones looked up when named.
      await tally.close();
      tally = await startInProcess(ctx, ["worker", "relay"]);
    }
    expect(duplicates).toBeGreaterThan(10);
    const ids = all.map((c) => c.id);
    await eventually("every outcome, once", async () => {
      const counts = await outcomeCounts(h.sql, ids);
      return counts.distinct === ids.length && counts.n === ids.length;
    });

    const model = expectationOf(all);
    expect([...model.rejected.values()]).toContain("insufficient_stock");
    expect([...model.rejected.values()]).toContain("hold_closed");
    const rejected = await h.sql<Array<{ command_id: string; reason: string }>>`
      select command_id, reason from command_outcomes where command_id = any(${h.sql.array(ids)}::text[]) and status = 'rejected'`;
    expect(new Map(rejected.map((r) => [r.command_id, r.reason]))).toEqual(model.rejected);

    const holds = await h.sql<Array<{ sku: string; hold_id: string; location: string; open_qty: number; status: string }>>`
      select sku, hold_id, location, open_qty, status from holds where sku like 'HM-%'`;
    expect(new Map(holds.map((x) => [`${x.sku}|${x.hold_id}`, { location: x.location, open: Number(x.open_qty), status: x.status }]))).toEqual(
      model.holds,
    );

    for (const [key, l] of model.locations) {
      const [sku, location] = key.split("|") as [string, string];
      const stored = await buckets(sku, location);
      const open = holds.filter((x) => x.sku === sku && x.location === location && x.status === "open");
      // reserved is the sum of the open holds…
      expect(stored.reserved, key).toBe(open.reduce((s, x) => s + Number(x.open_qty), 0));
      expect(stored.reserved, key).toBe(l.reserved);
      // …and on hand is what came in less what went out: every sale and every shipment is a fact.
      const mine = all.filter((c) => c.sku === sku && c.location === location);
      const total = (type: string) => mine.filter((c) => c.type === type).reduce((s, c) => s + (c.qty ?? 0), 0);
      expect(stored.on_hand, key).toBe(total("receive") - total("sell") - total("fulfill"));
      expect(stored.on_hand, key).toBe(l.on_hand);
    }
    expect((await verifyLedger(h.sql)).ok).toBe(true);
  }, 240_000);
});

describe("holds with an expiry of their own", () => {
  it("lapse once past their time: the sweep releases them and they end expired, once", async () => {
    const { expireDueHolds } = await import("../src/reservations/holdExpiry.ts");
    const sku = "EX-1";
    const past = new Date(Date.now() - 60_000).toISOString();
    const future = new Date(Date.now() + 3_600_000).toISOString();
    await apply([
      command("receive", sku, 10),
      command("reserve", sku, 3, { reservationId: "shop:E-1:1", expiresAt: past }),
      command("reserve", sku, 2, { reservationId: "shop:E-2:1", expiresAt: future }),
      reserve(sku, "shop:E-3:1", 1),
    ]);
    const first = await expireDueHolds(h.sql, h.nats.js, h.topology);
    expect(first.failed).toEqual([]);
    expect(first.published).toBeGreaterThanOrEqual(1);
    await eventually("the hold to lapse", async () => (await hold(sku, "shop:E-1:1"))?.status === "expired");
    expect(await hold(sku, "shop:E-1:1")).toEqual({ status: "expired", open: 0, qty: 3 });
    expect(await hold(sku, "shop:E-2:1")).toEqual({ status: "open", open: 2, qty: 2 });
    expect(await buckets(sku)).toMatchObject({ on_hand: 10, reserved: 3 });
    // Nothing is due any more; a later shipment of the lapsed line leaves on hand unreserved.
    const again = await expireDueHolds(h.sql, h.nats.js, h.topology);
    expect(again.published).toBe(0);
    const [{ n }] = await h.sql<
      [{ n: number }]
    >`select count(*)::int as n from command_outcomes where command_id like 'hold-expiry:%' and sku = ${sku}`;
    expect(n).toBe(1);
  });
});
