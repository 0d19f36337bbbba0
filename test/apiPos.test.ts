import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { testContext, type TestContext } from "./support/context.ts";
import { eventually } from "./support/tally.ts";
import { balance, deadLetters, defineItems, settle, startApi, type ApiFixture } from "./apiSupport.ts";

let ctx: TestContext;
let api: ApiFixture;

beforeAll(async () => {
  ctx = await testContext();
  api = await startApi(ctx);
  await defineItems(api.sql, [
    {
      sku: "SKU-A",
      kind: "stock",
      baseUnit: "EA",
      units: { CASE: 12 },
      identifiers: [
        { system: "barcode", id: "4000000000017" },
        { system: "barcode", id: "4000000000024", uom: "CASE" },
      ],
    },
    { sku: "SKU-B", kind: "stock", baseUnit: "EA", identifiers: [{ system: "barcode", id: "4000000000031" }] },
    { sku: "CHEESE", kind: "stock", baseUnit: "g", units: { kg: 1000 }, identifiers: [{ system: "plu", id: "2101" }] },
    { sku: "GIFT", kind: "non_inventory", baseUnit: "EA", identifiers: [{ system: "barcode", id: "999" }] },
    {
      sku: "KIT",
      kind: "bundle",
      baseUnit: "EA",
      components: [
        { sku: "SKU-A", qty: 2 },
        { sku: "SKU-B", qty: 1 },
      ],
      identifiers: [{ system: "barcode", id: "777" }],
    },
  ]);
  // The app loaded its crosswalk before the items existed: POS lines find them by refresh on miss.
});
afterAll(async () => {
  await api?.close();
});

const T0 = "2026-11-26T10:00:00Z";
const txn = (id: string, lines: ReadonlyArray<Record<string, unknown>>, extra: Record<string, unknown> = {}) => ({
  store: "S01",
  terminal: "T1",
  id,
  occurredAt: T0,
  lines,
  ...extra,
});
const post = (body: unknown, as: "pos" | "posS01" = "pos") =>
  api.call({
    method: "POST",
    url: "/v1/pos/transactions",
    as,
    headers: { "content-type": "application/json" },
    payload: typeof body === "string" ? body : JSON.stringify(body),
  });

async function ledgerCount(): Promise<number> {
  const [r] = await api.sql<Array<{ n: number }>>`select count(*)::int as n from ledger_entries`;
  return r!.n;
}
async function commandMessages(): Promise<number> {
  return (await api.h.nats.jsm.streams.info(api.h.topology.commandsStream)).state.messages;
}

