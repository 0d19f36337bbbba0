import { readFile } from "node:fs/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AckPolicy, DeliverPolicy } from "@nats-io/jetstream";
import { decodeEnvelope } from "../src/wire/envelope.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { demoSources, type DemoSources } from "./support/cdc.ts";
import { startNats, type NatsServer } from "./support/nats.ts";
import { startPostgres, type PostgresServer } from "./support/postgres.ts";
import { eventually, harness, spawnTally, tallyEnv, type Harness } from "./support/tally.ts";

/**
 * One source transaction of 1,000,000 goods receipts, captured by `tally start --roles cdc` in a
 * child process whose resident memory is read from /proc while it streams. The reader must publish
 * such a transaction to JetStream in bounded chunks as it arrives (memory flat), yet confirm its
 * commit LSN to Postgres only once every chunk is acknowledged. The source databases live on a
 * Postgres of this file's own (every slot on a server reads all of its WAL: the shared server's other
 * readers need not wade through ~300 MB of receipts), and the commands stream on a nats-server of
 * its own, both deleted afterwards.
 */
const ROWS = Number(process.env.TALLY_TEST_LARGE_TX_ROWS ?? 1_000_000);
/**
 * The CDC process's V8 old-space limit: well above what it needs, far below what a million mapped
 * changes held at once take (~800 MiB), so memory that grows with the transaction fails the test
 * (out of memory) instead of hiding in a lazily collected heap.
 */
const HEAP_CAP_MIB = 192;

let nats: NatsServer;
let sourcePg: PostgresServer;
let ctx: TestContext;
let h: Harness;
let demo: DemoSources;

beforeAll(async () => {
  [nats, sourcePg] = await Promise.all([startNats(), startPostgres()]);
  ctx = { ...(await testContext()), natsUrl: nats.url };
  h = await harness(ctx);
  demo = await demoSources(ctx, { adminUrl: sourcePg.url() });
});
afterAll(async () => {
  await demo?.close();
  await h?.close();
  await Promise.allSettled([nats?.destroy(), sourcePg?.destroy()]);
});

/** Resident and peak resident memory of a process, in MiB (Linux /proc). */
async function memoryOf(pid: number): Promise<{ rss: number; peak: number }> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  const kb = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? Number.NaN);
  return { rss: kb("VmRSS") / 1024, peak: kb("VmHWM") / 1024 };
}

/**
 * Reads the commands stream from `fromSeq` on and marks each command of the transaction whose ids
 * start with `prefix` (`erp:<commit lsn>:<change index>`) in a bitmap: how many distinct changes
 * reached the stream, and how many commands were sent more than once.
 */
async function countTransactionCommands(fromSeq: number, prefix: string, rows: number): Promise<{ distinct: number; repeated: number }> {
  const seen = new Uint8Array(rows);
  let distinct = 0;
  let repeated = 0;
  await forEachCommand(fromSeq, (c) => {
    if (!c.id.startsWith(prefix)) return;
    const index = Number(c.id.slice(prefix.length));
    if (seen[index]) repeated++;
    else {
      seen[index] = 1;
      distinct++;
    }
  });
  return { distinct, repeated };
}

/** Every command in the commands stream from `fromSeq` on, one at a time (a million do not fit in an array comfortably). */
async function forEachCommand(fromSeq: number, visit: (c: { id: string; source?: { ref?: string } }) => void): Promise<void> {
  const info = await h.nats.jsm.consumers.add(h.topology.commandsStream, {
    ack_policy: AckPolicy.None,
    deliver_policy: DeliverPolicy.StartSequence,
    opt_start_seq: fromSeq,
    inactive_threshold: 30_000_000_000,
  });
  const consumer = await h.nats.js.consumers.get(h.topology.commandsStream, info.name);
  for (;;) {
    const batch = await consumer.fetch({ max_messages: 200, expires: 2000 });
    let n = 0;
    for await (const m of batch) {
      n++;
      const envelope = decodeEnvelope(m.data);
      if (!envelope.ok) throw new Error(envelope.reason);
      for (const c of envelope.commands as Array<{ id: string; source?: { ref?: string } }>) visit(c);
    }
    if (n === 0) break;
  }
  await h.nats.jsm.consumers.delete(h.topology.commandsStream, info.name).catch(() => {});
}

