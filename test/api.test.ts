import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTally } from "../src/app/roles.ts";
import { loadSettings } from "../src/platform/settings.ts";
import { createLogger } from "../src/platform/log.ts";
import { decodeTokens, newToken, sha256Hex, TokenVerifier } from "../src/http/auth.ts";
import { TEST_CHANNELS, tallyEnv } from "./support/tally.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { deadLetters, settle, startApi, TOKENS, type ApiFixture } from "./apiSupport.ts";
import { decodeCommand } from "../src/contract/command.ts";
import { publishCommands } from "../src/wire/publisher.ts";
import { eventually } from "./support/tally.ts";

let ctx: TestContext;
let api: ApiFixture;

beforeAll(async () => {
  ctx = await testContext();
  api = await startApi(ctx, { rateLimitPerMinute: 5 });
});
afterAll(async () => {
  await api?.close();
});

describe("auth", () => {
  it("answers 401 without a token, with a malformed header, and with an unknown token", async () => {
    const missing = await api.call({ method: "GET", url: "/v1/availability/X?channel=web" });
    expect(missing.statusCode).toBe(401);
    expect(missing.headers["www-authenticate"]).toMatch(/^Bearer/);
    expect(missing.headers["content-type"]).toMatch(/^application\/problem\+json/);
    expect(missing.json()).toMatchObject({ type: "/problems/unauthorized", status: 401, code: "unauthorized", instance: "/v1/availability/X" });
    const basic = await api.call({ method: "GET", url: "/v1/availability/X?channel=web", headers: { authorization: "Basic Zm9vOmJhcg==" } });
    expect(basic.statusCode).toBe(401);
    const bad = await api.call({ method: "GET", url: "/v1/availability/X?channel=web", headers: { authorization: "Bearer secret-nobody" } });
    expect(bad.statusCode).toBe(401);
    expect(bad.headers["www-authenticate"]).toContain('error="invalid_token"');
  });

  it("answers 403 for a token without the route's scope", async () => {
    const r = await api.call({ method: "GET", url: "/v1/availability/X?channel=web", as: "pos" });
    expect(r.statusCode).toBe(403);
    expect(r.json()).toMatchObject({ code: "forbidden", detail: expect.stringContaining("availability:read") });
    expect((await api.call({ method: "GET", url: "/v1/dlq", as: "reader" })).statusCode).toBe(403);
    expect((await api.call({ method: "GET", url: "/v1/ledger/entries", as: "pos" })).statusCode).toBe(403);
  });

  it("lets an admin token use every scope", async () => {
    const r = await api.call({ method: "GET", url: "/v1/ledger/entries", as: "admin" });
    expect(r.statusCode).toBe(200);
  });

  it("answers 403 when a channel token asks for another channel", async () => {
    const r = await api.call({ method: "GET", url: "/v1/availability/X?channel=web", as: "storeReader" });
    expect(r.statusCode).toBe(403);
  });

  it("rate-limits write routes per token (429), not other tokens", async () => {
    const post = (as: "pos" | "admin") =>
      api.call({ method: "POST", url: "/v1/pos/transactions", as, headers: { "content-type": "application/json" }, payload: "{}" });
    const codes = [];
    for (let i = 0; i < 6; i++) codes.push((await post("pos")).statusCode);
    expect(codes.slice(0, 5)).toEqual([400, 400, 400, 400, 400]);
    expect(codes[5]).toBe(429);
    expect((await post("admin")).statusCode).toBe(400);
    // Read routes are not limited.
    for (let i = 0; i < 8; i++) expect((await api.call({ method: "GET", url: "/v1/ledger/entries", as: "admin" })).statusCode).toBe(200);
  });

  it("refuses bodies over the limit (413)", async () => {
    const r = await api.call({
      method: "POST",
      url: "/v1/reservations",
      as: "reserver",
      headers: { "content-type": "application/json", "idempotency-key": "big" },
      payload: JSON.stringify({ sku: "A", qty: 1, location: "DC1", pad: "x".repeat(300 * 1024) }),
    });
    expect(r.statusCode).toBe(413);
  });

  it("decodes the token list, naming the bad field, and verifies tokens by hash", () => {
    expect(() => decodeTokens('[{"id":"a","sha256":"xyz","scopes":["pos:write"]}]', "TALLY_API_TOKENS")).toThrow(
      /\[0\]\.sha256: expected the token's SHA-256/,
    );
    expect(() => decodeTokens(`[{"id":"a","sha256":"${"a".repeat(64)}","scopes":["root"]}]`, "T")).toThrow(/\[0\]\.scopes\[0\]/);
    expect(() => decodeTokens("nope", "T")).toThrow(/not valid JSON/);
    const { token, entry } = newToken("checkout", ["reservations:write"], "web");
    expect(entry.sha256).toBe(sha256Hex(token));
    const v = new TokenVerifier(decodeTokens(JSON.stringify([entry]), "T"));
    expect(v.verify(token)).toMatchObject({ id: "checkout", channel: "web" });
    expect(v.verify(`${token}x`)).toBeNull();
  });
});

