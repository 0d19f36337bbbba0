/**
 * Browsers (issue 13): CORS for configured origins, short-lived stream tokens minted by a shop's backend, and the
 * snapshot → stream hand-off (no gap, no duplicate), down to a real Chromium page on another origin.
 */
import { existsSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { Writable } from "node:stream";
import type { FastifyInstance } from "fastify";
import { chromium, type Browser } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodeCommand, type Command } from "../src/contract/command.ts";
import { StreamTokens } from "../src/http/auth.ts";
import { buildApp } from "../src/http/server.ts";
import { createLogger } from "../src/platform/log.ts";
import { loadSettings } from "../src/platform/settings.ts";
import { publishCommands } from "../src/wire/publisher.ts";
import { auth, settle, startApi, TOKENS, type ApiFixture, type TokenName } from "./apiSupport.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { publishAndSettle, TEST_CHANNELS } from "./support/tally.ts";

const SECRET = "browser-test-secret-0123456789abcdef0123456789";

let ctx: TestContext;
let api: ApiFixture;
/** The API with CORS for `allowed` and stream tokens, listening; `logged` is everything it logged (debug). */
let app: FastifyInstance;
let base: string;
let logged = "";
let page: Server;
let other: Server;
let allowed: string;
let disallowed: string;

/** A tiny static server: every path answers an empty HTML page (the test drives it with page.evaluate). */
async function staticServer(): Promise<[Server, string]> {
  const server = createServer((_req, res) => res.writeHead(200, { "content-type": "text/html" }).end("<!doctype html><title>shop</title>"));
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return [server, `http://127.0.0.1:${(server.address() as AddressInfo).port}`];
}

beforeAll(async () => {
  ctx = await testContext();
  api = await startApi(ctx);
  [page, allowed] = await staticServer();
  [other, disallowed] = await staticServer();
  const sink = new Writable({
    write(chunk, _enc, done) {
      logged += String(chunk);
      done();
    },
  });
  app = await buildApp({
    settings: { ...api.h.settings, corsOrigins: [allowed], streamTokenSecret: SECRET },
    config: TEST_CHANNELS,
    topology: api.h.topology,
    sql: api.sql,
    nats: api.h.nats,
    log: createLogger("test-browser", "debug", sink),
    tokens: TOKENS,
    options: { background: false },
  });
  await app.listen({ port: 0, host: "127.0.0.1" });
  base = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  await app?.close();
  await api?.close();
  page?.close();
  other?.close();
});

let n = 0;
const receive = (sku: string, qty: number, location = "DC1"): Command => {
  const d = decodeCommand({
    id: `br:${++n}`,
    type: "receive",
    sku,
    location,
    qty,
    source: { system: "erp", ref: `b${n}` },
    occurredAt: "2026-11-30T10:00:00Z",
  });
  if (d._tag === "Left") throw d.left;
  return d.right;
};
const apply = (commands: ReadonlyArray<Command>) => publishAndSettle(api.h, commands);

async function mint(as: TokenName, body: Record<string, unknown> = {}): Promise<Response> {
  return fetch(`${base}/v1/stream-tokens`, {
    method: "POST",
    headers: { ...auth(as), "content-type": "application/json" },
    body: JSON.stringify(body),
  });
}
async function streamToken(channel = "web"): Promise<string> {
  const r = await mint("reader", { channel });
  expect(r.status).toBe(200);
  return ((await r.json()) as { token: string }).token;
}

interface View {
  sku: string;
  seq: number;
  onHand: number;
}
interface Event {
  id: number;
  event: string;
  view: View;
}

