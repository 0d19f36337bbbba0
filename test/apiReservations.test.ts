import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodeCommand, type Command } from "../src/contract/command.ts";
import { publishCommands } from "../src/wire/publisher.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { eventually, startInProcess } from "./support/tally.ts";
import { balance, defineItems, settle, startApi, type ApiFixture, type TokenName } from "./apiSupport.ts";

let ctx: TestContext;
let api: ApiFixture;

beforeAll(async () => {
  ctx = await testContext();
  api = await startApi(ctx, { sweepIntervalMs: 200 });
});
afterAll(async () => {
  await api?.close();
});

let n = 0;
async function receive(sku: string, location: string, qty: number): Promise<void> {
  const d = decodeCommand({
    id: `rr:${++n}`,
    type: "receive",
    sku,
    location,
    qty,
    source: { system: "erp", ref: `r${n}` },
    occurredAt: "2026-11-26T10:00:00Z",
  });
  if (d._tag === "Left") throw d.left;
  const c: Command = d.right;
  await publishCommands(api.h.nats.js, api.h.topology, [c]);
  await settle(api.h, [c.id]);
}

let keys = 0;
const reserve = (body: Record<string, unknown>, as: TokenName = "reserver", key: string | null = `k${++keys}`) =>
  api.call({
    method: "POST",
    url: "/v1/reservations",
    as,
    headers: { "content-type": "application/json", ...(key !== null ? { "idempotency-key": key } : {}) },
    payload: JSON.stringify(body),
  });

async function commandCount(): Promise<number> {
  return (await api.h.nats.jsm.streams.info(api.h.topology.commandsStream)).state.messages;
}