describe("health, readiness, metrics, docs", () => {
  it("serves /healthz and /readyz without a token", async () => {
    expect((await api.call({ method: "GET", url: "/healthz" })).json()).toEqual({ ok: true });
    // Ready once the worker holds every partition (it takes them on its first heartbeat).
    await eventually("the process to be ready", async () => (await api.call({ method: "GET", url: "/readyz" })).statusCode === 200);
    const ready = await api.call({ method: "GET", url: "/readyz" });
    expect(ready.statusCode).toBe(200);
    expect(ready.json()).toMatchObject({ ready: true, checks: { postgres: { ok: true }, nats: { ok: true }, leases: { ok: true } } });
  });

  it("serves Prometheus metrics", async () => {
    const r = await api.call({ method: "GET", url: "/metrics" });
    expect(r.statusCode).toBe(200);
    expect(r.headers["content-type"]).toMatch(/text\/plain/);
    for (const name of [
      "tally_commands_applied_total",
      "tally_apply_batch_size",
      "tally_apply_batch_seconds",
      "tally_reservations_total",
      "tally_dlq_messages",
      "tally_worker_partitions_held",
      "tally_worker_stuck_partitions",
      "tally_worker_unstorable_total",
      "tally_worker_stream_resets_total",
      "process_cpu_seconds_total",
      "nodejs_eventloop_lag_seconds",
    ])
      expect(r.body).toContain(name);
  });

  it("measures end-to-end latency, source time to availability published, per source system", async () => {
    const metric = async () => (await api.call({ method: "GET", url: "/metrics" })).body;
    const sample = (body: string, name: string) => Number(new RegExp(`^${name}\\{source="e2e-test"\\} (\\S+)$`, "m").exec(body)?.[1] ?? 0);
    // A change that happened at its source 10 seconds ago, and one just now.
    const at = [new Date(Date.now() - 10_000), new Date()];
    const commands = at.map((t, i) => {
      const d = decodeCommand({
        id: `e2e:${i}`,
        type: "receive",
        sku: `E2E-${i}`,
        location: "DC1",
        qty: 5,
        source: { system: "e2e-test", ref: `r${i}` },
        occurredAt: t.toISOString(),
      });
      if (d._tag === "Left") throw d.left;
      return d.right;
    });
    await publishCommands(api.h.nats.js, api.h.topology, commands);
    await settle(
      api.h,
      commands.map((c) => c.id),
    );
    // DC1 feeds the web channel only: one availability change per command.
    await eventually("the relay's report", async () => sample(await metric(), "tally_end_to_end_seconds_count") >= 2);
    const body = await metric();
    const sum = sample(body, "tally_end_to_end_seconds_sum");
    expect(sum).toBeGreaterThanOrEqual(10);
    expect(sum).toBeLessThan(10 + 60);
    // The fresh change lands in a small bucket, the old one does not.
    expect(Number(/^tally_end_to_end_seconds_bucket\{le="5",source="e2e-test"\} (\S+)$/m.exec(body)?.[1])).toBe(1);
    expect(Number(/^tally_end_to_end_seconds_bucket\{le="\+Inf",source="e2e-test"\} (\S+)$/m.exec(body)?.[1])).toBe(2);
  });

  it("serves the OpenAPI document at /docs/json, with a schema for every route", async () => {
    const r = await api.call({ method: "GET", url: "/docs/json" });
    expect(r.statusCode).toBe(200);
    const doc = r.json() as { openapi: string; paths: Record<string, Record<string, { responses: Record<string, unknown> }>> };
    expect(doc.openapi).toMatch(/^3\./);
    for (const path of [
      "/v1/pos/transactions",
      "/v1/availability/{sku}",
      "/v1/availability",
      "/v1/availability/stream",
      "/v1/stock/{sku}",
      "/v1/reservations",
      "/v1/reservations/{id}/commit",
      "/v1/ledger/entries",
      "/v1/ledger/export",
      "/v1/dlq",
      "/v1/dlq/{id}/replay",
      "/v1/sources",
      "/healthz",
      "/readyz",
      "/metrics",
    ])
      expect(Object.keys(doc.paths)).toContain(path);
    for (const [path, methods] of Object.entries(doc.paths))
      for (const [method, op] of Object.entries(methods)) expect(Object.keys(op.responses ?? {}), `${method} ${path}`).not.toHaveLength(0);
    expect((await api.call({ method: "GET", url: "/docs" })).statusCode).toBeLessThan(400);
  });

  it("answers 404 in the error format for an unknown route", async () => {
    const r = await api.call({ method: "GET", url: "/v1/nothing", as: "admin" });
    expect(r.statusCode).toBe(404);
    expect(r.headers["content-type"]).toMatch(/^application\/problem\+json/);
    expect(r.json()).toMatchObject({ code: "not_found", status: 404, instance: "/v1/nothing" });
  });
});