/** Reads server-sent events until `done` says so (or the deadline), then cancels the response. */
async function readUntil(res: Response, done: (events: ReadonlyArray<Event>) => boolean, timeoutMs = 20_000): Promise<Array<Event>> {
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  const events: Array<Event> = [];
  let buffer = "";
  const deadline = Date.now() + timeoutMs;
  while (!done(events)) {
    const left = deadline - Date.now();
    const chunk = await Promise.race([reader.read(), new Promise<null>((r) => setTimeout(() => r(null), Math.max(1, left)))]);
    if (chunk === null || chunk.done) break;
    buffer += decoder.decode(chunk.value, { stream: true });
    for (let sep = buffer.indexOf("\n\n"); sep >= 0; sep = buffer.indexOf("\n\n")) {
      const fields = Object.fromEntries(
        buffer
          .slice(0, sep)
          .split("\n")
          .filter((l) => l && !l.startsWith(":"))
          .map((l) => [l.slice(0, l.indexOf(":")), l.slice(l.indexOf(":") + 1).trimStart()]),
      );
      buffer = buffer.slice(sep + 2);
      if (fields.data !== undefined) events.push({ id: Number(fields.id), event: fields.event ?? "message", view: JSON.parse(fields.data) as View });
    }
  }
  await reader.cancel().catch(() => {});
  return events;
}

