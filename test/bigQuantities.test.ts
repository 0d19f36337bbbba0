import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { canonicalEntry, entryHash, verifyLedger, type HashedEntry } from "../ledger/index.ts";
import { parseInt8 } from "../src/platform/db.ts";
import { publishCommands } from "../src/wire/publisher.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { decodedCommands, eventually, harness, outcomeCounts, runTally, startInProcess, tallyEnv, type Harness } from "./support/tally.ts";

const QTY = 999_999_999_999;
const RECEIPTS = 9_100;
/** 9,100 × 999,999,999,999: past 2^53 (9,007,199,254,740,992), where a double would round it. */
const TOTAL = 9_099_999_999_990_900n;

describe("the canonical form of an entry (what its hash covers)", () => {
  const entry: HashedEntry = {
    commandId: "c-1",
    leg: 1,
    sku: "S",
    location: "DC1",
    bucket: "on_hand",
    delta: 5,
    balanceAfter: -12,
    movement: "receive",
    sourceSystem: "erp",
    sourceRef: 'r "1"',
    occurredAt: new Date("2026-11-26T10:00:00Z"),
    recordedAt: new Date("2026-11-26T10:00:01.5Z"),
    skuSeq: 3,
  };

  it("is unchanged for quantities within 2^53, whether they are numbers or bigints: existing chains still verify", () => {
    const before = JSON.stringify([
      entry.commandId,
      entry.leg,
      entry.sku,
      entry.location,
      entry.bucket,
      entry.delta,
      entry.balanceAfter,
      entry.movement,
      entry.sourceSystem,
      entry.sourceRef,
      entry.occurredAt.toISOString(),
      entry.recordedAt.toISOString(),
      entry.skuSeq,
    ]);
    expect(canonicalEntry(entry)).toBe(before);
    expect(canonicalEntry({ ...entry, delta: 5n, balanceAfter: -12n })).toBe(before);
    expect(entryHash("0".repeat(64), { ...entry, delta: 5n, balanceAfter: -12n })).toBe(entryHash("0".repeat(64), entry));
  });

  it("writes a balance past 2^53 as its exact digits", () => {
    expect(canonicalEntry({ ...entry, balanceAfter: TOTAL })).toContain(`,${TOTAL},`);
    expect(() => canonicalEntry({ ...entry, balanceAfter: 2 ** 60 })).toThrow(RangeError);
  });

  it("reads int8 back exactly: a number within 2^53, a bigint beyond", () => {
    expect(parseInt8("9007199254740991")).toBe(9007199254740991);
    expect(parseInt8("-42")).toBe(-42);
    expect(parseInt8(TOTAL.toString())).toBe(TOTAL);
    expect(parseInt8("9007199254740993")).toBe(9007199254740993n);
  });
});

describe("balances past 2^53", () => {
  let ctx: TestContext;
  let h: Harness;
  let tally: Awaited<ReturnType<typeof startInProcess>>;

  beforeAll(async () => {
    ctx = await testContext();
    h = await harness(ctx);
    tally = await startInProcess(ctx, ["worker", "relay"]);
  });

  afterAll(async () => {
    await tally?.close();
    await h?.close();
  });

  const receipt = (i: number) => ({
    id: `big:${i}`,
    type: "receive",
    sku: "BIG-1",
    location: "DC1",
    qty: QTY,
    source: { system: "erp", ref: `gr-${i}` },
    occurredAt: "2026-11-26T10:00:00Z",
  });

  const balanceText = async () =>
    (await h.sql<[{ qty: string }]>`select qty::text as qty from balances where sku = 'BIG-1' and location = 'DC1' and bucket = 'on_hand'`)[0].qty;

  it("9,100 receipts of 999,999,999,999 sum exactly in every entry and balance; verify passes, and catches a balance off by one", async () => {
    const commands = decodedCommands(Array.from({ length: RECEIPTS }, (_, i) => receipt(i + 1)));
    await publishCommands(h.nats.js, h.topology, commands);
    const ids = commands.map((c) => c.id);
    await eventually("every receipt applied", async () => (await outcomeCounts(h.sql, ids)).distinct === RECEIPTS, 180_000);

    expect(await balanceText()).toBe(TOTAL.toString());
    // Every running balance is exact, including the 92 past 2^53.
    const [{ wrong, last }] = await h.sql<[{ wrong: number; last: string }]>`
      select count(*) filter (where balance_after <> sku_seq * ${QTY}::bigint)::int as wrong,
             max(balance_after)::text as last
        from ledger_entries where sku = 'BIG-1'`;
    expect(wrong).toBe(0);
    expect(last).toBe(TOTAL.toString());

    // Channels get it exactly too: a JSON number would round, so it is a decimal string.
    await eventually("the availability projection", async () => {
      const e = await h.nats.availability.get("web.BIG-1");
      return e !== null && e.length > 0 && e.json<{ onHand: unknown }>().onHand === TOTAL.toString();
    });
    expect((await h.nats.availability.get("web.BIG-1"))!.json<Record<string, unknown>>()).toMatchObject({
      available: (TOTAL - 2n).toString(),
      reserved: 0,
    });

    const ok = await verifyLedger(h.sql);
    expect(ok.ok).toBe(true);
    expect(ok.entries).toBeGreaterThanOrEqual(RECEIPTS);

    // Off by one at 9.1e15: a double cannot tell these two apart, verify must.
    await h.sql`update balances set qty = qty + 1 where sku = 'BIG-1' and location = 'DC1' and bucket = 'on_hand'`;
    try {
      const bad = await verifyLedger(h.sql);
      expect(bad.ok).toBe(false);
      expect(bad.problem?.message).toBe(`balance DC1/on_hand is ${TOTAL + 1n} but its entries sum to ${TOTAL}`);
      expect((await runTally(["ledger", "verify"], tallyEnv(ctx))).code).toBe(3);
    } finally {
      await h.sql`update balances set qty = qty - 1 where sku = 'BIG-1' and location = 'DC1' and bucket = 'on_hand'`;
    }
  }, 300_000);

  it("an actor rebuilt from the ledger (after a restart) goes on adding exactly", async () => {
    await tally.close();
    tally = await startInProcess(ctx, ["worker", "relay"]);
    const [next] = decodedCommands([receipt(RECEIPTS + 1)]);
    await publishCommands(h.nats.js, h.topology, [next!]);
    await eventually("the receipt", async () => (await outcomeCounts(h.sql, [next!.id])).n === 1);
    expect(await balanceText()).toBe((TOTAL + BigInt(QTY)).toString());
    expect((await verifyLedger(h.sql)).ok).toBe(true);
  });
});
