/**
 * POS money: a transaction with prices, tax and tenders posts one balanced money journal (revenue, tax,
 * tender clearing, gift card liability) exactly once with its claim, over HTTP and NATS; a return
 * reverses it; bad amounts are refused naming the field and post nothing; a transaction without prices
 * posts no money journal.
 */
import { readFile } from "node:fs/promises";
import path from "node:path";
import { Ajv } from "ajv";
import addFormats from "ajv-formats";
import type { FastifyInstance, LightMyRequestResponse } from "fastify";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodeTallyConfig } from "../src/platform/configFile.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { ROOT, type Harness } from "./support/tally.ts";
import { auth, defineItems, startApi, type ApiFixture } from "./apiSupport.ts";

let ctx: TestContext;
let h: Harness;
let app: FastifyInstance;
let api: ApiFixture;

/** The books of this test: Berlin business dates, store S01 in cost center CC-S01, default accounts. */
const CONFIG = decodeTallyConfig({
  channels: { web: { locations: ["DC1", "S01"], buffer: 2 }, store_s01: { locations: ["S01"], buffer: 0 } },
  stores: ["S02"],
  finance: { currency: "EUR", timeZone: "Europe/Berlin", costCenters: { S01: "CC-S01" } },
});

beforeAll(async () => {
  ctx = await testContext();
  api = await startApi(ctx, {}, [], {}, CONFIG);
  ({ h, app } = api);
  await defineItems(h.sql, [
    { sku: "M-A", kind: "stock", baseUnit: "EA", units: { CASE: 6 }, identifiers: [{ system: "barcode", id: "4100000000011" }] },
    { sku: "M-B", kind: "stock", baseUnit: "EA", identifiers: [{ system: "barcode", id: "4100000000028" }] },
    { sku: "M-CHEESE", kind: "stock", baseUnit: "g", units: { kg: 1000 }, identifiers: [{ system: "plu", id: "2201" }] },
    { sku: "M-SVC", kind: "non_inventory", baseUnit: "EA", identifiers: [{ system: "barcode", id: "4100000000035" }] },
    {
      sku: "M-KIT",
      kind: "bundle",
      baseUnit: "EA",
      components: [
        { sku: "M-A", qty: 2 },
        { sku: "M-B", qty: 1 },
      ],
      identifiers: [{ system: "barcode", id: "4100000000042" }],
    },
  ]);
}, 60_000);
afterAll(async () => {
  await api?.close();
});

/** Half an hour before midnight UTC on 30 November: already 1 December in Berlin. */
const LATE = "2026-11-30T23:30:00Z";
const txn = (id: string, fields: Record<string, unknown>, store = "S01") => ({
  store,
  terminal: "T1",
  id,
  occurredAt: LATE,
  currency: "EUR",
  ...fields,
});
const post = (...transactions: ReadonlyArray<unknown>): Promise<LightMyRequestResponse> =>
  app.inject({
    method: "POST",
    url: "/v1/pos/transactions",
    headers: { ...auth("pos"), "content-type": "application/json" },
    payload: JSON.stringify({ transactions }),
  });

interface Line {
  line: number;
  account: string;
  cost_center: string;
  debit: string;
  credit: string;
  sku: string | null;
  qty: string | null;
  memo: string | null;
}

async function journal(id: string) {
  const journals = await h.sql<
    Array<{ kind: string; business_date: string; posted_on: string; period: string; currency: string; movement: string; source_ref: string }>
  >`
    select kind, business_date::text, posted_on::text, period, currency, movement, source_system || '/' || source_ref as source_ref
      from gl_journals where journal_id = ${`money:S01:T1:${id}`}`;
  const lines = await h.sql<Array<Line>>`
    select line, account, cost_center, debit::text, credit::text, sku, qty::text, memo
      from gl_lines where journal_id = ${`money:S01:T1:${id}`} order by line`;
  return { journals, lines };
}