/** `tally start --roles cdc` in a child process, its V8 heap capped so retained memory cannot hide in GC slack. */
function spawnCdc() {
  const env = { ...tallyEnv(ctx), ...demo.env, TALLY_LOG_LEVEL: "warn", NODE_OPTIONS: `--max-old-space-size=${HEAP_CAP_MIB}` };
  const child = spawnTally(["start", "--roles", "cdc"], env);
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  return {
    pid: child.pid!,
    /** Throws when the process died on its own (out of memory, say). */
    assertAlive(): void {
      if (child.exitCode !== null || child.signalCode !== null)
        throw new Error(`the CDC process exited (${child.exitCode ?? child.signalCode}):\n${child.output().slice(-3000)}`);
    },
    async kill(): Promise<void> {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      await exited;
    },
  };
}

/** The slot's confirmed position has reached `lsn` (a WAL position read after a commit). */
const slotConfirmedPast = async (lsn: string) => {
  const [row] = await demo.erp<[{ ok: boolean } | undefined]>`
    select confirmed_flush_lsn >= ${lsn}::pg_lsn as ok from pg_replication_slots where slot_name = ${`tally_${ctx.env}_erp`}`;
  return row?.ok === true;
};

/**
 * The slot would skip the transaction whose commit record starts at `commitLsn` on a restart:
 * Postgres skips a transaction only when its commit record starts before the confirmed position
 * (an idle reader may confirm a keepalive's position right up to it while the server is still
 * reading the transaction's WAL; that is safe).
 */
const slotSkips = async (commitLsn: string) => {
  const [row] = await demo.erp<[{ skips: boolean } | undefined]>`
    select confirmed_flush_lsn > ${commitLsn}::pg_lsn as skips from pg_replication_slots where slot_name = ${`tally_${ctx.env}_erp`}`;
  return row?.skips === true;
};

/** `rows` goods receipts in one source transaction, over 19 stock items (every partition) and three locations. */
async function receiptsTransaction(rows: number): Promise<string> {
  await demo.erp.unsafe(`
    insert into goods_receipts (item_no, location, qty)
    select (100002 + g % 19)::text, (array['DC1', 'S01', 'S02'])[1 + g % 3], 1 + g % 5
      from generate_series(0, ${rows - 1}) g`);
  const [{ lsn }] = await demo.erp<[{ lsn: string }]>`select pg_current_wal_lsn()::text as lsn`;
  return lsn;
}

const nextSeq = async () => (await h.nats.jsm.streams.info(h.topology.commandsStream)).state.last_seq + 1;