describe("POST /v1/pos/transactions", () => {
  it("maps barcodes, case barcodes, PLU weights, returns, voids, bundles and non-inventory lines to commands", async () => {
    const r = await post({
      transactions: [
        txn("1001", [
          { line: 1, type: "sale", barcode: "4000000000017", qty: 3 },
          { line: 2, type: "sale", barcode: "4000000000024", qty: 1 }, // a case: 12 EA
          { line: 3, type: "sale", plu: "2101", weight: { value: "1.25", unit: "kg" } }, // 1250 g
          { line: 4, type: "sale", barcode: "999", qty: 1 }, // gift card: counted, skipped
          { line: 5, type: "sale", barcode: "777", qty: 2 }, // kit: 4 × SKU-A, 2 × SKU-B
          { line: 6, type: "sale", sku: "SKU-B", qty: 5 },
          { line: 7, type: "void", voids: 6 }, // cancels line 6 whole
          { line: 8, type: "void", voids: 1, qty: 1 }, // 3 → 2
        ]),
        txn("1002", [
          { type: "return", barcode: "4000000000017", qty: 1, restockable: true },
          { type: "return", barcode: "4000000000031", qty: 1, restockable: false },
        ]),
      ],
    });
    expect(r.statusCode).toBe(200);
    const body = r.json();
    expect(body).toMatchObject({ accepted: 2, rejected: 0 });
    expect(body.results[0]).toEqual({
      index: 0,
      status: "accepted",
      store: "S01",
      terminal: "T1",
      id: "1001",
      lines: [
        { line: 1, commands: ["pos:S01:T1:1001:1"], voided: 1 },
        { line: 2, commands: ["pos:S01:T1:1001:2"] },
        { line: 3, commands: ["pos:S01:T1:1001:3"] },
        { line: 4, commands: [], skipped: "non_inventory" },
        { line: 5, commands: ["pos:S01:T1:1001:5#SKU-A", "pos:S01:T1:1001:5#SKU-B"] },
        { line: 6, commands: [], voided: 5, skipped: "voided" },
      ],
    });
    const ids = [...body.results[0].lines, ...body.results[1].lines].flatMap((l: { commands: string[] }) => l.commands);
    await settle(api.h, ids);
    expect(await balance(api.sql, "SKU-A", "S01")).toBe(-(2 + 12 + 4) + 1);
    expect(await balance(api.sql, "SKU-B", "S01")).toBe(-2);
    expect(await balance(api.sql, "SKU-B", "S01", "damaged")).toBe(1);
    expect(await balance(api.sql, "CHEESE", "S01")).toBe(-1250);
    const [sale] = await api.sql<Array<{ source_system: string; source_ref: string; occurred_at: Date }>>`
      select source_system, source_ref, occurred_at from ledger_entries where command_id = 'pos:S01:T1:1001:3'`;
    expect(sale).toMatchObject({ source_system: "pos", source_ref: "S01:T1:1001", occurred_at: new Date(T0) });
  });

  it("answers a resend with the same result and publishes nothing new", async () => {
    const batch = { transactions: [txn("2001", [{ type: "sale", barcode: "4000000000017", qty: 1 }])] };
    const first = await post(batch);
    expect(first.statusCode).toBe(200);
    await settle(api.h, ["pos:S01:T1:2001:1"]);
    const messages = await commandMessages();
    const entries = await ledgerCount();
    const again = await post(batch);
    expect(again.statusCode).toBe(200);
    expect(again.json()).toEqual(first.json());
    // Inside one batch too, and with keys in another order.
    const reordered = {
      transactions: [{ lines: batch.transactions[0]!.lines, occurredAt: T0, id: "2001", terminal: "T1", store: "S01" }, batch.transactions[0]],
    };
    const twice = await post(reordered);
    expect(twice.json().results.map((r: { status: string }) => r.status)).toEqual(["accepted", "accepted"]);
    await new Promise((r) => setTimeout(r, 300));
    expect(await commandMessages()).toBe(messages);
    expect(await ledgerCount()).toBe(entries);
  });

  it("rejects the same transaction id with other content (idempotency_conflict), dead-lettered", async () => {
    await post({ transactions: [txn("3001", [{ type: "sale", barcode: "4000000000017", qty: 1 }])] });
    const r = await post({ transactions: [txn("3001", [{ type: "sale", barcode: "4000000000017", qty: 7 }])] });
    expect(r.statusCode).toBe(409);
    expect(r.json().code).toBe("idempotency_conflict");
    expect(r.json().results[0]).toMatchObject({ status: "rejected", reason: "idempotency_conflict", errors: [{ path: "transactions[0].id" }] });
    const letters = await deadLetters(api.h, "pos");
    expect(letters.some((l) => l.context.reason === "idempotency_conflict" && (l.payload as { id: string }).id === "3001")).toBe(true);
  });

  it("rejects a bad transaction in a partial batch naming each bad field; nothing of it reaches the ledger; it is dead-lettered", async () => {
    const bad = txn("4002", [
      { type: "sale", barcode: "4000000000017", qty: 1 },
      { type: "sale", barcode: "4000000000017", qty: 0 },
      { type: "refund", sku: "SKU-A", qty: 1 },
      { type: "sale", plu: "2101", weight: { value: "1.2345", unit: "kg" } },
    ]);
    const r = await post({
      transactions: [txn("4001", [{ type: "sale", sku: "SKU-A", qty: 1 }]), bad, txn("4003", [], { terminal: "T:1", occurredAt: "yesterday" })],
    });
    expect(r.statusCode).toBe(200);
    const body = r.json();
    expect(body).toMatchObject({ accepted: 1, rejected: 2 });
    expect(body.results[1]).toMatchObject({ index: 1, status: "rejected", store: "S01", terminal: "T1", id: "4002", reason: "invalid_transaction" });
    const paths = body.results[1].errors.map((e: { path: string }) => e.path);
    expect(paths).toEqual(expect.arrayContaining(["transactions[1].lines[1].qty", "transactions[1].lines[2].type"]));
    expect(body.results[1].errors.find((e: { path: string }) => e.path === "transactions[1].lines[1].qty").message).toMatch(/expected a whole count/);
    expect(body.results[2].errors.map((e: { path: string }) => e.path)).toEqual(
      expect.arrayContaining(["transactions[2].terminal", "transactions[2].occurredAt"]),
    );
    // The weight error is found once the structure is right:
    const weight = await post({ transactions: [txn("4004", [{ type: "sale", plu: "2101", weight: { value: "1.2345", unit: "kg" } }])] });
    expect(weight.statusCode).toBe(400);
    expect(weight.json().results[0].errors).toEqual([
      { path: "transactions[0].lines[0].weight.value", message: expect.stringMatching(/not a whole number of g/) },
    ]);
    await settle(api.h, ["pos:S01:T1:4001:1"]);
    const [{ n }] = await api.sql<
      [{ n: number }]
    >`select count(*)::int as n from command_outcomes where command_id like 'pos:S01:T1:4002:%' or command_id like 'pos:S01:T1:4004:%'`;
    expect(n).toBe(0);
    const letters = await deadLetters(api.h, "pos");
    const letter = letters.find((l) => (l.payload as { id?: string }).id === "4002")!;
    expect(letter.payload).toEqual(bad);
    expect(letter.reason).toContain("transactions[1].lines[1].qty");
    expect(letter.context).toMatchObject({ via: "http", by: "pos", transaction: "S01:T1:4002" });
  });

  it("answers 400 when every transaction is invalid, and for bodies that are not batches or not JSON (all dead-lettered)", async () => {
    const all = await post({ transactions: [txn("5001", [{ type: "sale", qty: 1 }])] });
    expect(all.statusCode).toBe(400);
    expect(all.json()).toMatchObject({ code: "invalid_transactions", accepted: 0, rejected: 1 });
    expect(all.json().results[0].errors[0]).toMatchObject({ path: "transactions[0].lines[0]", message: "expected exactly one of barcode, plu, sku" });
    const notJson = await post("{not json");
    expect(notJson.statusCode).toBe(400);
    expect(notJson.json()).toMatchObject({ code: "invalid_request" });
    const notBatch = await post({ transactions: "all of them" });
    expect(notBatch.statusCode).toBe(400);
    expect(notBatch.json().errors).toEqual([{ path: "body.transactions", detail: "expected an array of transactions" }]);
    const letters = await deadLetters(api.h, "pos");
    expect(letters.some((l) => l.payload === "{not json")).toBe(true);
    expect(letters.some((l) => (l.payload as { transactions?: unknown }).transactions === "all of them")).toBe(true);
  });

  it("refuses a date-time Postgres cannot store (year 0) with 400 naming occurredAt; nothing is published", async () => {
    const before = await commandMessages();
    const r = await post({ transactions: [txn("4101", [{ type: "sale", sku: "SKU-A", qty: 1 }], { occurredAt: "0000-01-01T00:00:00Z" })] });
    expect(r.statusCode).toBe(400);
    expect(r.json().results[0].errors).toEqual([
      {
        path: "transactions[0].occurredAt",
        message: 'expected a date-time from 1900-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z, got "0000-01-01T00:00:00Z"',
      },
    ]);
    expect(await commandMessages()).toBe(before);
  });

  it("rejects an unknown barcode (unknown_item); once the item exists, replaying the dead letter applies it", async () => {
    const r = await post({ transactions: [txn("6001", [{ type: "sale", barcode: "4000000000099", qty: 2 }])] });
    expect(r.statusCode).toBe(400);
    expect(r.json().results[0]).toMatchObject({ reason: "unknown_item", errors: [{ path: "transactions[0].lines[0].barcode" }] });
    const letter = (await deadLetters(api.h, "pos")).find((l) => (l.payload as { id?: string }).id === "6001")!;
    const early = await api.call({ method: "POST", url: `/v1/dlq/${letter.seq}/replay`, as: "admin" });
    expect(early.statusCode).toBe(409);
    expect(early.json()).toMatchObject({ code: "replay_failed" });
    await defineItems(api.sql, [{ sku: "SKU-N", kind: "stock", baseUnit: "EA", identifiers: [{ system: "barcode", id: "4000000000099" }] }]);
    const replay = await api.call({ method: "POST", url: `/v1/dlq/${letter.seq}/replay`, as: "admin" });
    expect(replay.statusCode).toBe(200);
    expect(replay.json()).toEqual({ id: letter.seq, ok: true, commands: 1 });
    await settle(api.h, ["pos:S01:T1:6001:1"]);
    expect(await balance(api.sql, "SKU-N", "S01")).toBe(-2);
    expect((await deadLetters(api.h, "pos")).some((l) => l.seq === letter.seq)).toBe(false);
    // The terminal's resend now gets the replay's result.
    const resend = await post({ transactions: [txn("6001", [{ type: "sale", barcode: "4000000000099", qty: 2 }])] });
    expect(resend.statusCode).toBe(200);
    expect(resend.json().results[0]).toMatchObject({ status: "accepted", lines: [{ line: 1, commands: ["pos:S01:T1:6001:1"] }] });
  });

  it("answers 403 when a channel token posts for a store outside its channel", async () => {
    const r = await post({ transactions: [txn("7001", [{ type: "sale", sku: "SKU-A", qty: 1 }], { store: "S02" })] }, "posS01");
    expect(r.statusCode).toBe(403);
    const ok = await post({ transactions: [txn("7002", [{ type: "sale", sku: "SKU-A", qty: 1 }])] }, "posS01");
    expect(ok.statusCode).toBe(200);
  });

  it("refuses a store the config does not know, even to a token without a channel (400 naming store), dead-lettered, nothing written", async () => {
    const r = await post({ transactions: [txn("9901", [{ type: "sale", barcode: "4000000000017", qty: 1 }], { store: "S99" })] });
    expect(r.statusCode).toBe(400);
    expect(r.json().results[0]).toMatchObject({
      status: "rejected",
      reason: "unknown_store",
      errors: [{ path: "transactions[0].store", message: expect.stringContaining("S99") }],
    });
    const nats = await api.h.nats.nc.request(
      `tally.${ctx.env}.pos.S99`,
      JSON.stringify(txn("9902", [{ type: "sale", barcode: "4000000000017", qty: 1 }], { store: "S99" })),
      { timeout: 10_000 },
    );
    expect(nats.json()).toMatchObject({
      accepted: 0,
      results: [{ status: "rejected", reason: "unknown_store", errors: [{ path: "transactions[0].store" }] }],
    });
    // A known store without a channel token still posts (DC1 is a location of channel web).
    const dc = await post({ transactions: [txn("9903", [{ type: "sale", barcode: "4000000000017", qty: 1 }], { store: "DC1" })] });
    expect(dc.statusCode).toBe(200);
    await settle(api.h, ["pos:DC1:T1:9903:1"]);
    // Counted per command: other tests' commands in this file may still be landing meanwhile.
    const [{ dcEntries }] = await api.sql<
      [{ dcEntries: number }]
    >`select count(*)::int as "dcEntries" from ledger_entries where command_id = 'pos:DC1:T1:9903:1'`;
    expect(dcEntries).toBe(1);
    const [{ n }] = await api.sql<[{ n: number }]>`select count(*)::int as n from ledger_entries where location = 'S99'`;
    expect(n).toBe(0);
    await eventually("both to be dead-lettered", async () => {
      const letters = await deadLetters(api.h, "pos");
      return ["9901", "9902"].every((id) => letters.some((l) => l.context.reason === "unknown_store" && (l.payload as { id?: string }).id === id));
    });
  });

  it("answers 415 for a body that is not JSON by content type", async () => {
    const r = await api.call({
      method: "POST",
      url: "/v1/pos/transactions",
      as: "pos",
      headers: { "content-type": "application/xml" },
      payload: "<txn/>",
    });
    expect(r.statusCode).toBe(415);
  });
});

