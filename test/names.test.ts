import type { AddressInfo } from "node:net";
import type { Msg } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodeToken, encodeToken, topology } from "../src/wire/topology.ts";
import { publishCommands } from "../src/wire/publisher.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { decodedCommands, eventually } from "./support/tally.ts";
import { auth, settle, startApi, type ApiFixture } from "./apiSupport.ts";

/** NATS KV keys: what @nats-io/kv accepts. */
const KV_KEY = /^[-/_=.A-Za-z0-9]+$/;

describe("encodeToken / decodeToken", () => {
  const samples = [
    "AUD.IT.1",
    "AUD*IT*2",
    "a>b",
    ">",
    "*",
    "two words",
    " lead",
    "Bröd 1kg",
    "日本",
    "🍌",
    "a=b",
    "=",
    "=3D",
    "a/b",
    "a:b",
    "tab\there",
    "PLAIN-1_x",
    "",
  ];

  it("makes every value one subject token and a valid KV key part, and reads it back", () => {
    for (const s of samples) {
      const token = encodeToken(s);
      expect(token, s).toMatch(/^[A-Za-z0-9_=-]+$/); // no '.', '*', '>', whitespace: one token
      expect(`web.${token}`, s).toMatch(KV_KEY);
      expect(decodeToken(token), s).toBe(s);
    }
    expect(new Set(samples.map(encodeToken)).size).toBe(samples.length); // one-to-one
    expect(encodeToken("AUD.IT.1")).toBe("AUD=2EIT=2E1");
    expect(encodeToken("Bröd 1kg")).toBe("Br=C3=B6d=201kg");
    expect(encodeToken("SKU-0001")).toBe("SKU-0001"); // the common case reads as it is
  });

  it("rejects what it never produces", () => {
    for (const bad of ["a.b", "a*", "=2", "=2e", "=ZZ", "a b", "=41"]) expect(decodeToken(bad), bad).toBeNull();
  });

  it("routes every user token through the topology: subjects, keys, POS stores, dead-letter origins", () => {
    const t = topology("dev", 16);
    expect(t.availabilitySubject("web.eu", "AUD.IT.1")).toBe("tally.dev.availability.web=2Eeu.AUD=2EIT=2E1");
    expect(t.availabilityKey("web", "AUD*IT*2")).toBe("web.AUD=2AIT=2A2");
    expect(t.availabilitySubjects("web")).toBe("tally.dev.availability.web.*");
    expect(t.skuOfAvailabilitySubject("web", t.availabilitySubject("web", "Bröd 1kg"))).toBe("Bröd 1kg");
    expect(t.skuOfAvailabilitySubject("store", t.availabilitySubject("web", "X"))).toBeNull();
    expect(t.storeOfPosSubject(t.posSubject("S.01 north"))).toBe("S.01 north");
    expect(t.posSubject()).toBe("tally.dev.pos.*");
    expect(t.dlqSubject("erp.main")).toBe("tally.dev.dlq.erp=2Emain");
  });
});