describe("POST /v1/stream-tokens", () => {
  it("mints a token for the caller's channel, or the one named; refuses other channels, unknown ones and bad lifetimes", async () => {
    const r = await mint("webReader", { ttlSeconds: 60 });
    expect(r.status).toBe(200);
    const body = (await r.json()) as { token: string; channel: string; expiresAt: string };
    expect(body.channel).toBe("web");
    expect(body.token).toMatch(/^tlys_[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/);
    expect(Math.abs(new Date(body.expiresAt).getTime() - (Date.now() + 60_000))).toBeLessThan(5000);
    const byDefault = (await (await mint("reader", { channel: "store_s01" })).json()) as { expiresAt: string };
    expect(Math.abs(new Date(byDefault.expiresAt).getTime() - (Date.now() + 300_000))).toBeLessThan(5000);
    expect((await mint("reader")).status).toBe(400); // no channel on the token nor in the body
    expect((await mint("storeReader", { channel: "web" })).status).toBe(403);
    expect((await mint("reader", { channel: "moon" })).status).toBe(404);
    expect((await mint("ledger", { channel: "web" })).status).toBe(403); // lacks availability:read
    const tooLong = await mint("reader", { channel: "web", ttlSeconds: 3600 });
    expect(tooLong.status).toBe(400);
    expect(JSON.stringify(await tooLong.json())).toContain("ttlSeconds");
  });

  it("answers 503 naming the setting when no secret is configured (replicas must share it, so none is made up)", async () => {
    const r = await api.call({ method: "POST", url: "/v1/stream-tokens", as: "webReader", payload: {} });
    expect(r.statusCode).toBe(503);
    expect(r.json()).toMatchObject({ code: "stream_tokens_disabled", status: 503 });
    expect(r.headers["content-type"]).toContain("application/problem+json");
    expect(r.json().detail).toContain("TALLY_STREAM_TOKEN_SECRET");
  });
});

describe("a stream token", () => {
  beforeAll(async () => {
    await apply([receive("TOK-1", 4)]);
  });

  it("reads its channel's snapshot and stream as ?access_token=, and nothing else", async () => {
    const token = await streamToken("web");
    const snap = await fetch(`${base}/v1/availability?channel=web&skus=TOK-1&access_token=${token}`);
    expect(snap.status).toBe(200);
    expect(((await snap.json()) as { items: Array<View> }).items[0]).toMatchObject({ sku: "TOK-1", onHand: 4 });
    const controller = new AbortController();
    const stream = await fetch(`${base}/v1/availability/stream?skus=TOK-1&access_token=${token}`, { signal: controller.signal });
    expect(stream.status).toBe(200); // the channel defaults to the token's
    controller.abort();
    // Another channel: forbidden. Any other route, the header instead of the query, or a write: not a token.
    expect((await fetch(`${base}/v1/availability?channel=store_s01&skus=TOK-1&access_token=${token}`)).status).toBe(403);
    expect((await fetch(`${base}/v1/availability/TOK-1?channel=web&access_token=${token}`)).status).toBe(401);
    expect((await fetch(`${base}/v1/stock/TOK-1?access_token=${token}`)).status).toBe(401);
    expect((await fetch(`${base}/v1/availability?channel=web&skus=TOK-1`, { headers: { authorization: `Bearer ${token}` } })).status).toBe(401);
    const write = await fetch(`${base}/v1/stream-tokens?access_token=${token}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{}",
    });
    expect(write.status).toBe(401);
    expect(((await write.json()) as { detail: string }).detail).toContain("accepted only by the availability and catalog snapshots and streams");
  });

  it("reads its channel's catalog delta feed and catalog stream as ?access_token=, and no other channel's", async () => {
    const token = await streamToken("web");
    const feed = await fetch(`${base}/v1/catalog?channel=web&access_token=${token}`);
    expect(feed.status).toBe(200);
    expect(await feed.json()).toMatchObject({ channel: "web", nextCursor: null });
    const stream = await fetch(`${base}/v1/catalog/stream?access_token=${token}`); // the channel defaults to the token's
    expect(stream.status).toBe(200);
    expect(stream.headers.get("content-type")).toMatch(/text\/event-stream/);
    const reading = readUntil(stream, (es) => es.length >= 1);
    // As the relay publishes catalog projections: another channel's first, which the token's stream must not carry.
    await publishCatalog("store_s01", "CAT-1", 111);
    await publishCatalog("web", "CAT-1", 222);
    const events = await reading;
    expect(events.map((e) => [e.event, e.view as unknown])).toEqual([["catalog", expect.objectContaining({ channel: "web", sku: "CAT-1" })]]);
    // A token for web cannot read store_s01's catalog, nor a store_s01 token web's.
    expect((await fetch(`${base}/v1/catalog?channel=store_s01&access_token=${token}`)).status).toBe(403);
    expect((await fetch(`${base}/v1/catalog/stream?channel=store_s01&access_token=${token}`)).status).toBe(403);
    expect((await fetch(`${base}/v1/catalog/stream?channel=web&access_token=${await streamToken("store_s01")}`)).status).toBe(403);
    // The catalog's other routes are not a page's: the item, the versions, an acknowledgement.
    expect((await fetch(`${base}/v1/catalog/CAT-1?channel=web&access_token=${token}`)).status).toBe(401);
    expect((await fetch(`${base}/v1/catalog/versions?access_token=${token}`)).status).toBe(401);
    const ack = await fetch(`${base}/v1/channels/web/catalog-ack?access_token=${token}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ version: 0 }),
    });
    expect(ack.status).toBe(401);
  });

  it("is refused when expired, forged, signed with another secret or tampered with (401)", async () => {
    const url = (t: string) => `${base}/v1/availability?channel=web&skus=TOK-1&access_token=${encodeURIComponent(t)}`;
    const ours = new StreamTokens(SECRET);
    const expired = ours.mint("reader", "web", 60, Date.now() - 120_000).token;
    const r = await fetch(url(expired));
    expect(r.status).toBe(401);
    expect(((await r.json()) as { detail: string }).detail).toContain("expired");
    expect((await fetch(url(new StreamTokens(`${SECRET}-other`).mint("reader", "web", 60).token))).status).toBe(401);
    // Claims rewritten to another channel (the signature no longer matches), or to a later expiry.
    const [body, sig] = (await streamToken("store_s01")).slice("tlys_".length).split(".");
    const claims = JSON.parse(Buffer.from(body!, "base64url").toString()) as Record<string, unknown>;
    const forged = Buffer.from(JSON.stringify({ ...claims, ch: "web" })).toString("base64url");
    expect((await fetch(url(`tlys_${forged}.${sig}`))).status).toBe(401);
    expect((await fetch(url(`tlys_${body}.${sig}x`))).status).toBe(401);
    expect((await fetch(url("tlys_garbage"))).status).toBe(401);
    expect((await fetch(url("secret-reader"))).status).toBe(401); // a configured token in the URL is not accepted either
    expect(ours.verify(expired)).toBe("expired");
    expect(ours.verify(ours.mint("reader", "web", 60).token)).toMatchObject({ id: "stream:reader", channel: "web" });
  });

  it("never reaches the log: request lines show access_token=***", async () => {
    const token = await streamToken("web");
    logged = "";
    expect((await fetch(`${base}/v1/availability?channel=web&skus=TOK-1&access_token=${token}`)).status).toBe(200);
    expect((await fetch(`${base}/v1/availability?channel=web&skus=TOK-1&access_token=${token}x`)).status).toBe(401);
    await new Promise((r) => setTimeout(r, 100));
    expect(logged).toContain("access_token=***");
    expect(logged).not.toContain(token.slice(5, 40));
  });
});

