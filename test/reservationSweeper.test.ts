import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { testContext, type TestContext } from "./support/context.ts";
import { publishCommands } from "../src/wire/publisher.ts";
import { decodedCommands, eventually } from "./support/tally.ts";
import { balance, deadLetters, startApi, type ApiFixture } from "./apiSupport.ts";

let ctx: TestContext;
let api: ApiFixture;

beforeAll(async () => {
  ctx = await testContext();
  api = await startApi(ctx, { sweepIntervalMs: 200 });
});
afterAll(async () => {
  await api?.close();
});

/** What a process leaves behind when it dies after recording a reservation and its first attempt. */
async function pendingRow(id: string, sku: string, location: string, qty: number): Promise<void> {
  await api.sql`insert into reservations (id, principal, idempotency_key, request_hash, status, ttl_seconds, claimed_until)
                values (${id}, 'reserver', ${`key-${id}`}, 'x', 'pending', 600, now() - interval '1 second')`;
  await api.sql`insert into reservation_lines (reservation_id, line, sku, qty, fixed_location, location, command_id, tried, state)
                values (${id}, 1, ${sku}, ${qty}, ${location}, ${location}, ${`res:${id}:1:1`}, ${api.sql.array([location])}, 'pending')`;
}

describe("the reservation sweeper", () => {
  it("skips and dead-letters rows it cannot drive, and still finishes a legitimate stale reservation behind them", async () => {
    await publishCommands(
      api.h.nats.js,
      api.h.topology,
      decodedCommands([
        {
          id: "rcv-sweep-ok",
          type: "receive",
          sku: "SWEEP-OK",
          location: "DC1",
          qty: 5,
          source: { system: "erp", ref: "t" },
          occurredAt: "2026-11-26T10:00:00Z",
        },
      ]),
    );
    await eventually("the receipt", async () => (await balance(api.sql, "SWEEP-OK", "DC1")) === 5);
    // Rows written before ids were checked as strictly: a ':' in the SKU makes no valid command. They are older, so first in line.
    const bad = Array.from({ length: 40 }, (_, i) => `r_bad${String(i).padStart(28, "0")}`);
    for (const id of bad) await pendingRow(id, `BAD:${id.slice(-2)}`, "DC1", 1);
    const good = `r_good${"0".repeat(27)}`;
    await pendingRow(good, "SWEEP-OK", "DC1", 2);

    await eventually(
      "the legitimate reservation to be held",
      async () => {
        const [row] = await api.sql<Array<{ status: string }>>`select status from reservations where id = ${good}`;
        return row?.status === "held";
      },
      30_000,
    );
    expect(await balance(api.sql, "SWEEP-OK", "DC1", "reserved")).toBe(2);
    await eventually("every undrivable row to be rejected", async () => {
      const [r] = await api.sql<[{ n: number }]>`select count(*)::int as n from reservations where id = any(${bad}) and status = 'rejected'`;
      return r.n === bad.length;
    });
    const [answer] = await api.sql<Array<{ response_status: number; response_body: { error: string; message: string } }>>`
      select response_status, response_body from reservations where id = ${bad[0]!}`;
    expect(answer).toMatchObject({
      response_status: 400,
      response_body: { error: "invalid_request", message: expect.stringMatching(/^lines\[0\]: /) },
    });
    const letters = await deadLetters(api.h, "reservations");
    expect(new Set(letters.map((l) => l.context.reservationId))).toEqual(new Set(bad));
    expect(letters[0]!.payload).toMatchObject({ lines: [{ sku: expect.stringMatching(/^BAD:/) }] });
  }, 60_000);
});
