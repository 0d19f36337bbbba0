/**
 * The GL journal's inventory side end to end, on real Postgres and NATS: a scenario of receipts at
 * different costs, sales, a shipment, a customer return, counts (one by reconciliation), an
 * adjustment, a transfer and a damaged return goes through the workers; the poster (worker role)
 * turns each command into a balanced journal whose trial balance matches a hand computation, whose
 * inventory account per cost center matches the ledger's stock value, and whose lines lead back to
 * their ledger entries. Then: period close, a round that fails at its last step, posters side by
 * side, and a worker process killed with SIGKILL while posting — every journal exactly once.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { JournalPoster, businessDate, oldestUnposted, postRound } from "../ledger/index.ts";
import { decodeTallyConfig } from "../src/platform/configFile.ts";
import { createLogger } from "../src/platform/log.ts";
import { publishCommands } from "../src/wire/publisher.ts";
import { dropTestDatabase, testContext, type TestContext } from "./support/context.ts";
import {
  commandMaker,
  eventually,
  harness,
  publishAndSettle,
  runTally,
  spawnTally,
  startInProcess,
  tallyEnv,
  type Harness,
} from "./support/tally.ts";

let ctx: TestContext;
let h: Harness;

const CONFIG = decodeTallyConfig({
  channels: { web: { locations: ["DC1", "S01"], buffer: 2 }, store_s01: { locations: ["S01"], buffer: 0 } },
  sources: {},
  finance: { costCenters: { DC1: "CC-DC1" } },
});
const finance = CONFIG.finance;
const log = createLogger("test-gl", process.env.TALLY_LOG_LEVEL ?? "warn");

beforeAll(async () => {
  ctx = await testContext();
  h = await harness(ctx);
});

afterAll(async () => {
  await h?.close();
  if (ctx) await dropTestDatabase(ctx);
});

/** How many journals the ledger's GL holds for these ids (n), and for how many distinct ones. */
async function journalCounts(ids: ReadonlyArray<string>): Promise<{ n: number; distinct: number }> {
  const [row] = await h.sql<[{ n: number; distinct: number }]>`
    select count(*)::int as n, count(distinct journal_id)::int as distinct from gl_journals where journal_id = any(${h.sql.array([...ids])}::text[])`;
  return row;
}

const waitPosted = (ids: ReadonlyArray<string>, timeoutMs = 60_000) =>
  eventually(`${ids.length} journals to be posted`, async () => (await journalCounts(ids)).n === ids.length, timeoutMs);

/**
 * Posts rounds until `ids` are all posted: a round only passes entries below the horizon (the
 * oldest transaction still running anywhere in the cluster), which a loaded machine can hold back.
 */
const postUntil = (ids: ReadonlyArray<string>) =>
  eventually(
    `${ids.length} journals to be posted by postRound`,
    async () => {
      while ((await postRound(h.sql, finance)).full) {
        // another round: the last one stopped at maxEntries
      }
      return (await journalCounts(ids)).n === ids.length;
    },
    60_000,
  );

/** The trial balance: per account, debit − credit over every line. */
async function trialBalance(): Promise<Record<string, number>> {
  const rows = await h.sql<Array<{ account: string; balance: string }>>`
    select account, (sum(debit) - sum(credit))::text as balance from gl_lines group by account order by account`;
  return Object.fromEntries(rows.map((r) => [r.account, Number(r.balance)]));
}

