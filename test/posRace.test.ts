import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { payloadHash } from "../src/ingest/posTransaction.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { auth, defineItems, settle, startApi, type ApiFixture } from "./apiSupport.ts";

let ctx: TestContext;
let api: ApiFixture;
let base: string;

beforeAll(async () => {
  ctx = await testContext();
  api = await startApi(ctx);
  await defineItems(api.sql, [
    { sku: "RACE-A", kind: "stock", baseUnit: "EA", identifiers: [{ system: "barcode", id: "5000000000011" }] },
    { sku: "RACE-B", kind: "stock", baseUnit: "EA", identifiers: [{ system: "barcode", id: "5000000000028" }] },
  ]);
  await api.app.listen({ port: 0, host: "127.0.0.1" });
  base = `http://127.0.0.1:${(api.app.server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  await api?.close();
});

const ROUNDS = 20;
/** One transaction id, two contents: every line differs, and the two SKUs live in different partitions' streams of commands. */
const txn = (id: string, qty: number) => ({
  store: "S01",
  terminal: "T9",
  id,
  occurredAt: "2026-11-26T10:00:00Z",
  lines: [
    { line: 1, type: "sale", sku: "RACE-A", qty },
    { line: 2, type: "sale", sku: "RACE-B", qty },
  ],
});
const commandIds = (id: string) => [`pos:S01:T9:${id}:1`, `pos:S01:T9:${id}:2`];

async function httpPost(body: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
  const r = await fetch(`${base}/v1/pos/transactions`, {
    method: "POST",
    headers: { ...auth("pos"), "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  return { status: r.status, json: (await r.json()) as Record<string, unknown> };
}
async function natsPost(body: unknown): Promise<Record<string, unknown>> {
  const m = await api.h.nats.nc.request(api.h.topology.posSubject("S01"), JSON.stringify(body), { timeout: 20_000 });
  return m.json<Record<string, unknown>>();
}

/** The sales the ledger holds for a transaction's two lines: the quantities it took off on hand. */
async function applied(id: string): Promise<Array<number>> {
  await settle(api.h, commandIds(id));
  const rows = await api.sql<Array<{ command_id: string; delta: string }>>`
    select command_id, delta::text from ledger_entries where command_id = any(${commandIds(id)}) and bucket = 'on_hand' order by command_id`;
  return rows.map((r) => -Number(r.delta));
}

describe("two racing posts of one POS transaction", () => {
  it(`over HTTP: other content → exactly one 200 and one 409, and the ledger holds the winner's lines only (${ROUNDS} rounds)`, async () => {
    for (let round = 0; round < ROUNDS; round++) {
      const id = `h${round}`;
      const [one, two] = await Promise.all([httpPost({ transactions: [txn(id, 1)] }), httpPost({ transactions: [txn(id, 2)] })]);
      expect([one.status, two.status].sort(), `round ${round}: ${JSON.stringify([one.json, two.json])}`).toEqual([200, 409]);
      const loser = one.status === 409 ? one : two;
      expect(loser.json).toMatchObject({
        accepted: 0,
        code: "idempotency_conflict",
        results: [{ reason: "idempotency_conflict", errors: [{ path: "transactions[0].id" }] }],
      });
      const winnerQty = one.status === 200 ? 1 : 2;
      expect(await applied(id), `round ${round}`).toEqual([winnerQty, winnerQty]);
    }
  }, 120_000);

  it(`over HTTP: the same content → both 200 with the same answer, applied once (${ROUNDS} rounds)`, async () => {
    for (let round = 0; round < ROUNDS; round++) {
      const id = `s${round}`;
      const [one, two] = await Promise.all([httpPost({ transactions: [txn(id, 3)] }), httpPost({ transactions: [txn(id, 3)] })]);
      expect([one.status, two.status], `round ${round}`).toEqual([200, 200]);
      expect(two.json).toEqual(one.json);
      expect(await applied(id)).toEqual([3, 3]);
      const [{ n }] = await api.sql<[{ n: number }]>`select count(*)::int as n from ledger_entries where command_id = any(${commandIds(id)})`;
      expect(n).toBe(2);
    }
  }, 120_000);

  it(`over the NATS POS subject: other content → one accepted, one idempotency_conflict, the winner's lines only (${ROUNDS} rounds)`, async () => {
    for (let round = 0; round < ROUNDS; round++) {
      const id = `n${round}`;
      const [one, two] = await Promise.all([natsPost(txn(id, 4)), natsPost(txn(id, 5))]);
      expect([one.accepted, two.accepted].sort(), `round ${round}: ${JSON.stringify([one, two])}`).toEqual([0, 1]);
      const loser = one.accepted === 0 ? one : two;
      expect(loser).toMatchObject({ error: "idempotency_conflict", results: [{ reason: "idempotency_conflict" }] });
      const winnerQty = one.accepted === 1 ? 4 : 5;
      expect(await applied(id), `round ${round}`).toEqual([winnerQty, winnerQty]);
    }
  }, 120_000);

  it("a post refused by a conflict over HTTP and one over NATS race alike: one transaction, one content", async () => {
    for (let round = 0; round < 10; round++) {
      const id = `x${round}`;
      const [h, n] = await Promise.all([httpPost({ transactions: [txn(id, 6)] }), natsPost(txn(id, 7))]);
      expect([h.status === 200 ? 1 : 0, n.accepted as number].sort(), `round ${round}`).toEqual([0, 1]);
      const winnerQty = h.status === 200 ? 6 : 7;
      expect(await applied(id)).toEqual([winnerQty, winnerQty]);
    }
  }, 120_000);

  it("a claim left without a result (its post failed before every PubAck) is finished by a resend of the same content, refused to other content", async () => {
    const t = txn("c1", 8);
    await api.sql`insert into pos_transactions (store, terminal, transaction_id, payload_hash, result) values ('S01', 'T9', 'c1', ${payloadHash(t)}, null)`;
    const other = await httpPost({ transactions: [txn("c1", 9)] });
    expect(other.status).toBe(409);
    const same = await httpPost({ transactions: [t] });
    expect(same.status).toBe(200);
    expect(same.json).toMatchObject({ accepted: 1, results: [{ status: "accepted", id: "c1" }] });
    expect(await applied("c1")).toEqual([8, 8]);
    const [row] = await api.sql<[{ result: unknown }]>`select result from pos_transactions where transaction_id = 'c1'`;
    expect(row.result).toMatchObject({ status: "accepted", id: "c1" });
  });
});