/** A catalog projection on the catalog stream, as the relay publishes it (the catalog stream exists once a catalog stream was opened). */
async function publishCatalog(channel: string, sku: string, amount: number): Promise<void> {
  const item = {
    channel,
    sku,
    name: sku,
    status: "active",
    unit: "EA",
    price: { amount, currency: "EUR" },
    validUntil: null,
    catalogVersion: amount,
  };
  await api.h.nats.js.publish(api.h.topology.catalogSubject(channel, sku), JSON.stringify(item));
}

/** Every availability message of the stream, oldest first: the ground truth the hand-off is checked against. */
async function streamMessages(): Promise<Array<{ seq: number; subject: string; view: View }>> {
  const { jsm } = api.h.nats;
  const stream = api.h.topology.availabilityStream;
  const { first_seq, last_seq } = (await jsm.streams.info(stream)).state;
  const out = [];
  for (let seq = Math.max(1, first_seq); seq <= last_seq; seq++) {
    const m = await jsm.streams.getMessage(stream, { seq });
    if (m) out.push({ seq: m.seq, subject: m.subject, view: m.json<View>() });
  }
  return out;
}

interface Snapshot {
  lastEventId: number;
  items: Array<View>;
}

describe("the snapshot → stream hand-off", () => {
  it("delivers the changes made between the snapshot and the stream's opening exactly once, and nothing the snapshot had", async () => {
    await apply([receive("HO-1", 1), receive("HO-2", 1)]);
    const snap = (await (await fetch(`${base}/v1/availability?channel=web&skus=HO-1,HO-2`, { headers: auth("webReader") })).json()) as Snapshot;
    expect(snap.items.map((i) => [i.sku, i.onHand])).toEqual([
      ["HO-1", 1],
      ["HO-2", 1],
    ]);
    await apply([receive("HO-1", 2)]);
    await apply([receive("HO-2", 3)]);
    await apply([receive("HO-1", 4)]);
    const res = await fetch(`${base}/v1/availability/stream?channel=web&skus=HO-1,HO-2&lastEventId=${snap.lastEventId}`, {
      headers: auth("webReader"),
    });
    const reading = readUntil(res, (es) => es.some((e) => e.view.sku === "HO-2" && e.view.onHand === 9));
    await new Promise((r) => setTimeout(r, 300)); // anything repeated would come first
    await apply([receive("HO-2", 5)]); // a change after the opening, the last one expected
    const events = await reading;
    expect(events.map((e) => [e.view.sku, e.view.onHand])).toEqual([
      ["HO-1", 3],
      ["HO-2", 4],
      ["HO-1", 7],
      ["HO-2", 9],
    ]);
    expect(events.every((e) => e.id > snap.lastEventId && e.event === "availability")).toBe(true);
    const seqOf = new Map(snap.items.map((i) => [i.sku, i.seq]));
    for (const e of events) expect(e.view.seq).toBeGreaterThan(seqOf.get(e.view.sku)!);
  });

  it("on a reconnect, EventSource's Last-Event-ID header wins over the snapshot position left in the URL", async () => {
    await apply([receive("RC-1", 1)]);
    const snap = (await (await fetch(`${base}/v1/availability?channel=web&skus=RC-1`, { headers: auth("webReader") })).json()) as Snapshot;
    await apply([receive("RC-1", 1)]);
    await apply([receive("RC-1", 1)]);
    const url = `${base}/v1/availability/stream?channel=web&skus=RC-1&lastEventId=${snap.lastEventId}`;
    const first = await readUntil(await fetch(url, { headers: auth("webReader") }), (es) => es.length >= 2);
    expect(first.map((e) => e.view.onHand)).toEqual([2, 3]);
    const again = await fetch(url, { headers: { ...auth("webReader"), "last-event-id": String(first[0]!.id) } });
    const rest = await readUntil(again, (es) => es.length >= 1, 3000);
    expect(rest.map((e) => [e.id, e.view.onHand])).toEqual([[first[1]!.id, 3]]);
  });

  it("takes a SKU whose changes have left the stream from the KV bucket, and one never stocked in the channel as 0", async () => {
    await apply([receive("OLD-1", 6), receive("NEVER-1", 1, "DC9")]);
    // As if OLD-1's last change were older than the stream keeps.
    await api.h.nats.jsm.streams.purge(api.h.topology.availabilityStream, { filter: api.h.topology.availabilitySubject("web", "OLD-1") });
    const r = await fetch(`${base}/v1/availability?channel=web&skus=OLD-1,NEVER-1,NOPE-1`, { headers: auth("webReader") });
    const body = (await r.json()) as Snapshot & { unknown: Array<string> };
    expect(body.items.map((i) => [i.sku, i.onHand])).toEqual([
      ["OLD-1", 6],
      ["NEVER-1", 0],
    ]);
    expect(body.unknown).toEqual(["NOPE-1"]);
  });

  it("holds while changes keep coming: the snapshot is the stream as of its position, and the stream after it is every later change once", async () => {
    const skus = ["HC-1", "HC-2", "HC-3"];
    await apply(skus.map((s) => receive(s, 1)));
    const writes: Array<Command> = [];
    let writing = true;
    const writer = (async () => {
      for (let i = 0; writing || i < 10; i++) {
        const batch = skus.map((s) => receive(s, 1));
        writes.push(...batch);
        await publishCommands(api.h.nats.js, api.h.topology, batch);
        await new Promise((r) => setTimeout(r, 15));
      }
    })();
    await new Promise((r) => setTimeout(r, 400));
    const snapshots: Array<Snapshot> = [];
    for (let i = 0; i < 5; i++) {
      snapshots.push(
        (await (await fetch(`${base}/v1/availability?channel=web&skus=${skus.join(",")}`, { headers: auth("webReader") })).json()) as Snapshot,
      );
      await new Promise((r) => setTimeout(r, 50));
    }
    const snap = snapshots[2]!;
    const res = await fetch(`${base}/v1/availability/stream?channel=web&skus=${skus.join(",")}&lastEventId=${snap.lastEventId}`, {
      headers: auth("webReader"),
    });
    writing = false;
    await writer;
    await settle(
      api.h,
      writes.map((c) => c.id),
    );
    const truth = (await streamMessages()).filter(
      (m) => m.subject.startsWith(api.h.topology.availabilitySubjects("web").slice(0, -1)) && skus.includes(m.view.sku),
    );
    const expected = truth.filter((m) => m.seq > snap.lastEventId);
    expect(expected.length, "changes came after the snapshot").toBeGreaterThan(5);
    const events = await readUntil(res, (es) => es.length >= expected.length);
    await new Promise((r) => setTimeout(r, 200));
    expect(events.map((e) => [e.id, e.view.sku, e.view.seq])).toEqual(expected.map((m) => [m.seq, m.view.sku, m.view.seq]));
    // Each snapshot is exactly the last change of each SKU at or before its position.
    for (const s of snapshots)
      for (const item of s.items) {
        const asOf = truth.filter((m) => m.view.sku === item.sku && m.seq <= s.lastEventId).at(-1);
        expect(item.seq, `${item.sku} as of ${s.lastEventId}`).toBe(asOf?.view.seq);
      }
  });
});