/** Lines as `account Dr|Cr amount [sku qty]`, for exact comparison with a hand computation. */
const brief = (lines: ReadonlyArray<Line>) =>
  lines.map((l) => `${l.account} ${l.debit !== "0" ? `Dr ${l.debit}` : `Cr ${l.credit}`}${l.sku ? ` ${l.sku} ${l.qty}` : ""}`);

const moneyJournals = async (id: string): Promise<number> =>
  (await h.sql<Array<{ n: number }>>`select count(*)::int as n from gl_journals where journal_id = ${`money:S01:T1:${id}`}`)[0]!.n;

/** A sale of 3 × M-A less 50, 1.255 kg of cheese at 19.90/kg, 2 × M-B of which 1 is voided; 10.40 cash, 30.00 card. */
const SALE = {
  lines: [
    { line: 1, type: "sale", barcode: "4100000000011", qty: 3, unitPrice: 250, discount: 50, tax: 133 }, // 750 − 50 = 700
    { line: 2, type: "sale", plu: "2201", weight: { value: "1.255", unit: "kg" }, unitPrice: 1990, tax: 175 }, // 2497.45 → 2497
    { line: 3, type: "sale", sku: "M-B", qty: 2, unitPrice: 500, tax: 35 }, // after the void: 1 × 500
    { line: 4, type: "void", sku: "M-B", voids: 3, qty: 1 },
  ],
  tenders: [
    { type: "cash", amount: 1040 },
    { type: "card", amount: 3000 },
  ],
};