describe("POST /v1/reservations", () => {
  it("holds stock at a location: 201 with id and expiry, decided by the SKU's actor", async () => {
    await receive("R-1", "DC1", 10);
    const before = Date.now();
    const r = await reserve({ sku: "R-1", qty: 3, location: "DC1", ttlSeconds: 600 });
    expect(r.statusCode).toBe(201);
    const body = r.json();
    expect(body).toMatchObject({ status: "held", lines: [{ line: 1, sku: "R-1", qty: 3, location: "DC1", state: "held" }] });
    expect(body.id).toMatch(/^r_[0-9a-f]{32}$/);
    expect(new Date(body.expiresAt).getTime()).toBeGreaterThanOrEqual(before + 590_000);
    expect(await balance(api.sql, "R-1", "DC1", "reserved")).toBe(3);
    const [outcome] = await api.sql<
      Array<{ status: string; type: string }>
    >`select status, type from command_outcomes where command_id = ${`res:${body.id}:1:1`}`;
    expect(outcome).toEqual({ status: "applied", type: "reserve" });
    const got = await api.call({ method: "GET", url: `/v1/reservations/${body.id}`, as: "reserver" });
    expect(got.json()).toMatchObject({ id: body.id, status: "held" });
  });

  it("answers a retry with the same Idempotency-Key with the same reply, holding nothing more; another body under that key is 422", async () => {
    await receive("R-2", "DC1", 10);
    const first = await reserve({ sku: "R-2", qty: 2, location: "DC1" }, "reserver", "same-key");
    expect(first.statusCode).toBe(201);
    const messages = await commandCount();
    const again = await reserve({ sku: "R-2", qty: 2, location: "DC1" }, "reserver", "same-key");
    expect(again.statusCode).toBe(201);
    expect(again.headers["idempotent-replayed"]).toBe("true");
    expect(again.json()).toEqual(first.json());
    expect(await commandCount()).toBe(messages);
    expect(await balance(api.sql, "R-2", "DC1", "reserved")).toBe(2);
    const other = await reserve({ sku: "R-2", qty: 5, location: "DC1" }, "reserver", "same-key");
    expect(other.statusCode).toBe(422);
    expect(other.json()).toMatchObject({ code: "idempotency_conflict" });
    // The key is per token: another token may use it.
    const otherToken = await reserve({ sku: "R-2", qty: 1, location: "DC1", channel: "web" }, "webReserver", "same-key");
    expect(otherToken.statusCode).toBe(201);
  });

  it("answers 409 insufficient_stock with what is available", async () => {
    await receive("R-3", "DC1", 4);
    const r = await reserve({ sku: "R-3", qty: 5, location: "DC1" });
    expect(r.statusCode).toBe(409);
    expect(r.json()).toMatchObject({
      code: "insufficient_stock",
      available: 4,
      lines: [{ sku: "R-3", qty: 5, location: "DC1", state: "rejected", available: 4 }],
    });
    expect(await balance(api.sql, "R-3", "DC1", "reserved")).toBe(0);
  });

  it("holds a cart all or nothing: a refused line releases the lines already held", async () => {
    await receive("CART-A", "DC1", 5);
    await receive("CART-B", "DC1", 1);
    const r = await reserve({
      location: "DC1",
      lines: [
        { sku: "CART-A", qty: 2 },
        { sku: "CART-B", qty: 2 },
        { sku: "CART-A", qty: 1 },
      ],
    });
    expect(r.statusCode).toBe(409);
    const body = r.json();
    expect(body.lines.map((l: { state: string }) => l.state)).toEqual(["released", "rejected", "released"]);
    await settle(api.h, [`res:${body.id}:1:release`, `res:${body.id}:3:release`]);
    expect(await balance(api.sql, "CART-A", "DC1", "reserved")).toBe(0);
    const ok = await reserve({
      location: "DC1",
      lines: [
        { sku: "CART-A", qty: 2 },
        { sku: "CART-B", qty: 1 },
      ],
    });
    expect(ok.statusCode).toBe(201);
    expect(await balance(api.sql, "CART-A", "DC1", "reserved")).toBe(2);
    expect(await balance(api.sql, "CART-B", "DC1", "reserved")).toBe(1);
  });

  it("holds a bundle as its components", async () => {
    await defineItems(api.sql, [
      {
        sku: "KIT-1",
        kind: "bundle",
        baseUnit: "EA",
        components: [
          { sku: "KIT-P1", qty: 2 },
          { sku: "KIT-P2", qty: 1 },
        ],
        identifiers: [],
      },
    ]);
    await receive("KIT-P1", "DC1", 4);
    await receive("KIT-P2", "DC1", 1);
    const r = await reserve({ sku: "KIT-1", qty: 1, location: "DC1" });
    expect(r.statusCode).toBe(201);
    expect(r.json().lines.map((l: { sku: string; qty: number }) => [l.sku, l.qty])).toEqual([
      ["KIT-P1", 2],
      ["KIT-P2", 1],
    ]);
    const second = await reserve({ sku: "KIT-1", qty: 1, location: "DC1" });
    expect(second.statusCode).toBe(409);
    await settle(api.h, [`res:${second.json().id}:1:release`]);
    expect(await balance(api.sql, "KIT-P1", "DC1", "reserved")).toBe(2);
  });

  it("picks, for a channel, a location of the channel that can hold the line, trying the next when refused", async () => {
    await receive("CH-1", "DC1", 1);
    await receive("CH-1", "S01", 5);
    const r = await reserve({ sku: "CH-1", qty: 3, channel: "web" });
    expect(r.statusCode).toBe(201);
    expect(r.json()).toMatchObject({ channel: "web", lines: [{ location: "S01" }] });
    // The token's channel is the default.
    const t = await reserve({ sku: "CH-1", qty: 1 }, "webReserver");
    expect(t.statusCode).toBe(201);
    expect(t.json().channel).toBe("web");
    const none = await reserve({ sku: "CH-1", qty: 4, channel: "web" });
    expect(none.statusCode).toBe(409);
  });

  it("never lets a channel hold units its buffer keeps back: the hold is checked against what the channel shows", async () => {
    // web = DC1 + S01, buffer 2: 3 units at DC1 show as 1 on the web.
    await receive("CH-2", "DC1", 3);
    await eventually(
      "web availability",
      async () => (await api.call({ method: "GET", url: "/v1/availability/CH-2?channel=web", as: "reader" })).json().available === 1,
    );
    const tooMany = await reserve({ sku: "CH-2", qty: 2, channel: "web" });
    expect(tooMany.statusCode).toBe(409);
    expect(tooMany.json()).toMatchObject({ code: "insufficient_stock", available: 1 });
    expect(await balance(api.sql, "CH-2", "DC1", "reserved")).toBe(0);
    const one = await reserve({ sku: "CH-2", qty: 1, channel: "web" });
    expect(one.statusCode).toBe(201);
    expect(await reserve({ sku: "CH-2", qty: 1, channel: "web" }).then((r) => r.statusCode)).toBe(409);
    // The buffer is the web's: the store's own channel and a location hold still see the units.
    const direct = await reserve({ sku: "CH-2", qty: 2, location: "DC1" });
    expect(direct.statusCode).toBe(201);
    expect(await balance(api.sql, "CH-2", "DC1", "reserved")).toBe(3);
  });

  it("answers 400 for a missing Idempotency-Key, a bad body, or neither location nor channel", async () => {
    const noKey = await reserve({ sku: "R-1", qty: 1, location: "DC1" }, "reserver", null);
    expect(noKey.statusCode).toBe(400);
    expect(noKey.json().errors[0].path).toBe("headers.idempotency-key");
    const zero = await reserve({ sku: "R-1", qty: 0, location: "DC1" });
    expect(zero.statusCode).toBe(400);
    expect(zero.json().errors.map((i: { path: string }) => i.path)).toContain("body.qty");
    const both = await reserve({ sku: "R-1", qty: 1, lines: [{ sku: "R-1", qty: 1 }], location: "DC1" });
    expect(both.statusCode).toBe(400);
    const nowhere = await reserve({ sku: "R-1", qty: 1 });
    expect(nowhere.statusCode).toBe(400);
    expect(nowhere.json().detail).toMatch(/location: is missing/);
    const outside = await reserve({ sku: "R-1", qty: 1, location: "S02", channel: "web" });
    expect(outside.statusCode).toBe(400);
    const unknownChannel = await reserve({ sku: "R-1", qty: 1, channel: "moon" });
    expect(unknownChannel.statusCode).toBe(404);
  });

  it("answers 400 naming the field for a ':' in a SKU or location (one id grammar with commands), publishing nothing and leaving nothing pending", async () => {
    const before = await commandCount();
    const sku = await reserve({ sku: "R:1", qty: 1, location: "DC1" });
    expect(sku.statusCode).toBe(400);
    expect(sku.json().errors.map((i: { path: string }) => i.path)).toContain("body.sku");
    const location = await reserve({ lines: [{ sku: "R-1", qty: 1, location: "DC:1" }] });
    expect(location.statusCode).toBe(400);
    expect(location.json().errors.map((i: { path: string }) => i.path)).toContain("body.lines[0].location");
    expect(await commandCount()).toBe(before);
    const [{ pending }] = await api.sql<[{ pending: number }]>`select count(*)::int as pending from reservations where status = 'pending'`;
    expect(pending).toBe(0);
  });

  it("answers 403 for another channel, or a location outside the token's channel", async () => {
    expect((await reserve({ sku: "R-1", qty: 1, channel: "web" }, "storeReserver")).statusCode).toBe(403);
    expect((await reserve({ sku: "R-1", qty: 1, location: "DC1" }, "storeReserver")).statusCode).toBe(403);
    expect((await reserve({ sku: "R-1", qty: 1, location: "DC1" }, "reader")).statusCode).toBe(403);
    await receive("CH-3", "S01", 5);
    const mine = await reserve({ sku: "CH-3", qty: 1, channel: "web" }, "webReserver");
    expect(mine.statusCode).toBe(201);
    const other = await api.call({ method: "POST", url: `/v1/reservations/${mine.json().id}/commit`, as: "storeReserver" });
    expect(other.statusCode).toBe(403);
  });
});

