import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { testContext, type TestContext } from "./support/context.ts";
import { eventually, harness, readStream, startInProcess, type Harness } from "./support/tally.ts";

let ctx: TestContext;
let h: Harness;

beforeAll(async () => {
  ctx = await testContext();
  h = await harness(ctx);
});
afterAll(async () => {
  await h?.close();
});

describe("the outbox relay, lagging", () => {
  it("publishes only the latest of several waiting availability changes of one key, and every event", async () => {
    const sku = "CO-1";
    const subject = h.topology.availabilitySubject("web", sku);
    const key = h.topology.availabilityKey("web", sku);
    const eventSubject = h.topology.eventSubject("low_stock");
    const figure = (version: number) => ({
      channel: "web",
      sku,
      available: 10 - version,
      onHand: 10,
      reserved: version,
      status: "in_stock",
      seq: 1,
      version,
    });
    // Three batches' changes (and two events) committed while no relay ran: a relay that lags.
    for (const version of [1, 2, 3]) {
      await h.sql`insert into outbox (kind, subject, kv_key, payload) values ('availability', ${subject}, ${key}, ${h.sql.json(figure(version))})`;
      if (version < 3)
        await h.sql`insert into outbox (kind, subject, kv_key, payload) values ('event', ${eventSubject}, null, ${h.sql.json({ version })})`;
    }
    const relay = await startInProcess(ctx, ["relay"]);
    try {
      await eventually("the outbox to be relayed", async () => (await h.sql<[{ n: number }]>`select count(*)::int as n from outbox`)[0].n === 0);
    } finally {
      await relay.close();
    }
    const updates = await readStream(h, h.topology.availabilityStream, subject);
    expect(updates.map((u) => (u.data as { version: number }).version)).toEqual([3]);
    expect((await h.nats.availability.get(key))!.json<{ version: number }>().version).toBe(3);
    const events = await readStream(h, h.topology.eventsStream, eventSubject);
    expect(events.map((e) => (e.data as { version: number }).version)).toEqual([1, 2]);
  });
});
