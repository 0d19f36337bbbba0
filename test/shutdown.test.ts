import { request, type IncomingMessage } from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import postgres from "postgres";
import { verifyLedger } from "../ledger/index.ts";
import { publishCommands } from "../src/wire/publisher.ts";
import { connectPostgres } from "../src/platform/db.ts";
import { freePort } from "../src/app/devStack/ports.ts";
import type { TestContext } from "./support/context.ts";
import { startNats, type NatsServer } from "./support/nats.ts";
import { startPostgres, type PostgresServer } from "./support/postgres.ts";
import { decodedCommands, eventually, harness, spawnTally, tallyEnv, type Harness } from "./support/tally.ts";
import { TOKENS, auth } from "./apiSupport.ts";

// This file owns its servers: it kills them.
let pg: PostgresServer;
let nats: NatsServer;
/** The bound the tests set (TALLY_SHUTDOWN_TIMEOUT_MS); the default is 10 s. */
const BOUND_MS = 3000;
/** Slack for a loaded machine: the process must be gone by BOUND_MS + this. */
const SLACK_MS = 5000;

beforeAll(async () => {
  [pg, nats] = await Promise.all([startPostgres(), startNats()]);
});
afterAll(async () => {
  await Promise.allSettled([pg?.destroy(), nats?.destroy()]);
});

async function freshContext(name: string): Promise<TestContext> {
  const admin = postgres(pg.url(), { max: 1, onnotice: () => {} });
  await admin.unsafe(`create database ${name}`);
  await admin.end();
  return { env: name, databaseUrl: pg.url(name), natsUrl: nats.url, adminUrl: pg.url() };
}

type Tally = ReturnType<typeof spawnTally>;

/** `tally start` as a child process, once it says it started. */
async function startTallyProcess(ctx: TestContext, roles: string, extra: Record<string, string> = {}): Promise<Tally> {
  const child = spawnTally(["start", "--roles", roles], {
    ...tallyEnv(ctx, { partitions: 4, leaseTtlMs: 2000 }),
    TALLY_LOG_LEVEL: "info",
    TALLY_SHUTDOWN_TIMEOUT_MS: String(BOUND_MS),
    ...extra,
  });
  await eventually("tally start to start", async () => {
    if (child.exitCode !== null) throw new Error(`tally start exited: ${child.output()}`);
    return child.output().includes("tally started");
  });
  return child;
}

/**
 * SIGTERM, then waits for the exit: resolves with the exit code, or rejects if the process is still
 * running past its bound (BOUND_MS plus SLACK_MS for a loaded machine). Before the bound existed,
 * the stop with nats-server down took about 16 s (relay and worker waiting on NATS request timeouts
 * one after the other).
 */
