/**
 * The financial side end to end, as finance sees it: receipts at different costs, priced POS sales
 * (one selling a gift card), a POS return, a count, a transfer, a damaged return and a sale paid by
 * the gift card go through the real pipeline (HTTP POS ingest, NATS, the workers, the GL poster).
 * Every journal balances; the trial balance from `tally gl trial-balance` equals the hand computation
 * below, account by account; the inventory and damaged accounts per cost center equal the ledger's
 * stock value per location, which is on hand × its average cost.
 */
import type { FastifyInstance } from "fastify";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodeTallyConfig } from "../src/platform/configFile.ts";
import { auth, defineItems, startApi, type ApiFixture } from "./apiSupport.ts";
import { dropTestDatabase, testContext, type TestContext } from "./support/context.ts";
import { commandMaker, eventually, publishAndSettle, runTally, tallyEnv, type Harness } from "./support/tally.ts";

let ctx: TestContext;
let h: Harness;
let app: FastifyInstance;
let api: ApiFixture;

const CONFIG = decodeTallyConfig({
  channels: { web: { locations: ["DC1", "S01"], buffer: 0 }, store_s01: { locations: ["S01"], buffer: 0 } },
  finance: { currency: "EUR", costCenters: { DC1: "CC-DC1" } },
});

beforeAll(async () => {
  ctx = await testContext();
  api = await startApi(ctx, {}, ["worker", "relay"], {}, CONFIG);
  ({ h, app } = api);
  await defineItems(h.sql, [{ sku: "F-A", kind: "stock", baseUnit: "EA", identifiers: [{ system: "barcode", id: "4100000000998" }] }]);
}, 60_000);

afterAll(async () => {
  await api?.close();
  if (ctx) await dropTestDatabase(ctx);
});

const bucketQty = async (location: string, bucket: string): Promise<number> => {
  const [row] = await h.sql<
    Array<{ qty: string }>
  >`select qty::text from balances where sku = 'F-A' and location = ${location} and bucket = ${bucket}`;
  return Number(row?.qty ?? 0);
};

/** Posts one POS transaction at S01 (every amount in cents) and waits until its stock movement is applied. */
async function pos(id: string, fields: Record<string, unknown>, applied: { bucket: string; qty: number }): Promise<void> {
  const res = await app.inject({
    method: "POST",
    url: "/v1/pos/transactions",
    headers: { ...auth("pos"), "content-type": "application/json" },
    payload: JSON.stringify({ transactions: [{ store: "S01", terminal: "T1", id, occurredAt: "2026-11-20T10:00:00Z", currency: "EUR", ...fields }] }),
  });
  expect(res.statusCode, res.body).toBeLessThan(300);
  await eventually(`POS ${id} to be applied`, async () => (await bucketQty("S01", applied.bucket)) === applied.qty, 30_000);
}

const line = (n: number, type: "sale" | "return", qty: number, tax: number, extra: Record<string, unknown> = {}) => ({
  line: n,
  type,
  sku: "F-A",
  qty,
  unitPrice: 250,
  tax,
  ...extra,
});

/** debit − credit per account, from the CLI finance runs. */
async function trialBalance(): Promise<Record<string, number>> {
  const out = await runTally(["gl", "trial-balance", "--at", "2026-11-30", "--format", "json"], tallyEnv(ctx));
  expect(out.code, out.output).toBe(0);
  const tb = JSON.parse(out.stdout) as {
    accounts: Array<{ account: string; debit: number; credit: number; balance: number }>;
    debit: number;
    credit: number;
  };
  expect(tb.debit).toBe(tb.credit);
  return Object.fromEntries(tb.accounts.map((a) => [a.account, a.balance]));
}

