/**
 * The physical limits of this machine, measured in the same run as Tally so that Tally's figures
 * read as ratios: batched ledger-shaped inserts into Postgres, JetStream envelope publish and
 * consume, and logical decoding of source changes into Node through pg-logical-replication.
 */
import { AckPolicy, DeliverPolicy } from "@nats-io/jetstream";
import { LogicalReplicationService, PgoutputPlugin } from "pg-logical-replication";
import { decodeCommand, type Command } from "../src/contract/index.ts";
import { encodeEnvelope, envelopeMsgId } from "../src/wire/index.ts";
import type { Sql } from "../src/platform/index.ts";
import type { NatsHandles } from "../src/wire/index.ts";

export interface Limits {
  /** Ledger-shaped rows per second, inserted 2,000 per statement. */
  readonly insertRowsPerSec: number;
  /** Commands per second published in 500-command envelopes, 8 awaited lanes. */
  readonly publishCommandsPerSec: number;
  /** Commands per second consumed (envelopes fetched and decoded). */
  readonly consumeCommandsPerSec: number;
  /** Row changes per second decoded from a pgoutput slot into Node. */
  readonly decodeChangesPerSec: number;
}

const rate = (n: number, ms: number) => Math.round((n / ms) * 1000);

export function benchCommands(n: number, prefix: string, skus: number): Array<Command> {
  const out: Array<Command> = [];
  for (let i = 0; i < n; i++) {
    const d = decodeCommand({
      id: `${prefix}:${i}`,
      type: "receive",
      sku: `L-${i % skus}`,
      location: "DC1",
      qty: 1,
      source: { system: "limit", ref: `r${i}` },
      occurredAt: "2026-11-26T10:00:00Z",
    });
    if (d._tag === "Left") throw d.left;
    out.push(d.right);
  }
  return out;
}

/** Batched inserts of ledger-shaped rows (the statement shape the ledger uses), into a scratch table. */
export async function measureInsert(sql: Sql, rows = 200_000): Promise<number> {
  await sql`create table if not exists limit_entries (like ledger_entries including defaults including identity)`;
  const batch = 2000;
  const t = performance.now();
  for (let i = 0; i < rows; i += batch) {
    const ids = Array.from({ length: batch }, (_, k) => `limit:${i + k}`);
    await sql`
      insert into limit_entries (command_id, leg, sku, location, bucket, delta, balance_after, movement, source_system, source_ref,
                                 occurred_at, recorded_at, sku_seq, prev_hash, hash)
      select c, 1, 'L-' || (n % 10000), 'DC1', 'on_hand', 1, n, 'receive', 'limit', c, now(), now(), n, repeat('0', 64), md5(c) || md5(c)
        from unnest(${sql.array(ids)}::text[]) with ordinality as t(c, n)`;
  }
  const result = rate(rows, performance.now() - t);
  await sql`drop table limit_entries`;
  return result;
}

/** Publish then consume `n` commands in envelopes on a scratch stream. */
export async function measureNats(nats: NatsHandles, n = 100_000): Promise<{ publish: number; consume: number }> {
  const stream = "LIMIT_PROBE";
  await nats.jsm.streams.add({ name: stream, subjects: ["limit.>"] });
  try {
    const commands = benchCommands(n, "probe", 10_000);
    const lanes = 8;
    let t = performance.now();
    await Promise.all(
      Array.from({ length: lanes }, async (_, lane) => {
        for (let i = lane * 500; i < commands.length; i += lanes * 500) {
          const chunk = commands.slice(i, i + 500);
          await nats.js.publish(`limit.${lane}`, encodeEnvelope(chunk), { msgID: envelopeMsgId(chunk.map((c) => c.id)) });
        }
      }),
    );
    const publish = rate(n, performance.now() - t);
    const info = await nats.jsm.consumers.add(stream, { ack_policy: AckPolicy.None, deliver_policy: DeliverPolicy.All });
    const consumer = await nats.js.consumers.get(stream, info.name);
    t = performance.now();
    let seen = 0;
    const messages = await consumer.consume({ max_messages: 1000 });
    for await (const m of messages) {
      seen += (JSON.parse(new TextDecoder().decode(m.data)) as { commands?: Array<unknown> }).commands?.length ?? 0;
      if (m.info.pending === 0) break;
    }
    const consume = rate(seen, performance.now() - t);
    messages.stop();
    return { publish, consume };
  } finally {
    await nats.jsm.streams.delete(stream).catch(() => {});
  }
}

/**
 * Writes `n` single-row changes into a scratch table of a source database, then times reading
 * them back through a pgoutput slot with pg-logical-replication (acknowledging as it goes).
 */
export async function measureDecoding(sourceSql: Sql, sourceUrl: string, n = 100_000): Promise<number> {
  await sourceSql`create table if not exists limit_changes (id bigserial primary key, item_no text not null, qty numeric(12, 3) not null)`;
  await sourceSql`drop publication if exists limit_pub`;
  await sourceSql`create publication limit_pub for table limit_changes`;
  await sourceSql`select pg_create_logical_replication_slot('limit_slot', 'pgoutput')`;
  try {
    for (let i = 0; i < n; i += 5000)
      await sourceSql`insert into limit_changes (item_no, qty) select 'I' || g, g % 17 + 0.5 from generate_series(1, ${Math.min(5000, n - i)}) g`;
    const service = new LogicalReplicationService({ connectionString: sourceUrl }, { acknowledge: { auto: true, timeoutSeconds: 0 } });
    const plugin = new PgoutputPlugin({ protoVersion: 1, publicationNames: ["limit_pub"] });
    let seen = 0;
    const t = performance.now();
    await new Promise<void>((resolve, reject) => {
      service.on("data", (_lsn: string, msg: { tag: string }) => {
        if (msg.tag === "insert" && ++seen >= n) resolve();
      });
      service.on("error", reject);
      service.subscribe(plugin, "limit_slot").catch(reject);
    });
    const result = rate(seen, performance.now() - t);
    await service.destroy();
    return result;
  } finally {
    await sourceSql`select pg_drop_replication_slot('limit_slot')`.catch(() => {});
    await sourceSql`drop publication if exists limit_pub`;
    await sourceSql`drop table if exists limit_changes`;
  }
}