describe("GL journal: the inventory side", () => {
  const make = commandMaker("gl");
  const c = {
    r1: make("receive", "GL-A", { location: "DC1", qty: 10, unitCost: 100, currency: "EUR" }), // DC1 10 = 1000
    r2: make("receive", "GL-A", { location: "DC1", qty: 5, unitCost: 130, currency: "EUR" }), // DC1 15 = 1650 (average 110)
    s1: make("sell", "GL-A", { location: "DC1", qty: 4 }), // −440: DC1 11 = 1210
    r3: make("receive", "GL-A", { location: "S01", qty: 10, unitCost: 110, currency: "EUR" }), // S01 10 = 1100
    tOut: make("transfer_out", "GL-A", { location: "DC1", to: "S01", qty: 5, transferId: "T1" }), // −550: DC1 6 = 660
    tIn: make("transfer_in", "GL-A", { location: "S01", from: "DC1", qty: 5, transferId: "T1" }), // +550: S01 15 = 1650
    s2: make("sell", "GL-A", { location: "S01", qty: 3 }), // −330: S01 12 = 1320
    ret: make("return", "GL-A", { location: "S01", qty: 1 }), // +110 at the average: S01 13 = 1430
    cnt: make("count", "GL-A", { location: "S01", qty: 11, reason: "cycle_count" }), // −2: −220, S01 11 = 1210
    rec: make("count", "GL-A", {
      location: "DC1",
      qty: 8,
      reason: "reconciliation",
      source: { system: "erp", ref: "reconciliation:0/1A2B" },
    }), // +2: +220, DC1 8 = 880
    dmg: make("return", "GL-A", { location: "S01", qty: 1, restockable: false }), // damaged + 1 at S01's average 1430 / 13 = 110
    hold: make("reserve", "GL-A", { location: "DC1", qty: 2, reservationId: "order-1" }), // a hold: posts nothing
    ship: make("fulfill", "GL-A", { location: "DC1", qty: 3, reservationId: "order-1" }), // 2 covered −220, 1 beyond −110: DC1 5 = 550
    adj: make("adjust", "GL-A", { location: "DC1", qty: -1, reason: "broken in the warehouse" }), // −110: DC1 4 = 440
  };
  const all = Object.values(c);
  const posting = all.filter((x) => x !== c.hold).map((x) => x.id);
  let tally: Awaited<ReturnType<typeof startInProcess>>;

  beforeAll(async () => {
    tally = await startInProcess(ctx, ["worker", "relay"], {}, CONFIG);
    await publishAndSettle(h, all);
    await waitPosted(posting);
  }, 120_000);

  afterAll(async () => {
    await tally?.close();
  });

  it("values each leg as computed by hand (the scenario's premise)", async () => {
    const rows = await h.sql<Array<{ command_id: string; value: string | null }>>`
      select command_id, value::text from ledger_entries where sku = 'GL-A' and bucket = 'on_hand' order by sku_seq`;
    expect(rows.map((r) => [r.command_id, Number(r.value)])).toEqual(
      [
        [c.r1, 1000],
        [c.r2, 650],
        [c.s1, -440],
        [c.r3, 1100],
        [c.tOut, -550],
        [c.tIn, 550],
        [c.s2, -330],
        [c.ret, 110],
        [c.cnt, -220],
        [c.rec, 220],
        [c.ship, -220],
        [c.ship, -110],
        [c.adj, -110],
      ].map(([cmd, v]) => [(cmd as { id: string }).id, v]),
    );
  });

  it("posts one balanced journal per command that moved valued stock, none for the hold", async () => {
    const journals = await h.sql<Array<{ journal_id: string; kind: string; debit: string; credit: string; lines: number }>>`
      select j.journal_id, j.kind, sum(l.debit)::text as debit, sum(l.credit)::text as credit, count(*)::int as lines
        from gl_journals j join gl_lines l using (journal_id)
       where j.journal_id like 'gl:%' group by j.journal_id, j.kind order by j.journal_id`;
    expect(journals.map((j) => j.journal_id).sort()).toEqual([...posting].sort());
    for (const j of journals) {
      expect(j.debit, j.journal_id).toBe(j.credit);
      expect(Number(j.debit), j.journal_id).toBeGreaterThan(0);
    }
    expect(journals.find((j) => j.journal_id === c.rec.id)?.kind).toBe("reconciliation");
    expect(journals.find((j) => j.journal_id === c.cnt.id)?.kind).toBe("inventory");
    const [header] = await h.sql<Array<Record<string, unknown>>>`
      select business_date::text, posted_on::text, period, currency, command_id, movement, source_system, source_ref from gl_journals where journal_id = ${c.s1.id}`;
    expect(header).toEqual({
      business_date: "2026-11-26",
      posted_on: "2026-11-26",
      period: "2026-11",
      currency: "EUR",
      command_id: c.s1.id,
      movement: "sell",
      source_system: "test",
      source_ref: "ref-3",
    });
  });

  it("the trial balance per account equals the hand computation", async () => {
    const damaged = 110; // the damaged return, at S01's average then (1430 / 13)
    const expected: Record<string, number> = {
      // receipts 1000 + 650 + 1100; sales −440 −330; transfer −550 +550; return +110; counts −220 +220; shipment −330; adjustment −110
      "1400": 1650,
      "2100": -2750,
      // sales 440 + 330 and the shipment 330, less the return 110 (and the damaged return's value)
      "5000": 990 - damaged,
      // the count's loss 220 and the adjustment 110, less the reconciliation's gain 220
      "5100": 110,
      // shipped 550, received 550
      "1410": 0,
      "1450": damaged,
    };
    const tb = await trialBalance();
    expect(tb).toEqual(expected);
    expect(Object.values(tb).reduce((a, b) => a + b, 0)).toBe(0);
  });

  it("the inventory account per cost center equals the value of on_hand per location", async () => {
    const gl = await h.sql<Array<{ cost_center: string; balance: string }>>`
      select cost_center, (sum(debit) - sum(credit))::text as balance from gl_lines where account = '1400' group by cost_center order by cost_center`;
    const stock = await h.sql<Array<{ location: string; value: string }>>`
      select location, sum(value)::text as value from balances where bucket = 'on_hand' group by location order by location`;
    expect(gl.map((r) => [r.cost_center, Number(r.balance)])).toEqual([
      ["CC-DC1", 440],
      ["S01", 1210],
    ]);
    expect(stock.map((r) => [finance.costCenters[r.location] ?? r.location, Number(r.value)])).toEqual([
      ["CC-DC1", 440],
      ["S01", 1210],
    ]);
  });

  it("the transfer posts Dr in transit at the destination / Cr inventory at the origin, and back on receipt", async () => {
    const lines = await h.sql<Array<{ journal_id: string; account: string; cost_center: string; debit: string; credit: string }>>`
      select journal_id, account, cost_center, debit::text, credit::text from gl_lines
       where journal_id in (${c.tOut.id}, ${c.tIn.id}) order by journal_id = ${c.tIn.id}, line`;
    expect(lines.map((l) => [l.journal_id, l.account, l.cost_center, Number(l.debit), Number(l.credit)])).toEqual([
      [c.tOut.id, "1410", "S01", 550, 0],
      [c.tOut.id, "1400", "CC-DC1", 0, 550],
      [c.tIn.id, "1400", "S01", 550, 0],
      [c.tIn.id, "1410", "S01", 0, 550],
    ]);
  });

  it("every line leads back to its ledger entry (command, leg): same SKU and units, and its value on the stock account", async () => {
    const lines = await h.sql<Array<{ ok: boolean; journal_id: string; line: number; unit: string }>>`
      select l.journal_id, l.line, l.unit,
             (e.entry_id is not null and e.sku = l.sku and e.delta = l.qty and e.bucket <> 'reserved'
              and (l.account not in ('1400', '1450', '1410') or e.value is null
                   or (l.debit - l.credit) = e.value)) as ok
        from gl_lines l join gl_journals j using (journal_id)
        left join ledger_entries e on e.command_id = j.command_id and e.leg = l.leg
       where j.journal_id like 'gl:%'`;
    expect(lines.length).toBeGreaterThan(0);
    expect(lines.filter((l) => !l.ok)).toEqual([]);
    expect(new Set(lines.map((l) => l.unit))).toEqual(new Set(["each"]));
    // …and every valued stock entry is on a line of its command's journal.
    const [{ missing }] = await h.sql<[{ missing: number }]>`
      select count(*)::int as missing from ledger_entries e
       where e.sku = 'GL-A' and e.bucket <> 'reserved' and e.value is not null and e.value <> 0
         and not exists (select from gl_lines l where l.journal_id = e.command_id and l.leg = e.leg)`;
    expect(missing).toBe(0);
  });

  it("the poster is caught up: its lag gauge reads 0", async () => {
    await eventually("the poster's lag to be 0", async () => tally.poster?.lagSeconds() === 0, 10_000);
  });
});

