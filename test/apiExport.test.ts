import { request } from "node:http";
import type { AddressInfo } from "node:net";
import { Readable } from "node:stream";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { pipeline } from "node:stream/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GENESIS_HASH, entryHash, verifyLedger } from "../ledger/index.ts";
import { EXPORT_SUMMARY_TRAILER, type ExportSummary } from "../ledger/export.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { auth, startApi, type ApiFixture } from "./apiSupport.ts";

const SKUS = 1000;
const PER_SKU = 1000; // 1,000,000 entries

let ctx: TestContext;
let api: ApiFixture;

beforeAll(async () => {
  ctx = await testContext();
  // No worker: the ledger is written directly, with valid hash chains, so verify can vouch for it.
  // A 10 s request budget: this test is about streaming 1M entries in flat memory; on a loaded CI machine the
  // first row can take longer than the default 2 s budget (which then answers 503 with Retry-After, as designed).
  api = await startApi(ctx, { background: false, requestTimeoutMs: 10_000 }, []);
  const t0 = Date.UTC(2026, 0, 1);
  // Each SKU's chain, with balance_after the running sum per location, hashed as the worker would.
  const withBalances = async function* () {
    for (let s = 0; s < SKUS; s++) {
      const sku = `BULK-${String(s).padStart(4, "0")}`;
      let prev = GENESIS_HASH;
      const running: Record<string, number> = {};
      let lines = "";
      for (let seq = 1; seq <= PER_SKU; seq++) {
        const sell = seq % 10 === 0;
        const location = seq % 3 === 0 ? "S01" : "DC1";
        const delta = sell ? -1 : 2;
        running[location] = (running[location] ?? 0) + delta;
        const at = new Date(t0 + s * PER_SKU + seq);
        const entry = {
          commandId: `bulk:${sku}:${seq}`,
          leg: 1,
          sku,
          location,
          bucket: "on_hand",
          delta,
          balanceAfter: running[location]!,
          movement: sell ? "sell" : "receive",
          sourceSystem: "bulk",
          sourceRef: `ref-${seq}`,
          occurredAt: at,
          recordedAt: at,
          skuSeq: seq,
        };
        const hash = entryHash(prev, entry);
        lines += `${entry.commandId}\t1\t${sku}\t${location}\ton_hand\t${delta}\t${entry.balanceAfter}\t${entry.movement}\tbulk\t${entry.sourceRef}\t${at.toISOString()}\t${at.toISOString()}\t${seq}\t${prev}\t${hash}\n`;
        prev = hash;
      }
      yield lines;
    }
  };
  const copy = await api.sql`
    copy ledger_entries (command_id, leg, sku, location, bucket, delta, balance_after, movement, source_system, source_ref,
                         occurred_at, recorded_at, sku_seq, prev_hash, hash) from stdin`.writable();
  await pipeline(Readable.from(withBalances()), copy);
  await api.sql`
    insert into balances (sku, location, bucket, qty, updated_at)
    select sku, location, bucket, sum(delta), now() from ledger_entries group by sku, location, bucket`;
  await api.sql`
    insert into sku_heads (sku, seq, last_hash, version, updated_at)
    select distinct on (sku) sku, sku_seq, hash, sku_seq, now() from ledger_entries order by sku, sku_seq desc`;
}, 300_000);
afterAll(async () => {
  await api?.close();
});

describe("GET /v1/ledger/export with 1,000,000 entries", () => {
  it("streams them all with flat memory, and its summary matches verify", async () => {
    await api.app.listen({ port: 0, host: "127.0.0.1" });
    const port = (api.app.server.address() as AddressInfo).port;
    // Live memory, not garbage V8 has yet to collect: collect before each sample.
    setFlagsFromString("--expose-gc");
    const gc = runInNewContext("gc") as () => void;
    gc();
    const baseline = process.memoryUsage();
    let peakHeap = baseline.heapUsed;
    let peakRss = baseline.rss;
    const sampler = setInterval(() => {
      gc();
      const m = process.memoryUsage();
      peakHeap = Math.max(peakHeap, m.heapUsed);
      peakRss = Math.max(peakRss, m.rss);
    }, 250);
    let bytes = 0;
    let newlines = 0;
    let trailer: string | undefined;
    // A slow-ish reader (the socket applies backpressure): memory must not grow with the export.
    await new Promise<void>((resolve, reject) => {
      const req = request({ host: "127.0.0.1", port, path: "/v1/ledger/export?format=ndjson", headers: auth("ledger") }, (res) => {
        expect(res.statusCode).toBe(200);
        res.on("data", (chunk: Buffer) => {
          bytes += chunk.length;
          for (let i = 0; i < chunk.length; i++) if (chunk[i] === 10) newlines++;
        });
        res.on("end", () => {
          trailer = res.trailers[EXPORT_SUMMARY_TRAILER];
          resolve();
        });
        res.on("error", reject);
      });
      req.on("error", reject);
      req.end();
    });
    clearInterval(sampler);
    const heapGrowthMb = (peakHeap - baseline.heapUsed) / 1024 / 1024;
    const rssGrowthMb = (peakRss - baseline.rss) / 1024 / 1024;
    console.log(
      `export: ${(bytes / 1024 / 1024).toFixed(0)} MiB streamed; heap growth ${heapGrowthMb.toFixed(1)} MiB, rss growth ${rssGrowthMb.toFixed(1)} MiB`,
    );
    expect(bytes).toBeGreaterThan(300 * 1024 * 1024); // what would have been held had it been buffered
    expect(heapGrowthMb).toBeLessThan(100);
    expect(newlines).toBe(SKUS * PER_SKU);
    const summary = JSON.parse(trailer!) as ExportSummary;
    const report = await verifyLedger(api.sql);
    expect(report).toMatchObject({ ok: true, entries: SKUS * PER_SKU, skus: SKUS });
    expect(summary.count).toBe(report.entries);
    const [sums] = await api.sql<[{ total: number }]>`select sum(qty)::float8 as total from balances where bucket = 'on_hand'`;
    expect(summary.sums[""]!.on_hand).toBe(sums.total);
    const [last] = await api.sql<[{ hash: string; entry_id: number }]>`select hash, entry_id from ledger_entries order by entry_id desc limit 1`;
    expect(summary).toMatchObject({ lastHash: last.hash, lastEntryId: last.entry_id });
  }, 300_000);
});
