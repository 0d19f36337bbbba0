/**
 * Hold admission control for real: the worker is stopped, so a hold waits out its decision timeout and
 * its command stays undecided; from then on new holds in that partition are shed at once (503
 * `overloaded`, Retry-After, nothing written or published), other partitions still take holds, and
 * once a worker runs again and decides the backlog the same Idempotency-Key is held.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodeCommand } from "../src/contract/command.ts";
import { publishCommands } from "../src/wire/publisher.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { eventually, startInProcess } from "./support/tally.ts";
import { balance, startApi, type ApiFixture } from "./apiSupport.ts";

let ctx: TestContext;
let api: ApiFixture;
const DECISION_TIMEOUT_MS = 1500;
const SHED_LAG_MS = 400;

beforeAll(async () => {
  ctx = await testContext();
  // No sweeper: nothing re-drives a pending reservation behind the test's back.
  api = await startApi(ctx, { decisionTimeoutMs: DECISION_TIMEOUT_MS, reservationShedLagMs: SHED_LAG_MS, background: false }, ["worker"]);
}, 60_000);
afterAll(async () => {
  await api?.close();
});

async function receive(sku: string, qty: number): Promise<void> {
  const d = decodeCommand({
    id: `shed-rcv:${sku}`,
    type: "receive",
    sku,
    location: "DC1",
    qty,
    source: { system: "erp", ref: `shed-${sku}` },
    occurredAt: "2026-11-26T10:00:00Z",
  });
  if (d._tag === "Left") throw d.left;
  await publishCommands(api.h.nats.js, api.h.topology, [d.right]);
  await eventually("the receipt applied", async () => (await balance(api.sql, sku, "DC1")) === qty);
}

const hold = (sku: string, key: string) =>
  api.call({
    method: "POST",
    url: "/v1/reservations",
    as: "reserver",
    headers: { "content-type": "application/json", "idempotency-key": key },
    payload: JSON.stringify({ sku, qty: 1, location: "DC1" }),
  });

const commandCount = async () => (await api.h.nats.jsm.streams.info(api.h.topology.commandsStream)).state.messages;
const reservationsWithKey = async (key: string) =>
  (await api.sql<Array<{ n: number }>>`select count(*)::int as n from reservations where idempotency_key = ${key}`)[0]!.n;

/** The value of a metric line in /metrics, or null. */
async function metric(line: RegExp): Promise<number | null> {
  const text = (await api.call({ method: "GET", url: "/metrics" })).body;
  const m = line.exec(text);
  return m ? Number(m[1]) : null;
}

describe("holds are shed while the apply path is behind", () => {
  it("sheds holds of a stalled partition with 503 overloaded + Retry-After, publishes nothing for them, and holds again once a worker catches up", async () => {
    const sku = "SHED-1";
    // A SKU of another partition: its holds are not shed for SHED-1's backlog.
    const other = ["SHED-2", "SHED-3", "SHED-4", "SHED-5", "SHED-6", "SHED-7"].find(
      (s) => api.h.topology.partitionOf(s) !== api.h.topology.partitionOf(sku),
    )!;
    await receive(sku, 100);
    await receive(other, 100);
    expect((await hold(sku, "shed-ok")).statusCode).toBe(201);

    // The worker stops: the next hold is published and waits out its decision timeout, undecided.
    await api.tally!.close();
    api.tally = null;
    const before = await commandCount();
    const waited = await hold(sku, "shed-first");
    expect(waited.statusCode).toBe(503);
    expect(waited.json()).toMatchObject({ code: "decision_pending" });
    expect(await commandCount()).toBe(before + 1);

    // Its command is still undecided (older than the limit): new holds in the partition are shed at once.
    const shed = await hold(sku, "shed-new");
    expect(shed.statusCode).toBe(503);
    expect(shed.headers["content-type"]).toMatch(/^application\/problem\+json/);
    expect(Number(shed.headers["retry-after"])).toBeGreaterThanOrEqual(1);
    const problem = shed.json();
    expect(problem).toMatchObject({
      type: "/problems/overloaded",
      status: 503,
      code: "overloaded",
      instance: "/v1/reservations",
      limitMs: SHED_LAG_MS,
    });
    expect(problem.lagMs).toBeGreaterThan(SHED_LAG_MS);
    expect(problem.title).toBeTypeOf("string");
    // Nothing published, nothing written: a retry with the same key is a new request.
    expect(await commandCount()).toBe(before + 1);
    expect(await reservationsWithKey("shed-new")).toBe(0);
    // The undecided one's key still gets its own answer (pending: at once, nothing published again).
    const again = await hold(sku, "shed-first");
    expect(again.statusCode).toBe(503);
    expect(again.json()).toMatchObject({ code: "decision_pending" });
    expect(again.headers["idempotent-replayed"]).toBe("true");
    expect(await commandCount()).toBe(before + 1);
    // The other partition has nothing undecided: its hold goes (and, no worker running, waits undecided too).
    const elsewhere = await hold(other, "shed-elsewhere");
    expect(elsewhere.json()).toMatchObject({ code: "decision_pending" });
    expect(await commandCount()).toBe(before + 2);

    expect(await metric(/^tally_reservations_total\{outcome="shed"\} (\d+)/m)).toBeGreaterThanOrEqual(1);
    expect(await metric(/^tally_reservation_hold_lag_seconds (\S+)/m)).toBeGreaterThan(SHED_LAG_MS / 1000);

    // A worker again: it decides the backlog; the shed key is then held (each try before that shed, publishing nothing).
    api.tally = await startInProcess(ctx, ["worker"]);
    let held = null;
    let tries = 0;
    await eventually("the shed key to be held", async () => {
      const count = await commandCount();
      const r = await hold(sku, "shed-new");
      tries++;
      if (r.statusCode === 201) {
        held = r.json();
        expect(await commandCount()).toBe(count + 1);
        return true;
      }
      expect(r.statusCode).toBe(503);
      expect(r.json()).toMatchObject({ code: "overloaded" });
      expect(r.headers["retry-after"]).toBeDefined();
      expect(await commandCount()).toBe(count);
      return false;
    });
    expect(tries).toBeGreaterThanOrEqual(1);
    expect(held).toMatchObject({ status: "held", lines: [{ sku, state: "held" }] });
    // The undecided one is decided by now: its retry drives it to its answer.
    expect((await hold(sku, "shed-first")).statusCode).toBe(201);
    expect((await hold(other, "shed-elsewhere")).statusCode).toBe(201);
    // Held once each: shed-ok, shed-first, shed-new; nothing for the shed tries.
    expect(await balance(api.sql, sku, "DC1", "reserved")).toBe(3);
    expect(await balance(api.sql, other, "DC1", "reserved")).toBe(1);
  });
});