describe("commit, fulfill, release", () => {
  it("commits (no expiry), then releases; both idempotent; 409 for a state that forbids it; 404 for none", async () => {
    await receive("LC-1", "DC1", 10);
    const { id } = (await reserve({ sku: "LC-1", qty: 4, location: "DC1", ttlSeconds: 1 })).json();
    const commit = await api.call({ method: "POST", url: `/v1/reservations/${id}/commit`, as: "reserver" });
    expect(commit.statusCode).toBe(200);
    expect(commit.json()).toMatchObject({ id, status: "committed", expiresAt: null });
    expect((await api.call({ method: "POST", url: `/v1/reservations/${id}/commit`, as: "reserver" })).statusCode).toBe(200);
    // A committed hold outlives its TTL.
    await new Promise((r) => setTimeout(r, 1500));
    expect(await balance(api.sql, "LC-1", "DC1", "reserved")).toBe(4);
    const release = await api.call({ method: "DELETE", url: `/v1/reservations/${id}`, as: "reserver" });
    expect(release.statusCode).toBe(200);
    expect(release.json()).toMatchObject({ status: "released", lines: [{ state: "released" }] });
    await settle(api.h, [`res:${id}:1:release`]);
    expect(await balance(api.sql, "LC-1", "DC1", "reserved")).toBe(0);
    expect((await api.call({ method: "DELETE", url: `/v1/reservations/${id}`, as: "reserver" })).statusCode).toBe(200);
    const late = await api.call({ method: "POST", url: `/v1/reservations/${id}/commit`, as: "reserver" });
    expect(late.statusCode).toBe(409);
    expect(late.json()).toMatchObject({ code: "reservation_released" });
    expect((await api.call({ method: "POST", url: `/v1/reservations/r_${"0".repeat(32)}/commit`, as: "reserver" })).statusCode).toBe(404);
    expect((await api.call({ method: "DELETE", url: `/v1/reservations/nope`, as: "reserver" })).statusCode).toBe(400);
  });

  it("fulfills a hold: reserved and on hand both go down", async () => {
    await receive("LC-2", "DC1", 10);
    const { id } = (await reserve({ sku: "LC-2", qty: 3, location: "DC1" })).json();
    const r = await api.call({ method: "POST", url: `/v1/reservations/${id}/fulfill`, as: "reserver" });
    expect(r.statusCode).toBe(200);
    expect(r.json().status).toBe("fulfilled");
    await settle(api.h, [`res:${id}:1:fulfill`]);
    expect(await balance(api.sql, "LC-2", "DC1", "reserved")).toBe(0);
    expect(await balance(api.sql, "LC-2", "DC1", "on_hand")).toBe(7);
    const release = await api.call({ method: "DELETE", url: `/v1/reservations/${id}`, as: "reserver" });
    expect(release.statusCode).toBe(409);
    expect(release.json()).toMatchObject({ code: "reservation_fulfilled" });
  });

  it("expires an uncommitted hold after its TTL: released with a deterministic command id", async () => {
    await receive("EXP-1", "DC1", 5);
    const { id } = (await reserve({ sku: "EXP-1", qty: 5, location: "DC1", ttlSeconds: 1 })).json();
    expect(await balance(api.sql, "EXP-1", "DC1", "reserved")).toBe(5);
    await settle(api.h, []);
    // The ledger and the reservation record are written by different parts (worker, sweeper) in no set
    // order: wait for both.
    await eventually("the hold to expire", async () => (await balance(api.sql, "EXP-1", "DC1", "reserved")) === 0, 20_000);
    await eventually("the reservation's lines to be released", async () => {
      const got = await api.call({ method: "GET", url: `/v1/reservations/${id}`, as: "reserver" });
      return got.json().lines[0].state === "released";
    });
    const got = await api.call({ method: "GET", url: `/v1/reservations/${id}`, as: "reserver" });
    expect(got.json()).toMatchObject({ status: "expired", expiresAt: null, lines: [{ state: "released" }] });
    const [o] = await api.sql<Array<{ status: string }>>`select status from command_outcomes where command_id = ${`res:${id}:1:release`}`;
    expect(o?.status).toBe("applied");
    // The line's hold (named by its reserve command) ends in exactly one terminal state: expired.
    const holds = await api.sql<Array<{ hold_id: string; status: string; open_qty: number }>>`
      select hold_id, status, open_qty from holds where sku = 'EXP-1'`;
    expect(holds.map((x) => ({ ...x, open_qty: Number(x.open_qty) }))).toEqual([{ hold_id: `res:${id}:1:1`, status: "expired", open_qty: 0 }]);
    const commit = await api.call({ method: "POST", url: `/v1/reservations/${id}/commit`, as: "reserver" });
    expect(commit.json()).toMatchObject({ code: "reservation_expired" });
  });
  it("shows a hold past its TTL as expired before the sweeper has released it, and refuses to commit it", async () => {
    await receive("EXP-3", "DC1", 5);
    const { id } = (await reserve({ sku: "EXP-3", qty: 2, location: "DC1", ttlSeconds: 1 })).json();
    // Hold the reservation's row lock: the sweeper skips locked rows, so it cannot release this one yet.
    let unlock!: () => void;
    const locked = new Promise<void>((r) => (unlock = r));
    let isLocked!: () => void;
    const lockTaken = new Promise<void>((r) => (isLocked = r));
    const tx = api.sql.begin(async (t) => {
      await t`select id from reservations where id = ${id} for update`;
      isLocked();
      await locked;
    });
    try {
      await lockTaken;
      await new Promise((r) => setTimeout(r, 1_200));
      const got = await api.call({ method: "GET", url: `/v1/reservations/${id}`, as: "reserver" });
      expect(got.json()).toMatchObject({ status: "expired", expiresAt: null, lines: [{ state: "held" }] });
      expect(await balance(api.sql, "EXP-3", "DC1", "reserved")).toBe(2);
      const commit = await api.call({ method: "POST", url: `/v1/reservations/${id}/commit`, as: "reserver" });
      expect(commit.statusCode).toBe(409);
      expect(commit.json()).toMatchObject({ code: "reservation_expired" });
    } finally {
      unlock();
      await tx;
    }
    await eventually("the sweeper to release it", async () => (await balance(api.sql, "EXP-3", "DC1", "reserved")) === 0, 20_000);
  });
});