describe("a large source transaction", () => {
  it(`is published to JetStream in bounded chunks with flat memory (${ROWS.toLocaleString("en")} rows)`, async () => {
    const cdc = spawnCdc();
    try {
      await eventually("both snapshots", async () => {
        cdc.assertAlive();
        const [{ n }] = await h.sql<[{ n: number }]>`select count(*)::int as n from cdc_sources where snapshot_done_at is not null`;
        return n === 2;
      });
      // Streaming: a receipt goes through.
      await demo.erp`insert into goods_receipts (item_no, location, qty) values ('100003', 'DC1', 1)`;
      await eventually("the first receipt streamed", async () => {
        const [row] = await h.sql<[{ changes: number } | undefined]>`select changes::int from cdc_sources where source = 'erp'`;
        return (row?.changes ?? 0) >= 1;
      });
      await new Promise((r) => setTimeout(r, 1000));
      const before = await memoryOf(cdc.pid);
      const seq = await nextSeq();

      const commitAfter = await receiptsTransaction(ROWS);
      let peakSampled = before.rss;
      await eventually(
        "the slot confirmed past the large transaction",
        async () => {
          cdc.assertAlive();
          peakSampled = Math.max(peakSampled, (await memoryOf(cdc.pid)).rss);
          return slotConfirmedPast(commitAfter);
        },
        300_000,
      );
      const after = await memoryOf(cdc.pid);
      // The process's peak since it started, if it was reached during the transaction; else the highest sample.
      const peak = Math.max(peakSampled, after.peak > before.peak ? after.peak : 0);
      const grewMiB = peak - before.rss;

      // Every receipt reached the stream: the large transaction's commands share its commit LSN.
      const commitLsn = await transactionLsn(seq);
      const counted = await countTransactionCommands(seq, `erp:${commitLsn}:`, ROWS);
      console.log(
        `large transaction: ${ROWS} rows; CDC process (heap capped at ${HEAP_CAP_MIB} MiB) RSS ${before.rss.toFixed(0)} MiB before, ` +
          `peak ${peak.toFixed(0)} MiB (+${grewMiB.toFixed(0)} MiB); ${counted.distinct} distinct commands in the stream, ${counted.repeated} repeated`,
      );
      expect(counted.distinct).toBe(ROWS);
      expect(grewMiB, "the CDC process's memory grew with the transaction").toBeLessThan(120);
    } finally {
      await cdc.kill();
    }
  }, 420_000);

  it("killed after part of it was published, the reader had confirmed none of it; restarted, it re-sends all of it under the same ids", async () => {
    const rows = 200_000;
    let cdc = spawnCdc();
    try {
      await eventually("streaming", async () => {
        cdc.assertAlive();
        const [row] = await demo.erp<[{ active: boolean } | undefined]>`
          select active from pg_replication_slots where slot_name = ${`tally_${ctx.env}_erp`}`;
        return row?.active === true;
      });
      const seq = await nextSeq();
      const commitAfter = await receiptsTransaction(rows);
      // Some chunks of the transaction are in the stream (≥ 40 envelopes of ≤ 500 commands): kill.
      await eventually("part of the transaction published", async () => {
        cdc.assertAlive();
        return (await nextSeq()) - seq >= 40;
      });
      await cdc.kill();
      const commitLsn = await transactionLsn(seq);
      const partial = await countTransactionCommands(seq, `erp:${commitLsn}:`, rows);
      expect(partial.distinct, "part, not all, of the transaction was published before the kill").toBeGreaterThan(0);
      expect(partial.distinct).toBeLessThan(rows);
      expect(await slotSkips(commitLsn), "the slot confirmed past a transaction not wholly published").toBe(false);

      cdc = spawnCdc();
      await eventually(
        "the slot confirmed past the transaction after the restart",
        async () => {
          cdc.assertAlive();
          return slotConfirmedPast(commitAfter);
        },
        180_000,
      );
      const all = await countTransactionCommands(seq, `erp:${commitLsn}:`, rows);
      const foreign = await countForeignCommands(seq, `erp:${commitLsn}:`);
      console.log(
        `interrupted large transaction: ${partial.distinct} of ${rows} commands published before the kill; ` +
          `after the restart ${all.distinct} distinct, ${all.repeated} stored twice (re-sent envelopes that JetStream did not drop as duplicates: the worker skips them by id)`,
      );
      expect(all.distinct).toBe(rows);
      // The re-sent transaction used the same ids: nothing of it under any other id.
      expect(foreign).toBe(0);
    } finally {
      await cdc.kill();
    }
  }, 300_000);
});

/** Commands at or after `seq` from goods receipts whose ids do not start with `prefix`. */
async function countForeignCommands(fromSeq: number, prefix: string): Promise<number> {
  let foreign = 0;
  await forEachCommand(fromSeq, (c) => {
    if (c.source?.ref?.startsWith("goods_receipts:") && !c.id.startsWith(prefix)) foreign++;
  });
  return foreign;
}
/** The commit LSN in the ids of the first command published at or after `seq` (the large transaction's). */
async function transactionLsn(seq: number): Promise<string> {
  const m = await h.nats.jsm.streams.getMessage(h.topology.commandsStream, { seq });
  const envelope = decodeEnvelope(m!.data);
  if (!envelope.ok) throw new Error(envelope.reason);
  const id = (envelope.commands[0] as { id: string }).id;
  return id.split(":")[1]!;
}