describe("GL periods", () => {
  it("a movement dated in a closed month posts on the first day of the next open one, keeping its business date", async () => {
    const make = commandMaker("glp");
    const october = make("receive", "GL-P", { qty: 2, unitCost: 100, currency: "EUR", occurredAt: "2026-10-15T12:00:00Z" });
    const november = make("receive", "GL-P", { qty: 1, unitCost: 100, currency: "EUR", occurredAt: "2026-11-02T12:00:00Z" });
    const tally = await startInProcess(ctx, ["worker", "relay"], {}, CONFIG);
    try {
      await tally.poster!.stop(); // the movements wait for the poster until the month is closed
      await publishAndSettle(h, [october, november]);
      expect((await journalCounts([october.id, november.id])).n).toBe(0);

      const bad = await runTally(["gl", "close", "2026-1"], tallyEnv(ctx));
      expect(bad.code).toBe(2);
      expect(bad.output).toContain(`argument 'period'. expected a month as YYYY-MM (like 2026-11), got "2026-1"`);
      const closed = await runTally(["gl", "close", "2026-10", "--by", "controller"], tallyEnv(ctx));
      expect(closed.output).toContain("gl close: period 2026-10 closed (by controller)");
      expect(closed.code).toBe(0);
      const again = await runTally(["gl", "close", "2026-10"], tallyEnv(ctx));
      expect([again.code, again.stdout]).toEqual([0, "gl close: period 2026-10 was already closed\n"]);
      const periods = await runTally(["gl", "periods", "--format", "json"], tallyEnv(ctx));
      expect(JSON.parse(periods.stdout).closed).toMatchObject([{ period: "2026-10", closedBy: "controller" }]);

      await postUntil([october.id, november.id]);
      const rows = await h.sql<Array<{ journal_id: string; business_date: string; posted_on: string; period: string }>>`
        select journal_id, business_date::text, posted_on::text, period from gl_journals
         where journal_id in (${october.id}, ${november.id}) order by journal_id`;
      expect(rows).toEqual([
        { journal_id: october.id, business_date: "2026-10-15", posted_on: "2026-11-01", period: "2026-11" },
        { journal_id: november.id, business_date: "2026-11-02", posted_on: "2026-11-02", period: "2026-11" },
      ]);
    } finally {
      await tally.close();
    }
  });
});