describe("POS over NATS (tally.<env>.pos.<store>)", () => {
  it("answers a request with the same result as HTTP, with the same idempotency and dead letters", async () => {
    const subject = `tally.${ctx.env}.pos.S01`;
    const t = txn("8001", [{ type: "sale", barcode: "4000000000031", qty: 2 }]);
    const reply = await api.h.nats.nc.request(subject, JSON.stringify({ transactions: [t] }), { timeout: 10_000 });
    const body = reply.json<{ accepted: number; results: Array<{ status: string; lines: unknown }> }>();
    expect(body).toMatchObject({ accepted: 1, results: [{ status: "accepted", lines: [{ line: 1, commands: ["pos:S01:T1:8001:1"] }] }] });
    // A single transaction (not a batch) is accepted over NATS; a resend over HTTP gets the same result.
    const single = await api.h.nats.nc.request(subject, JSON.stringify(t), { timeout: 10_000 });
    expect(single.json()).toEqual(body);
    const http = await post({ transactions: [t] });
    expect(http.json()).toEqual(body);
    // The subject names the store.
    const wrong = await api.h.nats.nc.request(`tally.${ctx.env}.pos.S02`, JSON.stringify(t), { timeout: 10_000 });
    expect(wrong.json()).toMatchObject({ accepted: 0, results: [{ status: "rejected", errors: [{ path: "transactions[0].store" }] }] });
    const garbage = await api.h.nats.nc.request(subject, "}{", { timeout: 10_000 });
    expect(garbage.json()).toMatchObject({ error: "invalid_request" });
    await settle(api.h, ["pos:S01:T1:8001:1"]);
    expect(await balance(api.sql, "SKU-B", "S01")).toBe(-4);
    await eventually("the NATS rejections to be dead-lettered", async () => {
      const letters = await deadLetters(api.h, "pos");
      return (
        letters.some((l) => l.context.via === "nats" && l.payload === "}{") &&
        letters.some(
          (l) => l.context.via === "nats" && (l.payload as { store?: string }).store === "S01" && l.context.by === `tally.${ctx.env}.pos.S02`,
        )
      );
    });
  });
});