describe("finance scenario: valuation, POS money, gift cards and the GL", () => {
  const make = commandMaker("fin");
  beforeAll(async () => {
    // Receipts at different costs: S01 10 × 1.00 + 10 × 1.30 = 23.00 (average 1.15); DC1 10 × 0.90.
    await publishAndSettle(h, [
      make("receive", "F-A", { location: "S01", qty: 10, unitCost: 100, currency: "EUR" }),
      make("receive", "F-A", { location: "S01", qty: 10, unitCost: 130, currency: "EUR" }),
      make("receive", "F-A", { location: "DC1", qty: 10, unitCost: 90, currency: "EUR" }),
    ]);
    // A sale of 4 at 2.50 + 19% tax by card, and a gift card of 50.00 sold for cash. COGS 4 × 1.15 = 4.60: S01 16 = 18.40.
    await pos(
      "F1",
      {
        lines: [line(1, "sale", 4, 190)],
        giftCards: [{ id: "GC-1", amount: 5000 }],
        tenders: [
          { type: "card", amount: 1190 },
          { type: "cash", amount: 5000 },
        ],
      },
      { bucket: "on_hand", qty: 16 },
    );
    // A return of 1 to stock, refunded to the card: back at the average 1.15: S01 17 = 19.55.
    await pos("F2", { lines: [line(1, "return", 1, 48)], tenders: [{ type: "card", amount: -298 }] }, { bucket: "on_hand", qty: 17 });
    // A count finds 15: −2 at 19.55 / 17 → 2.30: S01 15 = 17.25.
    await publishAndSettle(h, [make("count", "F-A", { location: "S01", qty: 15, reason: "cycle_count" })]);
    // A transfer of 4 from DC1 at its cost 0.90: DC1 6 = 5.40; S01 19 = 20.85.
    await publishAndSettle(h, [
      make("transfer_out", "F-A", { location: "DC1", to: "S01", qty: 4, transferId: "FT1" }),
      make("transfer_in", "F-A", { location: "S01", from: "DC1", qty: 4, transferId: "FT1" }),
    ]);
    // A damaged return, refunded in cash: 1 into damaged at S01's cost 20.85 / 19 → 1.10.
    await pos(
      "F3",
      { lines: [line(1, "return", 1, 48, { restockable: false })], tenders: [{ type: "cash", amount: -298 }] },
      { bucket: "damaged", qty: 1 },
    );
    // A sale of 2 paid with the gift card: COGS round(2 × 20.85 / 19) = 2.19: S01 17 = 18.66.
    await pos(
      "F4",
      { lines: [line(1, "sale", 2, 95)], tenders: [{ type: "gift_card", amount: 595, giftCardId: "GC-1" }] },
      { bucket: "on_hand", qty: 17 },
    );
    // The GL poster (worker role) catches up with the ledger.
    await eventually(
      "every valued entry to be on a journal line",
      async () => {
        const [{ missing }] = await h.sql<[{ missing: number }]>`
          select count(*)::int as missing from ledger_entries e
           where e.sku = 'F-A' and e.bucket <> 'reserved' and e.value <> 0
             and not exists (select from gl_lines l join gl_journals j using (journal_id) where j.command_id = e.command_id and l.leg = e.leg)`;
        return missing === 0;
      },
      60_000,
    );
  }, 240_000);

  it("values the movements as computed by hand (the premise)", async () => {
    const rows = await h.sql<Array<{ location: string; bucket: string; qty: string; value: string }>>`
      select location, bucket, qty::text, value::text from balances where sku = 'F-A' and bucket <> 'reserved' and qty <> 0 order by location, bucket`;
    expect(rows.map((r) => [r.location, r.bucket, Number(r.qty), Number(r.value)])).toEqual([
      ["DC1", "on_hand", 6, 540],
      ["S01", "damaged", 1, 110],
      ["S01", "on_hand", 17, 1866],
    ]);
  });

  it("every journal balances, and each has lines", async () => {
    const journals = await h.sql<Array<{ journal_id: string; debit: string; credit: string }>>`
      select journal_id, sum(debit)::text as debit, sum(credit)::text as credit from gl_lines group by journal_id`;
    // 3 receipts, 2 sales, the return, the count, 2 transfer legs, the damaged return: 10 inventory; 4 POS money journals.
    expect(journals).toHaveLength(14);
    for (const j of journals) expect(j.debit, j.journal_id).toBe(j.credit);
  });

  it("the trial balance (tally gl trial-balance) equals the hand computation, account by account", async () => {
    expect(await trialBalance()).toEqual({
      "1010": 1190 + 5000 - 298 - 298, // card and cash in, two refunds out
      "1400": 1000 + 1300 + 900 - 460 + 115 - 230 - 360 + 360 - 219, // = 2406 = S01 1866 + DC1 540
      "1410": 360 - 360, // shipped and received
      "1450": 110, // the damaged return
      "2100": -(1000 + 1300 + 900), // goods received not invoiced
      "2300": -190 + 48 + 48 - 95, // tax on sales, less the returns'
      "2400": -5000 + 595, // the gift card sold, less what it paid
      "4000": -1000 + 250 + 250 - 500, // revenue: two sales less two returns
      "5000": 460 - 115 - 110 + 219, // cost of goods sold less what came back
      "5100": 230, // the count's shrinkage
    });
  });

  it("the stock accounts per cost center equal the stock value per location, which is on hand × average cost", async () => {
    const gl = await h.sql<Array<{ account: string; cost_center: string; balance: string }>>`
      select account, cost_center, (sum(debit) - sum(credit))::text as balance from gl_lines
       where account in ('1400', '1450') group by account, cost_center order by account, cost_center`;
    expect(gl.map((r) => [r.account, r.cost_center, Number(r.balance)])).toEqual([
      ["1400", "CC-DC1", 540],
      ["1400", "S01", 1866],
      ["1450", "S01", 110],
    ]);
    const stock = await h.sql<Array<{ location: string; qty: string; value: string; last: string }>>`
      select location, qty::text, value::text, last_unit_cost::text as last from balances where sku = 'F-A' and bucket = 'on_hand' order by location`;
    for (const s of stock) {
      // The value is exact; the average cost is value / on hand (rounded to a cent when shown).
      expect(Math.abs(Number(s.qty) * Number(s.last) - Number(s.value)), s.location).toBeLessThanOrEqual(Number(s.qty) / 2);
    }
    expect(stock.map((s) => [s.location, Number(s.value)])).toEqual([
      ["DC1", 6 * 90],
      ["S01", 1866],
    ]);
  });
});
