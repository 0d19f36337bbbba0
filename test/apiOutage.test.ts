import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { AddressInfo } from "node:net";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { TestContext } from "./support/context.ts";
import { startNats, type NatsServer } from "./support/nats.ts";
import { startPostgres, type PostgresServer } from "./support/postgres.ts";
import { eventually } from "./support/tally.ts";
import { auth, defineItems, startApi, type ApiFixture } from "./apiSupport.ts";

// This file owns its servers: it kills them.
let pg: PostgresServer;
let nats: NatsServer;
let api: ApiFixture;
let base: string;
/** The budget the app is given, and the client's own patience: far above the budget, far below the ≥ 15 s requests used to hang. */
const REQUEST_TIMEOUT_MS = 1000;
const CLIENT_GIVES_UP_MS = 8000;

beforeAll(async () => {
  [pg, nats] = await Promise.all([startPostgres(), startNats()]);
  const admin = postgres(pg.url(), { max: 1, onnotice: () => {} });
  await admin.unsafe("create database api_outage");
  await admin.end();
  const ctx: TestContext = { env: "apioutage", databaseUrl: pg.url("api_outage"), natsUrl: nats.url, adminUrl: pg.url() };
  api = await startApi(ctx, { requestTimeoutMs: REQUEST_TIMEOUT_MS, decisionTimeoutMs: 1000 }, []);
  await defineItems(api.sql, [{ sku: "OUT-A", kind: "stock", baseUnit: "EA", identifiers: [{ system: "barcode", id: "7000000000016" }] }]);
  await api.app.listen({ port: 0, host: "127.0.0.1" });
  base = `http://127.0.0.1:${(api.app.server.address() as AddressInfo).port}`;
}, 60_000);
afterAll(async () => {
  await api?.close().catch(() => {});
  await Promise.allSettled([pg?.destroy(), nats?.destroy()]);
});

/** A request the client abandons after CLIENT_GIVES_UP_MS: an abandoned one fails the test (the answer must come, and fast). */
async function call(method: string, url: string, body?: unknown, headers: Record<string, string> = {}) {
  const r = await fetch(`${base}${url}`, {
    method,
    headers: { ...auth("admin"), ...(body !== undefined ? { "content-type": "application/json" } : {}), ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(CLIENT_GIVES_UP_MS),
  });
  return { status: r.status, retryAfter: r.headers.get("retry-after"), json: (await r.json()) as Record<string, unknown> };
}
const sale = (id: string) => ({
  transactions: [
    { store: "S01", terminal: "T1", id, occurredAt: "2026-11-26T10:00:00Z", lines: [{ type: "sale", barcode: "7000000000016", qty: 1 }] },
  ],
});

describe("requests while a dependency is down fail fast with 503 + Retry-After", () => {
  it("NATS down: a POS post and a reservation are 503 with Retry-After, not a hang; the same POS post succeeds once NATS is back", async () => {
    await nats.kill();
    try {
      const pos = await call("POST", "/v1/pos/transactions", sale("out-1"));
      expect(pos.status).toBe(503);
      expect(Number(pos.retryAfter)).toBeGreaterThanOrEqual(1);
      const res = await call("POST", "/v1/reservations", { sku: "OUT-A", qty: 1, location: "S01" }, { "idempotency-key": "out-res-1" });
      expect(res.status).toBe(503);
      expect(Number(res.retryAfter)).toBeGreaterThanOrEqual(1);
    } finally {
      await nats.start();
    }
    // The claim the failed post left behind is finished by the resend.
    await eventually(
      "the POS post to succeed after NATS is back",
      async () => (await call("POST", "/v1/pos/transactions", sale("out-1"))).status === 200,
      30_000,
    );
  }, 60_000);

  it("JetStream refusing every write (the commands stream full): a POS post is 503 with Retry-After, not a 13 s retry loop", async () => {
    const stream = api.h.topology.commandsStream;
    const { config, state } = await api.h.nats.jsm.streams.info(stream);
    await api.h.nats.jsm.streams.update(stream, { max_msgs: Math.max(1, state.messages), discard: "new" as never });
    try {
      if (state.messages === 0) await call("POST", "/v1/pos/transactions", sale("out-fill"));
      const pos = await call("POST", "/v1/pos/transactions", sale("out-2"));
      expect(pos.status).toBe(503);
      expect(Number(pos.retryAfter)).toBeGreaterThanOrEqual(1);
      // Over the NATS POS subject the reply says so just as soon (the terminal resends).
      const reply = await api.h.nats.nc.request(api.h.topology.posSubject("S01"), JSON.stringify(sale("out-2n")), { timeout: CLIENT_GIVES_UP_MS });
      expect(reply.json()).toMatchObject({ error: "unavailable" });
    } finally {
      await api.h.nats.jsm.streams.update(stream, { max_msgs: config.max_msgs, discard: config.discard });
    }
  }, 60_000);

  it("Postgres down: reads and writes are 503 with Retry-After, not a hang; they succeed once it is back", async () => {
    await pg.kill();
    try {
      const entries = await call("GET", "/v1/ledger/entries");
      expect(entries.status).toBe(503);
      expect(Number(entries.retryAfter)).toBeGreaterThanOrEqual(1);
      const pos = await call("POST", "/v1/pos/transactions", sale("out-3"));
      expect(pos.status).toBe(503);
      const res = await call("POST", "/v1/reservations", { sku: "OUT-A", qty: 1, location: "S01" }, { "idempotency-key": "out-res-2" });
      expect(res.status).toBe(503);
      expect(Number(res.retryAfter)).toBeGreaterThanOrEqual(1);
    } finally {
      await pg.start();
    }
    await eventually("reads to work again", async () => (await call("GET", "/v1/ledger/entries")).status === 200, 30_000);
  }, 60_000);

  it("Postgres not answering (its processes stopped, as behind a dead network link): a read is 503 with Retry-After, not a hang", async () => {
    // The postmaster and every backend of this file's own server, frozen with SIGSTOP (and thawed after).
    const postmaster = Number(readFileSync(join(pg.dataDir, "postmaster.pid"), "utf8").split("\n")[0]);
    const children = execFileSync("ps", ["-o", "pid=", "--ppid", String(postmaster)], { encoding: "utf8" })
      .split("\n")
      .map(Number)
      .filter((n) => n > 0);
    const pids = [postmaster, ...children];
    for (const pid of pids) process.kill(pid, "SIGSTOP");
    try {
      const entries = await call("GET", "/v1/ledger/entries");
      expect(entries.status).toBe(503);
      expect(Number(entries.retryAfter)).toBeGreaterThanOrEqual(1);
      const pos = await call("POST", "/v1/pos/transactions", sale("out-4"));
      expect(pos.status).toBe(503);
    } finally {
      for (const pid of pids) process.kill(pid, "SIGCONT");
    }
    await eventually("reads to work again", async () => (await call("GET", "/v1/ledger/entries")).status === 200, 30_000);
  }, 60_000);
});
