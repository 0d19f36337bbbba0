import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodeCommand, type Command } from "../src/contract/command.ts";
import { verifyLedger } from "../ledger/index.ts";
import { publishCommands } from "../src/wire/publisher.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { eventually, harness, spawnTally, startInProcess, tallyEnv, TEST_CHANNELS, type Harness } from "./support/tally.ts";
import { expectationOf, expectedAvailable, generateCommands, rng } from "./support/workload.ts";

let ctx: TestContext;
let h: Harness;
const OPTS = { partitions: 4, leaseTtlMs: 1500 };

beforeAll(async () => {
  ctx = await testContext();
  h = await harness(ctx, OPTS);
});
afterAll(async () => {
  await h?.close();
});

type Child = ReturnType<typeof spawnTally>;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("crash safety", () => {
  it("workers killed with SIGKILL at random points while applying finish with the exact same result", async () => {
    const raw = generateCommands(6000, 200, 11, "k");
    const commands: Array<Command> = raw.map((c) => {
      const d = decodeCommand(c);
      if (d._tag === "Left") throw d.left;
      return d.right;
    });
    const expected = expectationOf(raw);
    const env = { ...tallyEnv(ctx, OPTS), TALLY_LOG_LEVEL: "error" };
    const workers: Array<Child | null> = [spawnTally(["start", "--roles", "worker"], env), null];
    const relay = await startInProcess(ctx, ["relay"], OPTS);

    // Publish at a steady pace in small envelopes while a killer SIGKILLs workers as soon as they make
    // progress (two slots, so leases also move from a dead worker to a live one).
    let publishing = true;
    let kills = 0;
    const publisher = (async () => {
      for (let i = 0, round = 0; i < commands.length; i += 250, round++) {
        // Pace the stream by the killer: a kill for every 3 rounds (24 in all), so the kills spread over the whole stream.
        const deadline = Date.now() + 20_000;
        while (kills < Math.floor(round / 3) && Date.now() < deadline) await sleep(50);
        await publishCommands(h.nats.js, h.topology, commands.slice(i, i + 250), { envelopeSize: 10 });
        await sleep(100);
      }
      publishing = false;
    })();
    const applied = async () => (await h.sql<[{ n: number }]>`select count(*)::int as n from command_outcomes`)[0].n;
    const pick = rng(5);
    let midStreamKills = 0;
    while (publishing && kills < 12) {
      if (!workers[0] || workers[0].exitCode !== null) workers[0] = spawnTally(["start", "--roles", "worker"], env);
      if (!workers[1] && pick() < 0.5) workers[1] = spawnTally(["start", "--roles", "worker"], env);
      const before = await applied();
      try {
        await eventually("a worker to make progress", async () => (await applied()) > before || !publishing, 30_000);
      } catch {
        continue;
      }
      await sleep(pick() * 150);
      const live = workers.map((w, i) => [w, i] as const).filter(([w]) => w !== null && w.exitCode === null);
      const [victim, slot] = live[Math.floor(pick() * live.length)]!;
      const at = await applied();
      victim!.kill("SIGKILL");
      await new Promise((r) => victim!.once("exit", r));
      kills++;
      if (at > 0 && at < commands.length) midStreamKills++;
      workers[slot] = null;
    }
    await publisher;
    if (!workers[0] || workers[0].exitCode !== null) workers[0] = spawnTally(["start", "--roles", "worker"], env);

    try {
      await eventually(
        "every command to have an outcome",
        async () => {
          const [{ n }] = await h.sql<[{ n: number }]>`select count(*)::int as n from command_outcomes`;
          return n === commands.length;
        },
        180_000,
      );
      expect(midStreamKills).toBeGreaterThanOrEqual(5); // the kills really landed while applying

      const outcomes = await h.sql<Array<{ command_id: string; status: string; reason: string | null }>>`
        select command_id, status, reason from command_outcomes`;
      expect(new Set(outcomes.filter((o) => o.status === "applied").map((o) => o.command_id))).toEqual(expected.applied);
      expect(new Map(outcomes.filter((o) => o.status === "rejected").map((o) => [o.command_id, o.reason]))).toEqual(expected.rejected);
      const [{ entries, distinct }] = await h.sql<[{ entries: number; distinct: number }]>`
        select count(*)::int as entries, count(distinct (command_id, leg))::int as distinct from ledger_entries`;
      expect(entries).toBe(expected.entries);
      expect(distinct).toBe(entries);
      const balances = await h.sql<Array<{ sku: string; location: string; bucket: string; qty: number }>>`
        select sku, location, bucket, qty from balances`;
      const actual = new Map(balances.map((b) => [`${b.sku}|${b.location}|${b.bucket}`, b.qty]));
      for (const [key, l] of expected.locations)
        for (const bucket of ["on_hand", "reserved", "in_transit", "damaged"] as const)
          expect(actual.get(`${key}|${bucket}`) ?? 0, `${key} ${bucket}`).toBe(l[bucket]);
      const report = await verifyLedger(h.sql);
      expect(report.problem).toBeNull();

      // The projections converge too, whatever was re-published after the crashes.
      const web = TEST_CHANNELS.channels.web!;
      for (let s = 0; s < 200; s += 7) {
        const sku = `SKU-${s}`;
        if (!web.locations.some((loc) => expected.touched.has(`${sku}|${loc}`))) continue;
        const want = expectedAvailable(expected, sku, web.locations, web.buffer ?? 0);
        await eventually(
          `KV web.${sku} = ${want}`,
          async () => {
            const e = await h.nats.availability.get(`web.${sku}`);
            return e !== null && e.json<{ available: number }>().available === want;
          },
          20_000,
        );
      }
    } finally {
      for (const w of workers) if (w && w.exitCode === null) w.kill("SIGKILL");
      await relay.close();
    }
  });
});