describe("GL poster: exactly once", () => {
  const receipts = (prefix: string, n: number) => {
    const make = commandMaker(prefix);
    return Array.from({ length: n }, (_, i) => make("receive", `GL-X${i % 7}`, { qty: 1 + (i % 3), unitCost: 100 + i, currency: "EUR" }));
  };

  it("a round that fails at its last step (the cursor update) writes nothing; the next posts everything once", async () => {
    const commands = receipts("glf", 12);
    const tally = await startInProcess(ctx, ["worker", "relay"], {}, CONFIG);
    try {
      await tally.poster!.stop();
      await publishAndSettle(h, commands);
    } finally {
      await tally.close();
    }
    const ids = commands.map((x) => x.id);
    const [before] = await h.sql<[{ horizon: string | null }]>`select horizon::text from gl_cursor`;
    await h.sql.unsafe(`
      create function gl_test_crash() returns trigger language plpgsql as $$ begin raise exception 'crash injected at the cursor update'; end $$;
      create trigger gl_test_crash after update on gl_cursor for each statement execute function gl_test_crash();`);
    try {
      await expect(postRound(h.sql, finance)).rejects.toThrow(/crash injected/);
    } finally {
      await h.sql.unsafe("drop trigger gl_test_crash on gl_cursor; drop function gl_test_crash();");
    }
    expect(await journalCounts(ids)).toEqual({ n: 0, distinct: 0 });
    expect((await h.sql<[{ horizon: string | null }]>`select horizon::text from gl_cursor`)[0]).toEqual(before);
    await postUntil(ids);
    expect(await journalCounts(ids)).toEqual({ n: ids.length, distinct: ids.length });
  });

  it("a round while another poster holds the poster lock does nothing", async () => {
    await h.sql.begin(async (tx) => {
      await tx`select pg_advisory_xact_lock(7402117073)`;
      expect(await postRound(h.sql, finance)).toMatchObject({ busy: true, journals: 0 });
    });
    expect(await postRound(h.sql, finance)).toMatchObject({ busy: false });
  });

  it("posters side by side, small rounds, one stopped half way: every journal once, none missing", async () => {
    const commands = receipts("glc", 150);
    const tally = await startInProcess(ctx, ["worker", "relay"], {}, CONFIG);
    try {
      await tally.poster!.stop();
      await publishAndSettle(h, commands);
    } finally {
      await tally.close();
    }
    const ids = commands.map((x) => x.id);
    const waiting = await oldestUnposted(h.sql);
    expect(waiting).not.toBeNull(); // what tally_gl_lag_seconds measures from
    const posters = [0, 1].map(() => new JournalPoster({ sql: h.sql, finance, log, intervalMs: 20, maxEntries: 1 }).start());
    await eventually("a few journals", async () => (await journalCounts(ids)).n >= 6, 30_000);
    // Stopped half way when the workers committed the receipts in several batches (a round never splits one).
    await posters[0]!.stop();
    await waitPosted(ids, 30_000);
    await eventually("the running poster to see no lag", async () => posters[1]!.lagSeconds() === 0, 10_000);
    expect(await oldestUnposted(h.sql)).toBeNull();
    await posters[1]!.stop();
    expect(await journalCounts(ids)).toEqual({ n: ids.length, distinct: ids.length });
    expect(posters[0]!.journals + posters[1]!.journals).toBe(ids.length);
  });

  it("a worker process killed with SIGKILL while commands stream in: after a restart every journal is there once", async () => {
    const commands = receipts("glk", 120);
    const env = { ...tallyEnv(ctx), TALLY_LOG_LEVEL: "error" };
    const relay = await startInProcess(ctx, ["relay"], {}, CONFIG);
    let child = spawnTally(["start", "--roles", "worker"], env);
    try {
      const ids = commands.map((x) => x.id);
      for (let i = 0; i < 60; i += 10) await publishCommands(h.nats.js, h.topology, commands.slice(i, i + 10));
      await eventually("the worker to post some journals", async () => (await journalCounts(ids)).n > 0, 60_000);
      const killedAt = (await journalCounts(ids)).n;
      child.kill("SIGKILL");
      await new Promise((r) => child.once("exit", r));
      await publishCommands(h.nats.js, h.topology, commands.slice(60));
      child = spawnTally(["start", "--roles", "worker"], env);
      await waitPosted(ids, 90_000);
      expect(killedAt).toBeLessThan(ids.length);
      expect(await journalCounts(ids)).toEqual({ n: ids.length, distinct: ids.length });
      const [{ lines }] = await h.sql<[{ lines: number }]>`
        select count(*)::int as lines from gl_lines where journal_id = any(${h.sql.array(ids)}::text[])`;
      expect(lines).toBe(2 * ids.length);
    } finally {
      if (child.exitCode === null) {
        child.kill("SIGTERM");
        await new Promise((r) => child.once("exit", r));
      }
      await relay.close();
    }
  });
});