async function terminate(child: Tally): Promise<number | null> {
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  child.kill("SIGTERM");
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`tally start still running ${BOUND_MS + SLACK_MS} ms after SIGTERM:\n${child.output().slice(-3000)}`));
    }, BOUND_MS + SLACK_MS);
  });
  try {
    return await Promise.race([exited, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** The log lines of the stop, for the report. */
const stopLines = (child: Tally) =>
  child
    .output()
    .split("\n")
    .filter((l) => /shutting down|stopped|did not finish|second signal/.test(l))
    .join("\n");

async function applySome(h: Harness, prefix: string): Promise<void> {
  const commands = decodedCommands(
    Array.from({ length: 40 }, (_, i) => ({
      id: `${prefix}:${i}`,
      type: "receive",
      sku: `SD-${i % 7}`,
      location: "DC1",
      qty: 1 + i,
      source: { system: "erp", ref: `r${i}` },
      occurredAt: "2026-11-26T10:00:00Z",
    })),
  );
  await publishCommands(h.nats.js, h.topology, commands);
  await eventually("the commands to be applied", async () => {
    const [{ n }] = await h.sql<[{ n: number }]>`select count(*)::int as n from command_outcomes where command_id like ${`${prefix}:%`}`;
    return n === commands.length;
  });
}

describe("tally start on SIGTERM with a dependency down", () => {
  it("exits within its bound when nats-server is gone, and the ledger is whole afterwards", async () => {
    const ctx = await freshContext("stop_nats");
    const h = await harness(ctx, { partitions: 4, leaseTtlMs: 2000 });
    const child = await startTallyProcess(ctx, "worker,relay,api", { TALLY_HTTP_PORT: String(await freePort()), TALLY_HTTP_HOST: "127.0.0.1" });
    try {
      await applySome(h, "nats-up");
      await nats.kill();
      await new Promise((r) => setTimeout(r, 1000)); // the process notices and starts reconnecting
      const code = await terminate(child);
      console.log(stopLines(child));
      expect(child.output()).toMatch(/shutting down/);
      expect([0, 1]).toContain(code);
    } finally {
      child.kill("SIGKILL");
      await nats.start();
    }
    expect((await verifyLedger(h.sql)).problem).toBeNull();
    await h.close();
  });

  it("exits within its bound when Postgres is gone, and the ledger is whole afterwards", async () => {
    const ctx = await freshContext("stop_pg");
    const h = await harness(ctx, { partitions: 4, leaseTtlMs: 2000 });
    const child = await startTallyProcess(ctx, "worker,relay,api", { TALLY_HTTP_PORT: String(await freePort()), TALLY_HTTP_HOST: "127.0.0.1" });
    try {
      await applySome(h, "pg-up");
      await pg.kill();
      // Commands keep coming while the database is down: the workers retry their batches.
      await publishCommands(
        h.nats.js,
        h.topology,
        decodedCommands([
          {
            id: "pg-down:1",
            type: "receive",
            sku: "SD-1",
            location: "DC1",
            qty: 5,
            source: { system: "erp", ref: "x" },
            occurredAt: "2026-11-26T10:00:00Z",
          },
        ]),
      );
      await new Promise((r) => setTimeout(r, 1000));
      const code = await terminate(child);
      console.log(stopLines(child));
      expect(child.output()).toMatch(/shutting down/);
      expect([0, 1]).toContain(code);
    } finally {
      child.kill("SIGKILL");
      await pg.start();
    }
    const sql = connectPostgres(ctx.databaseUrl, { max: 1 });
    try {
      expect((await verifyLedger(sql)).problem).toBeNull();
    } finally {
      await sql.end();
      await h.close().catch(() => {});
    }
  });
});

/** One HTTP request on its own connection; resolves with status, headers and body, or rejects on a reset. */
function call(port: number, method: string, path: string, body?: unknown, headers: Record<string, string> = {}) {
  return new Promise<{ status: number; headers: IncomingMessage["headers"]; body: string }>((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const req = request(
      {
        host: "127.0.0.1",
        port,
        method,
        path,
        agent: false,
        headers: { ...headers, ...(data ? { "content-type": "application/json", "content-length": String(Buffer.byteLength(data)) } : {}) },
      },
      (res) => {
        let text = "";
        res.on("data", (c: Buffer) => (text += c.toString()));
        res.on("end", () => resolve({ status: res.statusCode!, headers: res.headers, body: text }));
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end(data);
  });
}

describe("tally start --roles api on SIGTERM", () => {
  it("lets a request in flight finish (no reset) and answers new ones 503 with Retry-After while it drains", async () => {
    const ctx = await freshContext("stop_api");
    const h = await harness(ctx, { partitions: 4, leaseTtlMs: 2000 });
    const port = await freePort();
    // No worker: a reservation waits the whole decision timeout (10 s) for an answer — a long request.
    const child = await startTallyProcess(ctx, "api", {
      TALLY_HTTP_PORT: String(port),
      TALLY_HTTP_HOST: "127.0.0.1",
      TALLY_API_TOKENS: JSON.stringify(TOKENS),
      TALLY_SHUTDOWN_TIMEOUT_MS: "30000",
    });
    try {
      // A keep-alive connection opened before the signal, used again during the drain.
      const inFlight = call(
        port,
        "POST",
        "/v1/reservations?channel=web",
        { sku: "SD-1", location: "DC1", qty: 1 },
        { ...auth("reserver"), "idempotency-key": "drain-1" },
      );
      await eventually("the reservation to be in flight", async () => {
        const [{ n }] = await h.sql<[{ n: number }]>`select count(*)::int as n from reservations`;
        return n === 1;
      });
      const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
      child.kill("SIGTERM");
      await eventually("the drain to start", async () => child.output().includes("shutting down"));
      // A new request while the one in flight drains: the listener is still open (a load balancer
      // sees a 503, not a refused connection), and the answer says when to retry.
      const during = await call(port, "GET", "/readyz");
      expect(during.status).toBe(503);
      expect(during.headers["retry-after"]).toBe("1");
      expect(during.headers.connection).toBe("close");
      expect(JSON.parse(during.body)).toMatchObject({ code: "shutting_down" });
      const answered = await inFlight; // rejects on a reset
      expect([201, 503]).toContain(answered.status);
      expect(answered.body).toMatch(/^\{/);
      expect(await exited).toBe(0);
    } finally {
      child.kill("SIGKILL");
      await h.close();
    }
  });
});
