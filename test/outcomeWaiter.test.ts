import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { OutcomeWaiter, outcomesSubject } from "../src/wire/outcomes.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { harness, type Harness } from "./support/tally.ts";

// The API waits for a command's outcome from the workers' core-NATS messages, and falls back to
// command_outcomes (the truth) when such a message is lost.

let ctx: TestContext;
let h: Harness;
let waiter: OutcomeWaiter;

beforeAll(async () => {
  ctx = await testContext();
  h = await harness(ctx);
  waiter = new OutcomeWaiter(h.sql, h.nats.nc, h.topology.env);
  waiter.start();
});
afterAll(async () => {
  await waiter?.stop();
  await h?.close();
});

const record = (ids: ReadonlyArray<string>) => h.sql`
  insert into command_outcomes (command_id, partition, stream_seq, sku, type, status, reason, detail, recorded_at)
  select id, 0, 0, 'OW-1', 'reserve', 'rejected', 'insufficient_stock', '{"available": 2}'::jsonb, now() from unnest(${h.sql.array([...ids])}::text[]) as t(id)`;

/** Resolves with the waiter's answer, or "timeout" when it was not in before `ms`. */
const within = <T>(p: Promise<T>, ms: number) => Promise.race([p, new Promise<"timeout">((r) => setTimeout(() => r("timeout"), ms))]);

describe("OutcomeWaiter", () => {
  it("takes an outcome from the workers' NATS message", async () => {
    const waiting = waiter.wait(["ow:nats"], 30_000);
    h.nats.nc.publish(
      outcomesSubject(h.topology.env),
      JSON.stringify({
        partition: 0,
        part: 0,
        size: 1,
        applyMs: 1,
        outcomes: [{ id: "ow:nats", status: "applied", reason: null, detail: null, type: "reserve", sku: "OW-1" }],
      }),
    );
    const found = await within(waiting.done, 20_000);
    expect(found !== "timeout" && found.get("ow:nats")?.status).toBe("applied");
  });

  it("finds outcomes whose NATS message never came in the database, long before the wait times out, for many waiters at once", async () => {
    const ids = Array.from({ length: 500 }, (_, i) => `ow:db:${i}`);
    const waits = ids.map((id) => waiter.wait([id], 60_000));
    await record(ids); // recorded, but no message on the outcomes subject
    const found = await within(Promise.all(waits.map((w) => w.done)), 20_000);
    expect(found).not.toBe("timeout");
    for (const [i, f] of (found as Array<Map<string, { status: string; reason: string | null; detail: unknown }>>).entries())
      expect(f.get(ids[i]!)).toMatchObject({ status: "rejected", reason: "insufficient_stock", detail: { available: 2 } });
  });

  it("answers without an outcome when none is recorded by the deadline; a cancelled wait ends at once", async () => {
    const none = await waiter.wait(["ow:never"], 500).done;
    expect(none.size).toBe(0);
    const cancelled = waiter.wait(["ow:cancelled"], 60_000);
    cancelled.cancel();
    expect(await within(cancelled.done, 20_000)).toEqual(new Map());
  });
});