describe("a POS transaction with money", () => {
  it("posts one balanced journal with exactly the expected lines, dated in the company's time zone, at the store's cost center", async () => {
    const r = await post(txn("m1", SALE));
    expect(r.statusCode, r.body).toBe(200);
    expect(r.json()).toMatchObject({ accepted: 1, results: [{ status: "accepted", journal: "money:S01:T1:m1" }] });
    const { journals, lines } = await journal("m1");
    expect(journals).toEqual([
      {
        kind: "pos_money",
        business_date: "2026-12-01",
        posted_on: "2026-12-01",
        period: "2026-12",
        currency: "EUR",
        movement: "pos_sale",
        source_ref: "pos/S01:T1:m1",
      },
    ]);
    expect(brief(lines)).toEqual([
      "1010 Dr 1040",
      "1010 Dr 3000",
      "4000 Cr 700 M-A 3",
      "4000 Cr 2497 M-CHEESE 1255",
      "4000 Cr 500 M-B 1",
      "2300 Cr 343",
    ]);
    expect(new Set(lines.map((l) => l.cost_center))).toEqual(new Set(["CC-S01"]));
    expect(lines.map((l) => l.line)).toEqual([1, 2, 3, 4, 5, 6]);
  });

  it("posts it once when the same transaction is posted again, and when several posts race", async () => {
    const again = await post(txn("m1", SALE));
    expect(again.statusCode).toBe(200);
    expect(again.json()).toMatchObject({ results: [{ journal: "money:S01:T1:m1" }] });
    const racing = await Promise.all(Array.from({ length: 6 }, () => post(txn("m2", SALE))));
    expect(racing.map((r) => r.statusCode)).toEqual([200, 200, 200, 200, 200, 200]);
    for (const id of ["m1", "m2"]) {
      expect(await moneyJournals(id)).toBe(1);
      expect((await journal(id)).lines).toHaveLength(6);
    }
  });

  it("over NATS too: one journal, and a resend over HTTP adds nothing", async () => {
    const reply = await h.nats.nc.request(h.topology.posSubject("S01"), JSON.stringify(txn("n1", SALE)), { timeout: 20_000 });
    expect(reply.json<{ accepted: number }>().accepted, reply.string()).toBe(1);
    const copies = await Promise.all([
      h.nats.nc.request(h.topology.posSubject("S01"), JSON.stringify(txn("n1", SALE)), { timeout: 20_000 }),
      post(txn("n1", SALE)),
    ]);
    expect(copies[1].statusCode).toBe(200);
    expect(await moneyJournals("n1")).toBe(1);
    expect(brief((await journal("n1")).lines)).toEqual(brief((await journal("m1")).lines));
  });

  it("a return reverses revenue, tax and tender (a refund is a negative tender)", async () => {
    const r = await post(
      txn("r1", {
        lines: [{ type: "return", barcode: "4100000000011", qty: 1, unitPrice: 250, tax: 44 }],
        tenders: [{ type: "card", amount: -294 }],
      }),
    );
    expect(r.statusCode, r.body).toBe(200);
    const { journals, lines } = await journal("r1");
    expect(journals[0]!.movement).toBe("pos_return");
    expect(brief(lines)).toEqual(["1010 Cr 294", "4000 Dr 250 M-A 1", "2300 Dr 44"]);
  });

  it("a gift card sold raises the liability and its redemption releases it", async () => {
    const liability = async () => {
      const [row] = await h.sql<Array<{ owed: string }>>`
        select coalesce(sum(credit - debit), 0)::text as owed from gl_lines
         where account = '2400' and journal_id in ('money:S01:T1:g1', 'money:S01:T1:g2')`;
      return Number(row!.owed);
    };
    const sold = await post(txn("g1", { lines: [], giftCards: [{ id: "GC-1", amount: 5000 }], tenders: [{ type: "cash", amount: 5000 }] }));
    expect(sold.statusCode, sold.body).toBe(200);
    expect(brief((await journal("g1")).lines)).toEqual(["1010 Dr 5000", "2400 Cr 5000"]);
    expect(await liability()).toBe(5000);
    const redeemed = await post(
      txn("g2", {
        lines: [{ type: "sale", sku: "M-B", qty: 1, unitPrice: 3000, tax: 0 }],
        tenders: [{ type: "gift_card", amount: 3000, giftCardId: "GC-1" }],
      }),
    );
    expect(redeemed.statusCode, redeemed.body).toBe(200);
    expect(brief((await journal("g2")).lines)).toEqual(["2400 Dr 3000", "4000 Cr 3000 M-B 1"]);
    expect((await journal("g2")).lines[0]!.memo).toBe("gift card GC-1 redeemed");
    expect(await liability()).toBe(2000);
  });

  it("an exchange: a bundle and a service sold, an item taken back, one journal with a revenue line each", async () => {
    const r = await post(
      txn("x1", {
        lines: [
          { type: "sale", barcode: "4100000000042", qty: 1, unitPrice: 1500 },
          { type: "return", sku: "M-B", qty: 1, unitPrice: 500 },
          { type: "sale", barcode: "4100000000035", qty: 1, unitPrice: 300 },
        ],
        tenders: [{ type: "card", amount: 1300 }],
      }),
    );
    expect(r.statusCode, r.body).toBe(200);
    const { journals, lines } = await journal("x1");
    expect(journals[0]!.movement).toBe("pos_exchange");
    expect(brief(lines)).toEqual(["1010 Dr 1300", "4000 Cr 1500 M-KIT 1", "4000 Dr 500 M-B 1", "4000 Cr 300 M-SVC 1"]);
  });

  it("dated in a closed month: posts on the first day of the next open one, keeping its business date", async () => {
    await h.sql`select tally_gl_close_period('2026-10', 'test')`;
    const r = await post({ ...txn("c1", SALE), occurredAt: "2026-10-15T09:00:00Z" });
    expect(r.statusCode, r.body).toBe(200);
    expect((await journal("c1")).journals[0]).toMatchObject({ business_date: "2026-10-15", posted_on: "2026-11-01", period: "2026-11" });
  });

  it("the journal is written with the claim: when it cannot be written, the transaction is not claimed, and a resend posts it once", async () => {
    await h.sql.unsafe(`
      create function test_refuse_money() returns trigger language plpgsql as $$
      begin raise exception 'refused by the test'; end $$;
      create trigger test_refuse_money before insert on gl_journals for each row
        when (new.journal_id = 'money:S01:T1:a1') execute function test_refuse_money();`);
    try {
      const failed = await post(txn("a1", SALE));
      expect(failed.statusCode).toBeGreaterThanOrEqual(500);
      const [claims] = await h.sql<Array<{ n: number }>>`select count(*)::int as n from pos_transactions where transaction_id = 'a1'`;
      expect(claims!.n).toBe(0);
    } finally {
      await h.sql.unsafe("drop trigger test_refuse_money on gl_journals; drop function test_refuse_money()");
    }
    const resent = await post(txn("a1", SALE));
    expect(resent.statusCode, resent.body).toBe(200);
    expect(await moneyJournals("a1")).toBe(1);
    expect((await journal("a1")).lines).toHaveLength(6);
  });

  it("without prices only the stock moves: no money journal", async () => {
    const r = await post({ store: "S01", terminal: "T1", id: "p1", occurredAt: LATE, lines: [{ type: "sale", sku: "M-B", qty: 1 }] });
    expect(r.statusCode, r.body).toBe(200);
    expect(r.json<{ results: Array<Record<string, unknown>> }>().results[0]).not.toHaveProperty("journal");
    expect(await moneyJournals("p1")).toBe(0);
  });
});