describe("the business date", () => {
  it("agrees with Postgres' `at time zone` around midnight and the DST changes (Europe/Berlin, America/New_York, Pacific/Auckland)", async () => {
    // 2026: Berlin leaves DST on 25 Oct 01:00 UTC and enters it on 29 Mar 01:00 UTC; New York on 1 Nov and 8 Mar.
    const instants = [
      "2026-03-28T22:59:59Z",
      "2026-03-28T23:00:00Z",
      "2026-03-29T00:59:59Z",
      "2026-03-29T01:00:00Z",
      "2026-03-29T21:59:59Z",
      "2026-03-29T22:00:00Z",
      "2026-10-24T21:59:59Z",
      "2026-10-24T22:00:00Z",
      "2026-10-25T00:30:00Z",
      "2026-10-25T01:30:00Z",
      "2026-10-25T22:59:59Z",
      "2026-10-25T23:00:00Z",
      "2026-11-01T03:59:59Z",
      "2026-11-01T04:00:00Z",
      "2026-11-01T05:30:00Z",
      "2026-03-08T04:59:59Z",
      "2026-03-08T05:00:00Z",
      "2026-12-31T23:00:00Z",
    ];
    const zones = ["Europe/Berlin", "America/New_York", "Pacific/Auckland", "UTC"];
    const rows = await h.sql<Array<{ at: string; tz: string; day: string }>>`
      select at, tz, to_char((at::timestamptz at time zone tz)::date, 'YYYY-MM-DD') as day
        from unnest(${h.sql.array(instants)}::text[]) as at, unnest(${h.sql.array(zones)}::text[]) as tz`;
    expect(rows).toHaveLength(instants.length * zones.length);
    for (const r of rows) expect(businessDate(new Date(r.at), r.tz), `${r.at} in ${r.tz}`).toBe(r.day);
  });
});
