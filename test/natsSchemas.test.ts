import { readFile, readdir } from "node:fs/promises";
import path from "node:path";
import type { Subscription } from "@nats-io/transport-node";
import { Ajv, type ValidateFunction } from "ajv";
import addFormats from "ajv-formats";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { instanceId } from "../ledger/index.ts";
import { natsJsonSchemas } from "../schemas/registry.ts";
import type { Command } from "../src/contract/command.ts";
import { deadLetter, publishDeadLetter } from "../src/wire/deadLetters.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { ROOT, commandMaker, eventually, harness, publishAndSettle, readStream, startInProcess, type Harness } from "./support/tally.ts";

const DIR = path.join(ROOT, "schemas/nats");

describe("the shipped JSON Schemas (schemas/nats/)", () => {
  it("are exactly what `npm run schemas` generates from the Effect schemas, file for file", async () => {
    const generated = natsJsonSchemas();
    const committed = (await readdir(DIR)).sort();
    expect(committed).toEqual([...generated.keys()].map((n) => `${n}.json`).sort());
    for (const [name, text] of generated)
      expect(await readFile(path.join(DIR, `${name}.json`), "utf8"), `${name}.json is stale: run npm run schemas`).toBe(text);
  });
});

/** Every shipped schema, compiled by ajv (strict, with formats), by file name without `.json`. */
async function shippedValidators(): Promise<Map<string, ValidateFunction>> {
  const ajv = new Ajv({ allErrors: true, strict: true });
  addFormats.default(ajv);
  const out = new Map<string, ValidateFunction>();
  for (const file of await readdir(DIR)) out.set(file.replace(/\.json$/, ""), ajv.compile(JSON.parse(await readFile(path.join(DIR, file), "utf8"))));
  return out;
}

let ctx: TestContext;
let h: Harness;
let tally: Awaited<ReturnType<typeof startInProcess>>;
let validators: Map<string, ValidateFunction>;
const core: Array<{ subject: string; data: unknown }> = [];
const subs: Array<Subscription> = [];

beforeAll(async () => {
  ctx = await testContext();
  h = await harness(ctx);
  validators = await shippedValidators();
  // Core NATS (not kept by any stream): collected from the start.
  for (const subject of [h.topology.outcomesSubject, h.topology.relaySubject]) {
    const sub = h.nats.nc.subscribe(subject);
    subs.push(sub);
    void (async () => {
      for await (const m of sub) core.push({ subject: m.subject, data: m.json() });
    })();
  }
  tally = await startInProcess(ctx, ["worker", "relay"]);
}, 60_000);
afterAll(async () => {
  for (const s of subs) s.unsubscribe();
  await tally?.close();
  await h?.close();
});

const cmd = commandMaker("ns");
const applyAll = (commands: ReadonlyArray<Command>) => publishAndSettle(h, commands);

/** Checks each message against its schema; returns the failures (where, which schema, ajv's errors) and counts per schema. */
function check(messages: ReadonlyArray<{ where: string; schema: string; data: unknown }>) {
  const failures: Array<string> = [];
  const counts: Record<string, number> = {};
  for (const m of messages) {
    const validate = validators.get(m.schema);
    if (!validate) {
      failures.push(`${m.where}: no schema ${m.schema}.json`);
      continue;
    }
    counts[m.schema] = (counts[m.schema] ?? 0) + 1;
    if (!validate(m.data)) failures.push(`${m.where} against ${m.schema}.json: ${JSON.stringify(validate.errors)} in ${JSON.stringify(m.data)}`);
  }
  return { failures, counts };
}

/** Produces every availability change and event kind the ledger raises, and dead letters. */
async function produce(): Promise<void> {
  const sku = "SCH-1";
  // A bundle of it: the relay derives its availability and publishes it as a SKU's, with its components.
  await h.sql`insert into items (sku, kind, base_unit, components, defined_by) values ('SCH-KIT', 'bundle', 'EA', '[{"sku":"SCH-1","qty":2}]', 'test')`;
  await applyAll([
    cmd("set_policy", sku, { safetyStock: 0, reorderPoint: 5 }),
    cmd("receive", sku, { qty: 10 }),
    cmd("sell", sku, { qty: 6 }), // low_stock
    cmd("sell", sku, { qty: 4 }), // out_of_stock
    cmd("sell", sku, { qty: 1 }), // negative_stock
    cmd("receive", sku, { qty: 30 }), // back_in_stock
    cmd("reserve", sku, { qty: 3, reservationId: "SCH-1:order:1", expiresAt: "2030-01-01T00:00:00Z" }),
    cmd("reserve", sku, { qty: 1000, reservationId: "SCH-1:order:2" }), // command_rejected + hold_refused
    cmd("fulfill", sku, { qty: 2, reservationId: "SCH-1:order:9" }), // fulfill_unreserved
    cmd("release", sku, { qty: 1, reservationId: "SCH-1:order:1" }),
  ]);
  await eventually(
    "the bundle's availability",
    async () => ((await h.nats.availability.get("web.SCH-KIT"))?.json<{ available: number }>().available ?? 0) > 0,
  );
  // Dead letters: an envelope of another version, and a command missing its fields.
  await h.nats.js.publish(h.topology.commandSubject(0), JSON.stringify({ v: 2, commands: [] }), { msgID: "schema-bad-envelope" });
  await h.nats.js.publish(h.topology.commandSubject(0), JSON.stringify({ v: 1, commands: [{ type: "sell", sku: "SCH-2" }] }), {
    msgID: "schema-bad-command",
  });
  await eventually("both dead letters", async () => (await readStream(h, h.topology.dlqStream, h.topology.dlqSubjects)).length >= 2, 30_000);
  // One too large for NATS: its payload is kept in Postgres and the letter says where (payloadStored).
  const sink = { js: h.nats.js, nc: h.nats.nc, sql: h.sql, topology: h.topology };
  await publishDeadLetter(sink, deadLetter("submit", "test: too large", "x".repeat(1_100_000), { line: 1 }));
  await tally.anchors!.round();
}