describe("CORS (TALLY_CORS_ORIGINS)", () => {
  it("answers the listed origin, on preflights, snapshots, streams and refusals; any other origin gets no CORS header", async () => {
    const snapshot = `${base}/v1/availability?channel=web&skus=TOK-1`;
    const ok = await fetch(snapshot, { headers: { ...auth("webReader"), origin: allowed } });
    expect(ok.headers.get("access-control-allow-origin")).toBe(allowed);
    expect(ok.headers.get("vary")).toMatch(/origin/i);
    const refused = await fetch(snapshot, { headers: { origin: allowed } });
    expect(refused.status).toBe(401);
    expect(refused.headers.get("access-control-allow-origin")).toBe(allowed); // the page can read why
    const preflight = await fetch(`${base}/v1/availability/stream`, {
      method: "OPTIONS",
      headers: { origin: allowed, "access-control-request-method": "GET", "access-control-request-headers": "authorization,last-event-id" },
    });
    expect(preflight.status).toBe(204);
    expect(preflight.headers.get("access-control-allow-origin")).toBe(allowed);
    expect(preflight.headers.get("access-control-allow-headers")).toContain("last-event-id");
    const controller = new AbortController();
    const stream = await fetch(`${base}/v1/availability/stream?channel=web`, {
      headers: { ...auth("webReader"), origin: allowed },
      signal: controller.signal,
    });
    expect(stream.headers.get("access-control-allow-origin")).toBe(allowed);
    expect(stream.headers.get("content-type")).toMatch(/text\/event-stream/);
    controller.abort();

    for (const origin of [disallowed, allowed.replace("127.0.0.1", "localhost"), `${allowed}.evil.example`]) {
      const r = await fetch(snapshot, { headers: { ...auth("webReader"), origin } });
      expect(r.status).toBe(200);
      expect(r.headers.get("access-control-allow-origin"), origin).toBeNull();
    }
    // Not configured (the default): no CORS at all.
    const none = await api.call({ method: "GET", url: "/v1/availability?channel=web&skus=TOK-1", as: "webReader", headers: { origin: allowed } });
    expect(none.headers["access-control-allow-origin"]).toBeUndefined();
  });
});