describe("bad money is refused naming the field, and posts nothing", () => {
  const refused = async (id: string, fields: Record<string, unknown>, store = "S01") => {
    const r = await post(txn(id, fields, store));
    expect(r.statusCode, r.body).toBe(400);
    expect(await moneyJournals(id)).toBe(0);
    const body = r.json<{ results: Array<{ errors: Array<{ path: string; message: string }> }> }>();
    return body.results[0]!.errors;
  };
  const sale = (extra: Record<string, unknown> = {}) => ({ type: "sale", sku: "M-B", qty: 2, unitPrice: 500, ...extra });

  it("a price with a fraction", async () => {
    const errors = await refused("v1", { lines: [sale(), sale({ unitPrice: 2.5 })], tenders: [{ type: "cash", amount: 1005 }] });
    expect(errors).toEqual([{ path: "transactions[0].lines[1].unitPrice", message: expect.stringContaining("a whole number of minor units") }]);
  });

  it("tenders that do not cover the transaction: both sums named", async () => {
    const errors = await refused("v2", { lines: [sale({ discount: 100, tax: 70 })], tenders: [{ type: "cash", amount: 1000 }] });
    expect(errors).toEqual([{ path: "transactions[0].tenders", message: expect.stringMatching(/tenders come to 1000 but the transaction to 970/) }]);
  });

  it("a gift card tender without its card", async () => {
    const errors = await refused("v3", { lines: [sale()], tenders: [{ type: "gift_card", amount: 1000 }] });
    expect(errors).toEqual([{ path: "transactions[0].tenders[0].giftCardId", message: expect.stringContaining("is missing") }]);
  });

  it("another currency than the company's, or none", async () => {
    const usd = await refused("v4", { currency: "USD", lines: [sale()], tenders: [{ type: "cash", amount: 1000 }] });
    expect(usd).toEqual([{ path: "transactions[0].currency", message: expect.stringMatching(/expected EUR .*got "USD"/) }]);
    const none = await refused("v5", { currency: undefined, lines: [sale()], tenders: [{ type: "cash", amount: 1000 }] });
    expect(none).toEqual([{ path: "transactions[0].currency", message: expect.stringContaining("is missing") }]);
  });

  it("a line without its price, a discount above the line's amount, a priced void", async () => {
    const errors = await refused("v6", {
      lines: [sale({ discount: 1001 }), { type: "sale", sku: "M-A", qty: 1 }, { type: "void", sku: "M-B", voids: 1, qty: 1, unitPrice: 5 }],
      tenders: [{ type: "cash", amount: 1 }],
    });
    expect(errors.map((e) => e.path)).toEqual(["transactions[0].lines[1].unitPrice", "transactions[0].lines[2].unitPrice"]);
    const over = await refused("v7", { lines: [sale({ discount: 1001 })], tenders: [{ type: "cash", amount: -1 }] });
    expect(over).toEqual([{ path: "transactions[0].lines[0].discount", message: expect.stringContaining("exceeds the line's amount 1000") }]);
  });

  it("a priced transaction of an unknown store", async () => {
    const r = await post(txn("v8", { lines: [sale()], tenders: [{ type: "cash", amount: 1000 }] }, "S99"));
    expect(r.statusCode).toBe(400);
    const [row] = await h.sql<Array<{ n: number }>>`select count(*)::int as n from gl_journals where journal_id like 'money:S99:%'`;
    expect(row!.n).toBe(0);
  });
});