describe("every message Tally puts on NATS matches its shipped schema", () => {
  it("availability (KV values and subjects), events, dead letters, anchors, commands, outcomes and relay rounds", async () => {
    await produce();
    const t = h.topology;
    const messages: Array<{ where: string; schema: string; data: unknown }> = [];
    for await (const key of await h.nats.availability.keys()) {
      const entry = await h.nats.availability.get(key);
      messages.push({ where: `KV ${t.availabilityBucket} ${key}`, schema: "availability", data: entry!.json() });
    }
    for (const m of await readStream(h, t.availabilityStream, t.availabilitySubjects()))
      messages.push({ where: m.subject, schema: "availability", data: m.data });
    const events = await readStream(h, t.eventsStream, t.eventSubjects);
    for (const m of events) messages.push({ where: m.subject, schema: `event.${m.subject.split(".").pop()}`, data: m.data });
    const dead = await readStream(h, t.dlqStream, t.dlqSubjects);
    for (const m of dead) messages.push({ where: m.subject, schema: "dead-letter", data: m.data });
    for (const m of await readStream(h, t.anchorsStream, t.anchorsSubject)) messages.push({ where: m.subject, schema: "anchors", data: m.data });
    for (const m of await readStream(h, t.commandsStream, t.commandSubjects))
      if (!m.msgId?.startsWith("schema-bad-")) messages.push({ where: m.subject, schema: "commands", data: m.data });
    for (const m of core) messages.push({ where: m.subject, schema: m.subject === t.outcomesSubject ? "outcomes" : "relay", data: m.data });

    const { failures, counts } = check(messages);
    expect(failures).toEqual([]);
    for (const schema of [
      "availability",
      "event.low_stock",
      "event.out_of_stock",
      "event.negative_stock",
      "event.back_in_stock",
      "event.command_rejected",
      "event.hold_refused",
      "event.fulfill_unreserved",
      "dead-letter",
      "anchors",
      "commands",
      "outcomes",
      "relay",
    ])
      expect(counts[schema] ?? 0, `messages checked against ${schema}.json`).toBeGreaterThan(0);
    expect(counts["dead-letter"]).toBe(3);
    expect(dead.map((d) => (d.data as { origin: string; payloadStored?: unknown }).payloadStored !== undefined)).toEqual([false, false, true]);

    // Headers: projections carry `<instance>:<outbox id>`, dead letters `dlq:<origin>:…`.
    const instance = await instanceId(h.sql);
    for (const e of events) expect(e.msgId).toMatch(new RegExp(`^${instance}:\\d+$`));
    expect(dead.map((d) => d.msgId?.split(":").slice(0, 2).join(":"))).toEqual(["dlq:commands", "dlq:commands", "dlq:submit"]);
  });

  it("an alert (commands_stream_replaced, after the commands stream is lost) matches event.alert.json", async () => {
    const alerts: Array<unknown> = [];
    const sub = h.nats.nc.subscribe(h.topology.eventSubject("alert"));
    void (async () => {
      for await (const m of sub) alerts.push(m.json());
    })();
    try {
      await h.nats.jsm.streams.delete(h.topology.commandsStream);
      await eventually("the worker to notice and raise an alert", async () => alerts.length > 0, 60_000);
    } finally {
      sub.unsubscribe();
    }
    const { failures } = check(alerts.map((data) => ({ where: "alert", schema: "event.alert", data })));
    expect(failures).toEqual([]);
    expect(alerts[0]).toMatchObject({ type: "alert", kind: "commands_stream_replaced" });
  });

  it("a message that breaks its schema fails the check (the validators are strict)", () => {
    const low = {
      type: "low_stock",
      sku: "X",
      location: "S01",
      available: 3,
      reorderPoint: 5,
      replenishmentRequested: { reorderPoint: 5, shortfall: 2 },
      commandId: "c1",
      occurredAt: "2026-11-26T09:00:00Z",
      seq: 4,
    };
    expect(check([{ where: "ok", schema: "event.low_stock", data: low }]).failures).toEqual([]);
    const { replenishmentRequested, ...rest } = low;
    const old = { ...rest, replenishment_requested: replenishmentRequested };
    expect(check([{ where: "old field name", schema: "event.low_stock", data: old }]).failures).toHaveLength(1);
    expect(check([{ where: "past 2^53", schema: "event.low_stock", data: { ...low, available: "9007199254740993" } }]).failures).toEqual([]);
    expect(check([{ where: "fraction", schema: "event.low_stock", data: { ...low, available: 1.5 } }]).failures).toHaveLength(1);
    expect(check([{ where: "no zone", schema: "event.low_stock", data: { ...low, occurredAt: "2026-11-26T09:00:00" } }]).failures).toHaveLength(1);
  });
});
