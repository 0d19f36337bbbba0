import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodeCommand } from "../src/contract/command.ts";
import { encodeEnvelope, envelopeMsgId } from "../src/wire/envelope.ts";
import { verifyLedger } from "../ledger/index.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { eventually, harness, startInProcess, TEST_CHANNELS, type Harness } from "./support/tally.ts";
import { expectationOf, expectedAvailable, generateCommands, rng, type RawCommand } from "./support/workload.ts";

let ctx: TestContext;
let h: Harness;
let tally: Awaited<ReturnType<typeof startInProcess>>;

beforeAll(async () => {
  ctx = await testContext();
  h = await harness(ctx, { partitions: 4 });
  tally = await startInProcess(ctx, ["worker", "relay"], { partitions: 4 });
});

afterAll(async () => {
  await tally?.close();
  await h?.close();
});

/** Publishes commands in per-partition envelopes of `size`, awaiting each PubAck; returns the envelopes sent. */
async function publishEnvelopes(commands: ReadonlyArray<RawCommand>, size: number) {
  const byPartition = new Map<number, Array<RawCommand>>();
  for (const c of commands) {
    const p = h.topology.partitionOf(c.sku);
    byPartition.set(p, [...(byPartition.get(p) ?? []), c]);
  }
  const sent: Array<{ subject: string; body: string; msgID: string; commands: Array<RawCommand> }> = [];
  for (const [p, list] of byPartition) {
    for (let i = 0; i < list.length; i += size) {
      const chunk = list.slice(i, i + size);
      const env = {
        subject: h.topology.commandSubject(p),
        body: encodeEnvelope(chunk),
        msgID: envelopeMsgId(chunk.map((c) => c.id)),
        commands: chunk,
      };
      const ack = await h.nats.js.publish(env.subject, env.body, { msgID: env.msgID });
      expect(ack.duplicate).toBe(false);
      sent.push(env);
    }
  }
  return sent;
}

describe("the streaming apply path", () => {
  it("applies 10,000 mixed commands over 500 SKUs exactly once despite re-published duplicates", async () => {
    const all = generateCommands(10_000, 500, 42);
    for (const c of all) expect(decodeCommand(c)._tag).toBe("Right");
    const pick = rng(7);
    let streamDuplicates = 0;
    let republishedWithNewId = 0;
    let previous: Awaited<ReturnType<typeof publishEnvelopes>> = [];
    for (let i = 0; i < all.length; i += 1000) {
      const round = await publishEnvelopes(all.slice(i, i + 1000), 25);
      // 5%: the same envelope again, same Nats-Msg-Id: the stream drops it.
      for (const env of previous) {
        if (pick() >= 0.05) continue;
        const ack = await h.nats.js.publish(env.subject, env.body, { msgID: env.msgID });
        expect(ack.duplicate).toBe(true);
        streamDuplicates += env.commands.length;
      }
      // 5%: the same command under a new Nats-Msg-Id (as after the window passed): the ledger skips it.
      for (const env of previous) {
        for (const c of env.commands) {
          if (pick() >= 0.05) continue;
          const ack = await h.nats.js.publish(env.subject, encodeEnvelope([c]), { msgID: `again:${c.id}` });
          expect(ack.duplicate).toBe(false);
          republishedWithNewId++;
        }
      }
      previous = round;
    }
    expect(streamDuplicates).toBeGreaterThan(100);
    expect(republishedWithNewId).toBeGreaterThan(300);

    const expected = expectationOf(all);
    await eventually(
      "every command to have an outcome",
      async () => {
        const [{ n }] = await h.sql<[{ n: number }]>`select count(*)::int as n from command_outcomes`;
        return n === all.length;
      },
      120_000,
    );
    await eventually("the outbox to drain", async () => {
      const [{ n }] = await h.sql<[{ n: number }]>`select count(*)::int as n from outbox`;
      return n === 0;
    });

    // Outcomes: the same commands applied and rejected, for the same reasons, as the model.
    const outcomes = await h.sql<Array<{ command_id: string; status: string; reason: string | null }>>`
      select command_id, status, reason from command_outcomes`;
    const applied = new Set(outcomes.filter((o) => o.status === "applied").map((o) => o.command_id));
    const rejected = new Map(outcomes.filter((o) => o.status === "rejected").map((o) => [o.command_id, o.reason]));
    expect(applied).toEqual(expected.applied);
    expect(rejected).toEqual(expected.rejected);
    expect(expected.rejected.size).toBeGreaterThan(100); // the workload really exercises rejections

    // Entries: exactly the legs the model writes, none twice.
    const [{ entries, distinct }] = await h.sql<[{ entries: number; distinct: number }]>`
      select count(*)::int as entries, count(distinct (command_id, leg))::int as distinct from ledger_entries`;
    expect(entries).toBe(expected.entries);
    expect(distinct).toBe(entries);
    const perSku = await h.sql<Array<{ sku: string; n: number; max: number }>>`
      select sku, count(*)::int as n, max(sku_seq)::int as max from ledger_entries group by sku`;
    for (const row of perSku) {
      expect(row.n).toBe(expected.entriesBySku.get(row.sku));
      expect(row.max).toBe(row.n);
    }

    // Balances: every bucket equals the model.
    const balances = await h.sql<Array<{ sku: string; location: string; bucket: string; qty: number }>>`
      select sku, location, bucket, qty from balances`;
    const actual = new Map(balances.map((b) => [`${b.sku}|${b.location}|${b.bucket}`, b.qty]));
    for (const [key, l] of expected.locations) {
      for (const bucket of ["on_hand", "reserved", "in_transit", "damaged"] as const) {
        expect(actual.get(`${key}|${bucket}`) ?? 0, `${key} ${bucket}`).toBe(l[bucket]);
      }
    }

    // Availability in KV: every channel of every SKU it can sell.
    let checked = 0;
    for (const [name, channel] of Object.entries(TEST_CHANNELS.channels)) {
      for (let s = 0; s < 500; s++) {
        const sku = `SKU-${s}`;
        const touched = channel.locations.some((loc) => expected.touched.has(`${sku}|${loc}`));
        if (!touched) continue;
        const want = expectedAvailable(expected, sku, channel.locations, channel.buffer ?? 0);
        await eventually(
          `KV ${name}.${sku} = ${want}`,
          async () => {
            const e = await h.nats.availability.get(`${name}.${sku}`);
            return e !== null && e.json<{ available: number }>().available === want;
          },
          10_000,
        );
        checked++;
      }
    }
    expect(checked).toBeGreaterThan(900);

    const report = await verifyLedger(h.sql);
    expect(report.problem).toBeNull();
    expect(report.entries).toBe(expected.entries);
    expect(tally.worker!.metrics.skippedDuplicate).toBe(republishedWithNewId);
    // Batches are decided optimistically (no lookup); a duplicate fails the commit on its outcome's
    // key, writing nothing, and the batch is decided again with the lookup.
    expect(tally.worker!.metrics.duplicateRetries).toBeGreaterThanOrEqual(1);
  });
});