describe("odd money", () => {
  const ODD: ReadonlyArray<unknown> = [null, -1, 0, 1.5, 2 ** 53, -(2 ** 53), 1e15, "100", "", [], {}, true, "EUR", "eur", 1e-7];
  const FIELDS = ["unitPrice", "discount", "tax"] as const;
  /** Deterministic choices (a linear congruential sequence). */
  let x = 20261130;
  const next = () => (x = (x * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  const pick = <T>(xs: ReadonlyArray<T>): T => xs[Math.floor(next() * xs.length)]!;

  /** The sale with one money field made odd: on a line, a tender, a gift card, or the currency. */
  function oddSale(id: string): Record<string, unknown> {
    const t = structuredClone(txn(id, SALE)) as unknown as { lines: Array<Record<string, unknown>>; tenders: unknown } & Record<string, unknown>;
    const tenders = t.tenders as Array<Record<string, unknown>>;
    const roll = next();
    if (roll < 0.4) t.lines[Math.floor(next() * 3)]![pick(FIELDS)] = pick(ODD);
    else if (roll < 0.6) tenders[Math.floor(next() * 2)]![pick(["amount", "type", "giftCardId"])] = pick(ODD);
    else if (roll < 0.75) t.giftCards = [{ id: pick(["GC-X", ...ODD]), amount: pick(ODD) }];
    else if (roll < 0.85) t.currency = pick(ODD);
    else t.tenders = pick<unknown>([[], null, [{ type: "gift_card", amount: 4040, giftCardId: "GC-2" }], [{ type: "cash", amount: -4040 }]]);
    return t;
  }

  it("never answers 5xx, and a journal exists exactly for the accepted transactions", async () => {
    const outcome = new Map<string, boolean>();
    for (let i = 0; i < 150; i++) {
      const id = `z${i}`;
      const r = await post(oddSale(id));
      expect([200, 400], r.body).toContain(r.statusCode);
      outcome.set(id, r.statusCode === 200);
    }
    expect([...outcome.values()].filter(Boolean).length).toBeGreaterThan(5);
    expect([...outcome.values()].filter((ok) => !ok).length).toBeGreaterThan(75);
    const rows = await h.sql<Array<{ journal_id: string }>>`select journal_id from gl_journals where journal_id like 'money:S01:T1:z%'`;
    const posted = new Set(rows.map((r) => r.journal_id.slice("money:S01:T1:".length)));
    for (const [id, ok] of outcome) expect(posted.has(id), `${id} accepted: ${ok}`).toBe(ok);
  });
});

describe("schemas/nats/pos.json", () => {
  it("describes a priced transaction, alone or in a batch, and refuses a fractional price", async () => {
    const ajv = new Ajv({ allErrors: true, strict: true });
    addFormats.default(ajv);
    const validate = ajv.compile(JSON.parse(await readFile(path.join(ROOT, "schemas/nats/pos.json"), "utf8")));
    const one = txn("s1", SALE);
    expect(validate(one), JSON.stringify(validate.errors)).toBe(true);
    expect(
      validate({ transactions: [one, txn("s2", { lines: [], giftCards: [{ id: "GC-9", amount: 100 }], tenders: [{ type: "card", amount: 100 }] })] }),
    ).toBe(true);
    expect(validate(txn("s3", { ...SALE, lines: [{ type: "sale", sku: "M-B", qty: 1, unitPrice: 2.5 }] }))).toBe(false);
  });
});