describe("operators: dead letters and sources", () => {
  it("lists, replays and discards dead letters (admin only)", async () => {
    await api.call({
      method: "POST",
      url: "/v1/pos/transactions",
      as: "admin",
      headers: { "content-type": "application/json" },
      payload: '{"transactions":[{"store":"S01"}]}',
    });
    const list = await api.call({ method: "GET", url: "/v1/dlq?origin=pos", as: "admin" });
    expect(list.statusCode).toBe(200);
    const letters = list.json().letters as Array<{ id: number; origin: string; reason: string; payload: unknown }>;
    const letter = letters.find((l) => (l.payload as { store?: string }).store === "S01")!;
    expect(letter).toMatchObject({ origin: "pos", reason: expect.stringContaining("transactions[0].terminal: is missing") });
    expect((await api.call({ method: "GET", url: "/v1/dlq", as: "pos" })).statusCode).toBe(403);
    const replay = await api.call({ method: "POST", url: `/v1/dlq/${letter.id}/replay`, as: "admin" });
    expect(replay.statusCode).toBe(409);
    expect(replay.json()).toMatchObject({ code: "replay_failed", detail: expect.stringContaining("terminal") });
    const gone = await api.call({ method: "DELETE", url: `/v1/dlq/${letter.id}`, as: "admin" });
    expect(gone.statusCode).toBe(200);
    expect(gone.json()).toEqual({ id: letter.id, discarded: true });
    expect((await deadLetters(api.h, "pos")).some((l) => l.seq === letter.id)).toBe(false);
    expect((await api.call({ method: "DELETE", url: `/v1/dlq/${letter.id}`, as: "admin" })).statusCode).toBe(404);
    expect((await api.call({ method: "POST", url: `/v1/dlq/999999/replay`, as: "admin" })).statusCode).toBe(404);
    expect((await api.call({ method: "POST", url: `/v1/dlq/abc/replay`, as: "admin" })).statusCode).toBe(400);
  });

  it("lists configured CDC sources (none here)", async () => {
    const r = await api.call({ method: "GET", url: "/v1/sources", as: "admin" });
    expect(r.statusCode).toBe(200);
    expect(r.json()).toEqual({ sources: [] });
  });
});

describe("the api role", () => {
  it("listens on TALLY_HTTP_PORT with tokens from TALLY_API_TOKENS, and closes with its scope", async () => {
    const settings = loadSettings({ ...tallyEnv(ctx), TALLY_HTTP_PORT: "0", TALLY_HTTP_HOST: "127.0.0.1", TALLY_API_TOKENS: JSON.stringify(TOKENS) });
    const running = await startTally(settings, TEST_CHANNELS, ["api"], createLogger("test-role", "warn"));
    try {
      const address = running.api!.server.address() as { port: number };
      const base = `http://127.0.0.1:${address.port}`;
      expect((await fetch(`${base}/healthz`)).status).toBe(200);
      expect((await fetch(`${base}/v1/ledger/entries`)).status).toBe(401);
      expect((await fetch(`${base}/v1/ledger/entries`, { headers: { authorization: "Bearer secret-ledger" } })).status).toBe(200);
    } finally {
      await running.close();
    }
    expect(running.api!.server.listening).toBe(false);
  });
});