describe("races and restarts", () => {
  it("50 concurrent reservations for the last 10 units: exactly 10 succeed", async () => {
    await receive("RACE-1", "DC1", 10);
    const replies = await Promise.all(Array.from({ length: 50 }, () => reserve({ sku: "RACE-1", qty: 1, location: "DC1" })));
    const codes = replies.map((r) => r.statusCode);
    expect(codes.filter((c) => c === 201)).toHaveLength(10);
    expect(codes.filter((c) => c === 409)).toHaveLength(40);
    expect(await balance(api.sql, "RACE-1", "DC1", "reserved")).toBe(10);
    for (const r of replies.filter((r) => r.statusCode === 409)) expect(r.json()).toMatchObject({ code: "insufficient_stock", available: 0 });
  });

  it("expires a hold even when every process restarted in between", async () => {
    await receive("EXP-2", "DC1", 3);
    await api.restartApp({ background: false });
    const { id } = (await reserve({ sku: "EXP-2", qty: 2, location: "DC1", ttlSeconds: 1 })).json();
    expect(await balance(api.sql, "EXP-2", "DC1", "reserved")).toBe(2);
    // Every process stops; the TTL passes while nothing runs.
    await api.app.close();
    await api.tally!.close();
    await new Promise((r) => setTimeout(r, 1500));
    expect(await balance(api.sql, "EXP-2", "DC1", "reserved")).toBe(2);
    api.tally = await startInProcess(ctx, ["worker", "relay"]);
    await api.restartApp({ sweepIntervalMs: 200 });
    await eventually("the hold to be released after the restart", async () => (await balance(api.sql, "EXP-2", "DC1", "reserved")) === 0, 30_000);
    // The sweeper commits the reservation's status after the worker may have applied the release.
    await eventually("the reservation to be marked expired", async () => {
      const [row] = await api.sql<Array<{ status: string }>>`select status from reservations where id = ${id}`;
      return row?.status === "expired";
    });
  });

  it("finishes a reservation a dead process left undecided (the sweeper re-drives it)", async () => {
    await receive("PEND-1", "DC1", 3);
    // What a process that died after recording the reservation and its attempt, before answering, leaves behind.
    const id = `r_${"a".repeat(32)}`;
    await api.sql`insert into reservations (id, principal, idempotency_key, request_hash, status, ttl_seconds, claimed_until)
                  values (${id}, 'reserver', 'dead-process', 'x', 'pending', 600, now() - interval '1 second')`;
    await api.sql`insert into reservation_lines (reservation_id, line, sku, qty, fixed_location, location, command_id, tried, state)
                  values (${id}, 1, 'PEND-1', 2, 'DC1', 'DC1', ${`res:${id}:1:1`}, '{DC1}', 'pending')`;
    await eventually(
      "the sweeper to decide it",
      async () => {
        const [row] = await api.sql<Array<{ status: string }>>`select status from reservations where id = ${id}`;
        return row?.status === "held";
      },
      20_000,
    );
    expect(await balance(api.sql, "PEND-1", "DC1", "reserved")).toBe(2);
  });

  it("refuses to commit, fulfil or release a reservation still being decided: 409 reservation_pending", async () => {
    // Claimed by another process for a while yet: the sweeper leaves it alone.
    const id = `r_${"b".repeat(32)}`;
    await api.sql`insert into reservations (id, principal, idempotency_key, request_hash, status, ttl_seconds, claimed_until)
                  values (${id}, 'reserver', 'still-deciding', 'x', 'pending', 600, now() + interval '10 minutes')`;
    for (const [method, url] of [
      ["POST", `/v1/reservations/${id}/commit`],
      ["POST", `/v1/reservations/${id}/fulfill`],
      ["DELETE", `/v1/reservations/${id}`],
    ] as const) {
      const r = await api.call({ method, url, as: "reserver" });
      expect(r.statusCode, `${method} ${url}`).toBe(409);
      expect(r.headers["content-type"]).toMatch(/^application\/problem\+json/);
      expect(r.json()).toEqual({
        type: "/problems/reservation-pending",
        title: "The reservation is pending",
        status: 409,
        detail: `reservation ${id} is still being decided`,
        instance: url,
        code: "reservation_pending",
      });
    }
    const [row] = await api.sql<Array<{ status: string }>>`select status from reservations where id = ${id}`;
    expect(row?.status).toBe("pending");
  });
});
