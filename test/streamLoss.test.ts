import { mkdir, rm } from "node:fs/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { testContext, type TestContext } from "./support/context.ts";
import { startNats, type NatsServer } from "./support/nats.ts";
import { eventually, outcomeCounts } from "./support/tally.ts";
import { defineItems, startApi, type ApiFixture } from "./apiSupport.ts";

// This file owns its nats-server: it wipes its store.
let nats: NatsServer;
let ctx: TestContext;
let api: ApiFixture;

beforeAll(async () => {
  nats = await startNats();
  ctx = { ...(await testContext()), natsUrl: nats.url };
  api = await startApi(ctx, {}, ["worker"]);
  await defineItems(api.sql, [{ sku: "LOSS-A", kind: "stock", baseUnit: "EA", identifiers: [{ system: "barcode", id: "5000000000001" }] }]);
}, 60_000);
afterAll(async () => {
  await api?.close();
  await nats?.destroy();
});

const sale = (id: string) => ({
  transactions: [
    { store: "S01", terminal: "T1", id, occurredAt: "2026-11-26T10:00:00Z", lines: [{ type: "sale", barcode: "5000000000001", qty: 1 }] },
  ],
});
const post = (id: string) =>
  api.call({
    method: "POST",
    url: "/v1/pos/transactions",
    as: "pos",
    headers: { "content-type": "application/json" },
    payload: JSON.stringify(sale(id)),
  });
const commandId = (id: string) => `pos:S01:T1:${id}:1`;

describe("after the NATS store is lost", () => {
  it("POS sales answered 200 on the new stream are applied, not skipped below the old checkpoints; the reset is recorded", async () => {
    const before = Array.from({ length: 30 }, (_, i) => `before-${i}`);
    for (const id of before) expect((await post(id)).statusCode).toBe(200);
    await eventually(
      "the sales before the loss to apply",
      async () => (await outcomeCounts(api.sql, before.map(commandId))).n === before.length,
      30_000,
    );
    const [{ top }] = await api.sql<[{ top: number }]>`select max(last_seq)::int as top from partition_checkpoints`;
    expect(top).toBeGreaterThan(5);

    // Stop nats-server, delete its store, start it again: every stream and bucket is gone.
    await nats.stop();
    await rm(nats.storeDir, { recursive: true, force: true });
    await mkdir(nats.storeDir, { recursive: true });
    await nats.start();

    // Each sale is posted until it is answered 200 (a 503 while the topology is re-created is a
    // loud refusal, which the POS retries); every one answered 200 must then be applied.
    const after = Array.from({ length: 10 }, (_, i) => `after-${i}`);
    const statuses: Array<number> = [];
    for (const id of after)
      await eventually(
        `sale ${id} to be accepted`,
        async () => {
          const r = await post(id);
          statuses.push(r.statusCode);
          expect([200, 503]).toContain(r.statusCode);
          return r.statusCode === 200;
        },
        60_000,
      );
    await eventually(
      "the sales after the loss to apply",
      async () => (await outcomeCounts(api.sql, after.map(commandId))).n === after.length,
      60_000,
    );
    const { n, distinct } = await outcomeCounts(api.sql, [...before, ...after].map(commandId));
    expect({ n, distinct }).toEqual({ n: 40, distinct: 40 });

    const resets = await api.sql<
      Array<{ stream: string; checkpoints: Record<string, number> }>
    >`select stream, checkpoints from command_stream_resets`;
    expect(resets).toHaveLength(1);
    expect(resets[0]!.stream).toBe(api.h.topology.commandsStream);
    expect(Math.max(...Object.values(resets[0]!.checkpoints))).toBe(top);
    expect(api.tally!.worker!.metrics.streamResets).toBe(1);
  }, 180_000);
});