describe("SKUs with '.' and '*' end to end", () => {
  let ctx: TestContext;
  let api: ApiFixture;
  let base: string;
  const SKUS = ["AUD.IT.1", "AUD*IT*2"];

  beforeAll(async () => {
    ctx = await testContext();
    api = await startApi(ctx);
    await api.app.listen({ port: 0, host: "127.0.0.1" });
    base = `http://127.0.0.1:${(api.app.server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    await api?.close();
  });

  it("round-trip through availability subjects (a watch on web.*), the KV bucket, HTTP and SSE", async () => {
    // A channel developer's watch, written by hand from the documented subject layout.
    const watched: Array<Msg> = [];
    const sub = api.h.nats.nc.subscribe(`tally.${ctx.env}.availability.web.*`, { callback: (_, m) => void watched.push(m) });
    await api.h.nats.nc.flush();
    const sse = await fetch(`${base}/v1/availability/stream?channel=web&skus=${SKUS.join(",")}`, { headers: auth("webReader") });
    expect(sse.status).toBe(200);
    const reading = readEvents(sse, 2);
    await new Promise((r) => setTimeout(r, 200)); // the SSE consumer starts at "now"

    const commands = decodedCommands(
      SKUS.map((sku, i) => ({
        id: `names:${i}`,
        type: "receive",
        sku,
        location: "DC1",
        qty: 10 + i,
        source: { system: "erp", ref: `r${i}` },
        occurredAt: "2026-11-26T10:00:00Z",
      })),
    );
    await publishCommands(api.h.nats.js, api.h.topology, commands);
    await settle(
      api.h,
      commands.map((c) => c.id),
    );

    // Subjects: one message per SKU on web.*, the SKU readable back from its last token.
    await eventually("the watch on web.* to see both SKUs", async () => watched.length >= 2);
    sub.unsubscribe();
    const bySubject = new Map(watched.map((m) => [decodeToken(m.subject.split(".").at(-1)!), m.json<{ sku: string; onHand: number }>()]));
    expect([...bySubject.keys()].sort()).toEqual([...SKUS].sort());
    for (const sku of SKUS) expect(bySubject.get(sku)!.sku).toBe(sku);

    // KV: the documented key, and a key listing, give the SKU back.
    for (const [i, sku] of SKUS.entries()) {
      const entry = await api.h.nats.availability.get(`web.${encodeToken(sku)}`);
      expect(entry?.json<{ sku: string; onHand: number }>()).toMatchObject({ sku, onHand: 10 + i });
    }
    const keys: Array<string> = [];
    for await (const k of await api.h.nats.availability.keys("web.*")) keys.push(k);
    expect(keys.map((k) => decodeToken(k.slice("web.".length))).sort()).toEqual([...SKUS].sort());

    // HTTP: one SKU in the path, many in the query.
    for (const [i, sku] of SKUS.entries()) {
      const one = await api.call({ method: "GET", url: `/v1/availability/${encodeURIComponent(sku)}?channel=web`, as: "reader" });
      expect(one.statusCode).toBe(200);
      expect(one.json()).toMatchObject({ sku, onHand: 10 + i, available: 10 + i - 2 });
    }
    const many = await api.call({ method: "GET", url: `/v1/availability?channel=web&skus=${encodeURIComponent(SKUS.join(","))}`, as: "reader" });
    expect(many.statusCode).toBe(200);
    expect(JSON.stringify(many.json())).toContain("AUD*IT*2");

    // SSE: both, filtered by the SKUs as given.
    const events = await reading;
    expect(events.map((e) => (JSON.parse(e.data) as { sku: string }).sku).sort()).toEqual([...SKUS].sort());
  });
});

/** Reads server-sent events from a live response until `count` arrived. */
async function readEvents(res: Response, count: number, timeoutMs = 30_000): Promise<Array<{ event: string; data: string }>> {
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  const events: Array<{ event: string; data: string }> = [];
  let buffer = "";
  const deadline = Date.now() + timeoutMs;
  while (events.length < count) {
    const chunk = await Promise.race([
      reader.read(),
      new Promise<never>((_, rej) =>
        setTimeout(() => rej(new Error(`only ${events.length} of ${count} events`)), Math.max(1, deadline - Date.now())),
      ),
    ]);
    if (chunk.done) break;
    buffer += decoder.decode(chunk.value, { stream: true });
    let sep: number;
    while ((sep = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, sep);
      buffer = buffer.slice(sep + 2);
      const fields = Object.fromEntries(
        block
          .split("\n")
          .filter((l) => l && !l.startsWith(":"))
          .map((l) => [l.slice(0, l.indexOf(":")), l.slice(l.indexOf(":") + 1).trimStart()]),
      );
      if (fields.event === "availability" && fields.data !== undefined) events.push({ event: fields.event, data: fields.data });
    }
  }
  await reader.cancel().catch(() => {});
  return events;
}
