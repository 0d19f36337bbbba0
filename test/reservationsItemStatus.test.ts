import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodeCommand, type Command } from "../src/contract/command.ts";
import type { TallyConfig } from "../src/platform/configFile.ts";
import { publishCommands } from "../src/wire/publisher.ts";
import { balance, defineItems, settle, startApi, type ApiFixture, type TokenName } from "./apiSupport.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { TEST_CHANNELS } from "./support/tally.ts";

/**
 * A hold follows the status rule availability follows (`withheldBy`): a blocked item is refused in
 * every channel, a discontinued one in every channel that does not sell remaining stock; refused
 * whole, before anything is written or published. Store S01 sells remaining stock here, the web does not.
 */
let ctx: TestContext;
let api: ApiFixture;
const config: TallyConfig = {
  ...TEST_CHANNELS,
  channels: { ...TEST_CHANNELS.channels, store_s01: { ...TEST_CHANNELS.channels.store_s01!, sellsDiscontinued: true } },
};

beforeAll(async () => {
  ctx = await testContext();
  api = await startApi(ctx, { sweepIntervalMs: 200 }, ["worker", "relay"], {}, config);
  await defineItems(api.sql, [
    { sku: "ST-1", kind: "stock", baseUnit: "EA", identifiers: [] },
    { sku: "ST-2", kind: "stock", baseUnit: "EA", identifiers: [] },
    { sku: "ST-P1", kind: "stock", baseUnit: "EA", identifiers: [] },
    { sku: "ST-P2", kind: "stock", baseUnit: "EA", identifiers: [] },
    {
      sku: "ST-KIT",
      kind: "bundle",
      baseUnit: "EA",
      components: [
        { sku: "ST-P1", qty: 1 },
        { sku: "ST-P2", qty: 1 },
      ],
      identifiers: [],
    },
  ]);
  for (const sku of ["ST-1", "ST-2", "ST-P1", "ST-P2"]) await receive(sku, "S01", 20);
});
afterAll(async () => {
  await api?.close();
});

let n = 0;
async function receive(sku: string, location: string, qty: number): Promise<void> {
  const d = decodeCommand({
    id: `st:${++n}`,
    type: "receive",
    sku,
    location,
    qty,
    source: { system: "erp", ref: `st${n}` },
    occurredAt: "2026-11-26T10:00:00Z",
  });
  if (d._tag === "Left") throw d.left;
  const c: Command = d.right;
  await publishCommands(api.h.nats.js, api.h.topology, [c]);
  await settle(api.h, [c.id]);
}

let keys = 0;
const reserve = (body: Record<string, unknown>, as: TokenName = "reserver", key = `st-k${++keys}`) =>
  api.call({
    method: "POST",
    url: "/v1/reservations",
    as,
    headers: { "content-type": "application/json", "idempotency-key": key },
    payload: JSON.stringify(body),
  });

const setStatus = (sku: string, status: string) => api.sql`update items set status = ${status} where sku = ${sku}`;
const commandCount = async () => (await api.h.nats.jsm.streams.info(api.h.topology.commandsStream)).state.messages;
const reservationRows = async (skus: ReadonlyArray<string>) => {
  const [r] = await api.sql<[{ n: number }]>`select count(*)::int as n from reservation_lines where sku = any(${api.sql.array([...skus])}::text[])`;
  return r.n;
};
const ledgerEntries = async (skus: ReadonlyArray<string>) => {
  const [r] = await api.sql<[{ n: number }]>`select count(*)::int as n from ledger_entries where sku = any(${api.sql.array([...skus])}::text[])`;
  return r.n;
};

/** Refused as item_withheld, and nothing published, recorded or held. */
async function expectWithheld(
  body: Record<string, unknown>,
  as: TokenName,
  expected: { path: string; sku: string; reason: string; channel: string | null },
  skus: ReadonlyArray<string>,
) {
  const reserved = () => Promise.all(skus.map((sku) => balance(api.sql, sku, "S01", "reserved")));
  const [commands, rows, entries, held] = await Promise.all([commandCount(), reservationRows(skus), ledgerEntries(skus), reserved()]);
  const r = await reserve(body, as);
  expect(r.statusCode, r.body).toBe(409);
  expect(r.headers["content-type"]).toMatch(/^application\/problem\+json/);
  expect(r.json()).toMatchObject({
    type: "/problems/item-withheld",
    status: 409,
    code: "item_withheld",
    channel: expected.channel,
    reason: expected.reason,
    detail: expect.stringContaining(`${expected.path}: ${expected.sku} is ${expected.reason}`),
    errors: [{ path: expected.path }],
    withheld: [{ path: expected.path, sku: expected.sku, reason: expected.reason }],
  });
  expect(await commandCount()).toBe(commands);
  expect(await reservationRows(skus)).toBe(rows);
  expect(await ledgerEntries(skus)).toBe(entries);
  expect(await reserved()).toEqual(held);
}