/** Debian's `chromium` (installed by .ci/run), or TALLY_CHROMIUM. */
function chromiumPath(): string {
  const candidates = [process.env.TALLY_CHROMIUM, "/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"];
  const found = candidates.find((c): c is string => c !== undefined && c !== "" && existsSync(c));
  if (!found) throw new Error("no Chromium: install Debian's chromium package (apt-get install chromium) or set TALLY_CHROMIUM");
  return found;
}

describe("a web shop's page in Chromium", () => {
  let browser: Browser | null = null;
  afterAll(async () => {
    await browser?.close();
  });
  const launch = async (): Promise<Browser> =>
    (browser ??= await chromium.launch({
      executablePath: chromiumPath(),
      args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
    }));

  it("takes a snapshot with a stream token, streams from its position with EventSource, and sees a later change; another origin is refused", async () => {
    await apply([receive("WEB-1", 2)]);
    browser = await launch();
    const shop = await browser.newPage();
    await shop.goto(`${allowed}/`);
    const token = await streamToken("web"); // minted by the shop's backend
    const snap = await shop.evaluate(
      async ({ api, token }) => {
        const q = `channel=web&skus=WEB-1&access_token=${encodeURIComponent(token)}`;
        const snapshot = (await (await fetch(`${api}/v1/availability?${q}`)).json()) as { lastEventId: number; items: Array<{ onHand: number }> };
        const w = window as unknown as { events: Array<unknown>; opened: boolean };
        w.events = [];
        const source = new EventSource(`${api}/v1/availability/stream?${q}&lastEventId=${snapshot.lastEventId}`);
        source.addEventListener("availability", (e) =>
          w.events.push({ id: (e as MessageEvent).lastEventId, view: JSON.parse((e as MessageEvent).data) }),
        );
        source.onopen = () => (w.opened = true);
        return snapshot;
      },
      { api: base, token },
    );
    expect(snap.items[0]!.onHand).toBe(2);
    await shop.waitForFunction(() => (window as unknown as { opened?: boolean }).opened === true);
    await apply([receive("WEB-1", 5)]);
    await shop.waitForFunction(() => (window as unknown as { events: Array<unknown> }).events.length > 0, undefined, { timeout: 20_000 });
    const events = (await shop.evaluate(() => (window as unknown as { events: Array<{ id: string; view: View }> }).events)) as Array<{
      id: string;
      view: View;
    }>;
    expect(events.map((e) => e.view.onHand)).toEqual([7]);
    expect(Number(events[0]!.id)).toBeGreaterThan(snap.lastEventId);

    const stranger = await browser.newPage();
    await stranger.goto(`${disallowed}/`);
    const outcome = await stranger.evaluate(
      async ({ api, token }) => {
        try {
          const r = await fetch(`${api}/v1/availability?channel=web&skus=WEB-1&access_token=${encodeURIComponent(token)}`);
          return `read ${r.status}`;
        } catch (error) {
          return `refused: ${(error as Error).name}`;
        }
      },
      { api: base, token },
    );
    expect(outcome).toBe("refused: TypeError");
    // A refusal to an allowed page is readable: it can tell an expired token (mint a new one) from a network failure.
    const expired = new StreamTokens(SECRET).mint("reader", "web", 60, Date.now() - 120_000).token;
    const status = await shop.evaluate(
      async ({ api, token }) => (await fetch(`${api}/v1/availability?channel=web&skus=WEB-1&access_token=${encodeURIComponent(token)}`)).status,
      { api: base, token: expired },
    );
    expect(status).toBe(401);
  }, 60_000);

  it("follows its channel's catalog with EventSource and a stream token", async () => {
    const shop = await (await launch()).newPage();
    await shop.goto(`${allowed}/`);
    const token = await streamToken("web");
    await shop.evaluate(
      ({ api, token }) => {
        const w = window as unknown as { catalog: Array<unknown>; opened: boolean };
        w.catalog = [];
        const source = new EventSource(`${api}/v1/catalog/stream?access_token=${encodeURIComponent(token)}`);
        source.addEventListener("catalog", (e) => w.catalog.push(JSON.parse((e as MessageEvent).data)));
        source.onopen = () => (w.opened = true);
      },
      { api: base, token },
    );
    await shop.waitForFunction(() => (window as unknown as { opened?: boolean }).opened === true);
    await publishCatalog("store_s01", "CAT-2", 300);
    await publishCatalog("web", "CAT-2", 310);
    await shop.waitForFunction(() => (window as unknown as { catalog: Array<unknown> }).catalog.length > 0, undefined, { timeout: 20_000 });
    await new Promise((r) => setTimeout(r, 200)); // anything else would have come by now
    const items = await shop.evaluate(
      () => (window as unknown as { catalog: Array<{ channel: string; sku: string; price: { amount: number } }> }).catalog,
    );
    expect(items.map((i) => [i.channel, i.sku, i.price.amount])).toEqual([["web", "CAT-2", 310]]);
  }, 60_000);
});

describe("the browser settings", () => {
  it("reads TALLY_CORS_ORIGINS as exact origins and TALLY_STREAM_TOKEN_SECRET; refuses bad ones naming the setting", () => {
    const s = loadSettings({ TALLY_CORS_ORIGINS: "https://Shop.example, http://localhost:3000", TALLY_STREAM_TOKEN_SECRET: SECRET });
    expect(s.corsOrigins).toEqual(["https://shop.example", "http://localhost:3000"]);
    expect(s.streamTokenSecret).toBe(SECRET);
    expect(loadSettings({})).toMatchObject({ corsOrigins: [], streamTokenSecret: undefined });
    for (const bad of ["https://shop.example/", "shop.example", "https://shop.example/path", "*"])
      expect(() => loadSettings({ TALLY_CORS_ORIGINS: bad }), bad).toThrow(/TALLY_CORS_ORIGINS/);
    expect(() => loadSettings({ TALLY_STREAM_TOKEN_SECRET: "short" })).toThrow(/TALLY_STREAM_TOKEN_SECRET: expected at least 32/);
  });
});
