import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { waitForLedger } from "../cdc/index.ts";
import { beginResize } from "../ledger/index.ts";
import { resizePartitions } from "../src/operations/index.ts";
import { publishCommands, topology } from "../src/wire/index.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { commandMaker, eventually, harness, outcomeCounts, startInProcess, type Harness } from "./support/tally.ts";

let ctx: TestContext;
let h: Harness;
const OPTS = { partitions: 2, leaseTtlMs: 1500 };

beforeAll(async () => {
  ctx = await testContext();
  h = await harness(ctx, OPTS);
});
afterAll(async () => {
  await h?.close();
});

describe("reconciliation's wait for the ledger after a partition resize", () => {
  it("reads the layout the stream takes now, not the one its process last published under", async () => {
    const worker = await startInProcess(ctx, ["worker"], OPTS);
    try {
      const make = commandMaker("rr");
      const skus = Array.from({ length: 8 }, (_, i) => `RR-${i}`);
      const first = skus.map((sku) => make("receive", sku, { qty: 1 }));
      await publishCommands(h.nats.js, topology(h.settings.env, OPTS.partitions), first);
      await eventually(
        "the first receipts applied",
        async () =>
          (
            await outcomeCounts(
              h.sql,
              first.map((c) => c.id),
            )
          ).n === first.length,
        30_000,
      );
      // A resize recorded (as `tally partitions resize` does first), commands still published under the
      // old layout before its cut, then the resize finished: the old subjects' last messages lie past the cut.
      const cut = (await h.nats.jsm.streams.info(h.topology.commandsStream)).state.last_seq;
      await beginResize(h.sql, 1, 4, OPTS.partitions, cut);
      const late = skus.map((sku) => make("receive", sku, { qty: 1 }));
      await publishCommands(h.nats.js, topology(h.settings.env, OPTS.partitions), late);
      // While the resize drains, the wait does not read either layout's subjects: it waits for the switch.
      await h.sql`insert into cdc_sources (source, slot, publication, confirmed_lsn) values ('erp', 'slot', 'pub', '0/100')`;
      const stale = topology(h.settings.env, OPTS.partitions);
      const wait = { ledger: h.sql, jsm: h.nats.jsm, topology: stale, source: "erp", lsn: "0/100" };
      await expect(waitForLedger({ ...wait, timeoutMs: 300 })).rejects.toThrow(/a partition resize is still under way/);
      await resizePartitions({ sql: h.sql, jsm: h.nats.jsm, topology: topology(h.settings.env, OPTS.partitions) }, 4, { timeoutMs: 30_000 });
      expect(
        (
          await outcomeCounts(
            h.sql,
            late.map((c) => c.id),
          )
        ).n,
      ).toBe(late.length);
      // A cdc process that has not published since the resize still knows generation 0 (`stale`).
      await waitForLedger({ ...wait, timeoutMs: 5000 });
    } finally {
      await worker.close();
    }
  });
});