describe("a hold on an item its channel may not sell", () => {
  it("is refused for every channel when blocked, the whole cart, with nothing published or recorded; held again once active", async () => {
    await setStatus("ST-1", "blocked");
    const cart = {
      lines: [
        { sku: "ST-2", qty: 1 },
        { sku: "ST-1", qty: 1 },
      ],
      location: "S01",
    };
    for (const [as, channel] of [
      ["webReserver", "web"],
      ["storeReserver", "store_s01"],
    ] as const)
      await expectWithheld(cart, as, { path: "body.lines[1].sku", sku: "ST-1", reason: "blocked", channel }, ["ST-1", "ST-2"]);
    // No channel at all (a location hold): blocked is blocked.
    await expectWithheld({ sku: "ST-1", qty: 1, location: "S01" }, "reserver", { path: "body.sku", sku: "ST-1", reason: "blocked", channel: null }, [
      "ST-1",
      "ST-2",
    ]);

    await setStatus("ST-1", "active");
    const ok = await reserve(cart, "webReserver");
    expect(ok.statusCode, ok.body).toBe(201);
    expect(await balance(api.sql, "ST-1", "S01", "reserved")).toBe(1);
    expect(await balance(api.sql, "ST-2", "S01", "reserved")).toBe(1);
  });

  it("is refused when discontinued for a channel that does not sell remaining stock, held for one that does", async () => {
    await setStatus("ST-2", "discontinued");
    const before = await balance(api.sql, "ST-2", "S01", "reserved");
    await expectWithheld(
      { sku: "ST-2", qty: 1, channel: "web" },
      "reserver",
      { path: "body.sku", sku: "ST-2", reason: "discontinued", channel: "web" },
      ["ST-2"],
    );
    const store = await reserve({ sku: "ST-2", qty: 1, channel: "store_s01" });
    expect(store.statusCode, store.body).toBe(201);
    expect(await balance(api.sql, "ST-2", "S01", "reserved")).toBe(before + 1);
    await setStatus("ST-2", "active");
    expect((await reserve({ sku: "ST-2", qty: 1, channel: "web" })).statusCode).toBe(201);
  });

  it("refuses a bundle whose component (or the bundle itself) is withheld, naming the bundle's field", async () => {
    await setStatus("ST-P2", "blocked");
    await expectWithheld(
      { lines: [{ sku: "ST-KIT", qty: 1 }], channel: "store_s01" },
      "reserver",
      { path: "body.lines[0].sku", sku: "ST-P2", reason: "blocked", channel: "store_s01" },
      ["ST-P1", "ST-P2"],
    );
    await setStatus("ST-P2", "active");
    await setStatus("ST-KIT", "discontinued");
    await expectWithheld(
      { sku: "ST-KIT", qty: 1, channel: "web" },
      "reserver",
      { path: "body.sku", sku: "ST-KIT", reason: "discontinued", channel: "web" },
      ["ST-P1", "ST-P2"],
    );
    await setStatus("ST-KIT", "active");
    const ok = await reserve({ sku: "ST-KIT", qty: 1, channel: "web" });
    expect(ok.statusCode, ok.body).toBe(201);
  });

  it("keeps a hold placed before the item was blocked (release, commit and a replay of its key still work)", async () => {
    const first = await reserve({ sku: "ST-P1", qty: 2, location: "S01" }, "reserver", "st-before-block");
    expect(first.statusCode).toBe(201);
    const held = await balance(api.sql, "ST-P1", "S01", "reserved");
    await setStatus("ST-P1", "blocked");
    const replay = await reserve({ sku: "ST-P1", qty: 2, location: "S01" }, "reserver", "st-before-block");
    expect(replay.statusCode).toBe(201);
    expect(replay.json()).toEqual(first.json());
    const { id } = first.json();
    expect((await api.call({ method: "POST", url: `/v1/reservations/${id}/commit`, as: "reserver" })).statusCode).toBe(200);
    expect(await balance(api.sql, "ST-P1", "S01", "reserved")).toBe(held);
    expect((await api.call({ method: "DELETE", url: `/v1/reservations/${id}`, as: "reserver" })).statusCode).toBe(200);
    await settle(api.h, [`res:${id}:1:release`]);
    expect(await balance(api.sql, "ST-P1", "S01", "reserved")).toBe(held - 2);
    await setStatus("ST-P1", "active");
  });
});
