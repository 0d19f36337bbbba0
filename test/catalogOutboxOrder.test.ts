// The catalog outbox is sent in the order it was written: the last projection of a key written is the
// one left in the KV bucket, and the catalog subject carries a key's projections oldest first. Its ids
// cross a power of ten here (9 → 10), where their text order ("10" before "9") differs from theirs.
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CatalogPublisher } from "../cdc/index.ts";
import { migrate } from "../ledger/index.ts";
import { connectPostgres, type Sql } from "../src/platform/db.ts";
import { createLogger } from "../src/platform/log.ts";
import { connectNats, topology } from "../src/wire/index.ts";
import { dropTestDatabase, testContext, type TestContext } from "./support/context.ts";
import { eventually } from "./support/tally.ts";

let ctx: TestContext;
let sql: Sql;
let nc: NatsConnection;

beforeAll(async () => {
  ctx = await testContext();
  sql = connectPostgres(ctx.databaseUrl, { max: 4, application: "test-catalog-outbox-order" });
  await migrate(sql, ctx.env);
  nc = await connectNats(ctx.natsUrl, "test-catalog-outbox-order");
});
afterAll(async () => {
  await nc?.close();
  await sql?.end({ timeout: 5 });
  if (ctx) await dropTestDatabase(ctx);
});

describe("catalog outbox order", () => {
  it("a key's projections go out in the order written across ids 9 and 10: the bucket keeps the newer one", async () => {
    const t = topology(ctx.env, 4);
    const projection = (version: number, amount: number) => ({ sku: "sku-1", catalogVersion: version, prices: [{ amount }] });
    // Written in one page: version 1 at id 9, version 2 of the same key at id 10; other keys fill ids 1–8 and 11.
    for (let id = 1; id <= 11; id++) {
      const [version, sku, payload] =
        id === 9 ? [1, "sku-1", projection(1, 100)] : id === 10 ? [2, "sku-1", projection(2, 200)] : [1, `other-${id}`, { sku: `other-${id}` }];
      await sql`insert into catalog_outbox (id, version, channel, sku, payload) values (${id}, ${version}, 'web', ${sku}, ${sql.json(payload)})`;
    }
    const js = jetstream(nc);
    const publisher = new CatalogPublisher({
      sql,
      js,
      jsm: await jetstreamManager(nc),
      topology: t,
      log: createLogger("test", "silent"),
      pollMs: 50,
    }).start();
    try {
      await eventually("the catalog outbox sent", async () => {
        const [{ n }] = await sql<[{ n: number }]>`select count(*)::int as n from catalog_outbox`;
        return n === 0;
      });
    } finally {
      await publisher.stop();
    }
    const kv = await new Kvm(js).open(t.catalogBucket);
    const entry = await kv.get(t.catalogKey("web", "sku-1"));
    expect(entry?.json<{ catalogVersion: number }>().catalogVersion).toBe(2);
    // On the subject too: version 1, then version 2.
    const jsm = await jetstreamManager(nc);
    const stream = (await jsm.streams.find(t.catalogSubject("web", "sku-1")).catch(() => null)) as string | null;
    expect(stream).not.toBeNull();
    const versions: Array<number> = [];
    for (let seq = 1; ; seq++) {
      const msg = await jsm.streams.getMessage(stream!, { seq }).catch(() => null);
      if (!msg) break;
      if (msg.subject === t.catalogSubject("web", "sku-1")) versions.push(msg.json<{ catalogVersion: number }>().catalogVersion);
    }
    expect(versions).toEqual([1, 2]);
  });
});
