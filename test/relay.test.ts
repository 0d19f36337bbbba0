import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Command } from "../src/contract/command.ts";
import { instanceId } from "../ledger/index.ts";
import { publishCommands } from "../src/wire/publisher.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { commandMaker, eventually, harness, outcomeCounts, readStream, startInProcess, type Harness } from "./support/tally.ts";

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

const cmd = commandMaker("r");

async function applyAll(commands: ReadonlyArray<Command>): Promise<void> {
  await publishCommands(h.nats.js, h.topology, commands);
  const ids = commands.map((c) => c.id);
  await eventually("the commands to be applied and relayed", async () => {
    const { n: done } = await outcomeCounts(h.sql, ids);
    const [{ pending }] = await h.sql<[{ pending: number }]>`select count(*)::int as pending from outbox`;
    return done === ids.length && pending === 0;
  });
}

describe("the outbox relay", () => {
  it("publishes each status crossing once (not once per sale), with Nats-Msg-Id = instance:outbox id", async () => {
    const sku = "EVT-1";
    await applyAll([
      cmd("set_policy", sku, { safetyStock: 0, reorderPoint: 5 }),
      cmd("receive", sku, { qty: 20 }), // its first stock: not a return to stock, so no back_in_stock
      ...Array.from({ length: 20 }, () => cmd("sell", sku, { qty: 1 })), // 20 → 0: crosses low once, out once
      cmd("sell", sku, { qty: 2 }), // → −2: negative
      cmd("sell", sku, { qty: 1 }), // still negative: nothing new
      cmd("receive", sku, { qty: 30 }), // back in stock
    ]);
    const events = (await readStream(h, h.topology.eventsStream, h.topology.eventSubjects)).filter((e) => (e.data as { sku: string }).sku === sku);
    const types = events.map((e) => e.subject.split(".").pop());
    expect(types).toEqual(["low_stock", "out_of_stock", "negative_stock", "back_in_stock"]);
    const low = events[0]!.data as { replenishmentRequested: { reorderPoint: number; shortfall: number } };
    expect(low.replenishmentRequested.reorderPoint).toBe(5);
    expect(low.replenishmentRequested.shortfall).toBeGreaterThanOrEqual(0);
    const instance = await instanceId(h.sql);
    for (const e of events) expect(e.msgId).toMatch(new RegExp(`^${instance}:\\d+$`));
    expect(new Set(events.map((e) => e.msgId)).size).toBe(events.length);
  });

  it("publishes rejections as command_rejected events", async () => {
    await applyAll([cmd("reserve", "EVT-2", { qty: 3, reservationId: "EVT-2:1" })]);
    const rejected = await readStream(h, h.topology.eventsStream, h.topology.eventSubject("command_rejected"));
    expect(rejected.map((e) => e.data)).toContainEqual(
      expect.objectContaining({ sku: "EVT-2", reason: "insufficient_stock", commandType: "reserve" }),
    );
  });

  it("publishes availability per channel to KV and to availability subjects, with the SKU's ledger sequence", async () => {
    const sku = "AV-1";
    await applyAll([cmd("receive", sku, { qty: 10 })]);
    await applyAll([cmd("reserve", sku, { qty: 3, reservationId: "AV-1:1" })]);
    const web = (await h.nats.availability.get(`web.${sku}`))!.json<Record<string, unknown>>();
    // web = DC1 + S01, buffer 2: 10 − 3 − 2
    expect(web).toMatchObject({ channel: "web", sku, available: 5, onHand: 10, reserved: 3, status: "in_stock", seq: 2 });
    const store = (await h.nats.availability.get(`store_s01.${sku}`))!.json<Record<string, unknown>>();
    expect(store).toMatchObject({ available: 7, seq: 2 });
    const updates = await readStream(h, h.topology.availabilityStream, h.topology.availabilitySubject("web", sku));
    expect(updates.map((u) => (u.data as { seq: number }).seq)).toEqual([1, 2]);
  });

  it("coalesces a batch's changes of one SKU into one projection per channel", async () => {
    const sku = "AV-2";
    await applyAll([
      cmd("receive", sku, { qty: 10 }),
      cmd("reserve", sku, { qty: 3, reservationId: "AV-2:1" }),
      cmd("release", sku, { qty: 1, reservationId: "AV-2:1" }),
    ]);
    const updates = await readStream(h, h.topology.availabilityStream, h.topology.availabilitySubject("web", sku));
    expect(updates.length).toBeLessThanOrEqual(3);
    expect(updates.at(-1)!.data).toMatchObject({ seq: 3, reserved: 2, available: 6 });
  });

  it("never shows a channel negative availability", async () => {
    const sku = "AV-NEG";
    await applyAll([cmd("sell", sku, { qty: 4 })]);
    const web = (await h.nats.availability.get(`web.${sku}`))!.json<{ available: number; onHand: number; status: string }>();
    expect(web).toMatchObject({ available: 0, onHand: -4, status: "out" });
  });
});
