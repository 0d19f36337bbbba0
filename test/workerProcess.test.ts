import { execFileSync } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { testContext, type TestContext } from "./support/context.ts";
import { freePort } from "./support/ports.ts";
import { eventually, harness, spawnTally, tallyEnv, type Harness } from "./support/tally.ts";
import { TOKENS, auth, balance, defineItems } from "./apiSupport.ts";

let ctx: TestContext;
let h: Harness;

beforeAll(async () => {
  ctx = await testContext();
  h = await harness(ctx);
  await defineItems(h.sql, [{ sku: "WP-A", kind: "stock", baseUnit: "EA", identifiers: [{ system: "barcode", id: "9000000000018" }] }]);
});
afterAll(async () => {
  await h?.close();
});

/** The processes whose parent is `pid`, with their command lines. */
function childrenOf(pid: number): Array<{ pid: number; args: string }> {
  let out = "";
  try {
    out = execFileSync("ps", ["-o", "pid=,args=", "--ppid", String(pid)], { encoding: "utf8" });
  } catch {
    return []; // ps exits 1 when there are none
  }
  return out
    .split("\n")
    .filter((l) => l.trim())
    .map((l) => {
      const [p, ...args] = l.trim().split(/\s+/);
      return { pid: Number(p), args: args.join(" ") };
    });
}
const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

describe("tally start --roles api,worker", () => {
  it("runs the worker in a child process (its own event loop): the API serves, the child applies, a flood of bodies leaves its leases alone, SIGTERM stops both", async () => {
    const port = await freePort();
    const tally = spawnTally(["start", "--roles", "api,worker"], {
      ...tallyEnv(ctx, { leaseTtlMs: 3000 }),
      TALLY_HTTP_PORT: String(port),
      TALLY_HTTP_HOST: "127.0.0.1",
      TALLY_API_TOKENS: JSON.stringify(TOKENS),
      TALLY_LOG_LEVEL: "warn",
    });
    const base = `http://127.0.0.1:${port}`;
    try {
      await eventually("the API to answer", async () => (await fetch(`${base}/healthz`).catch(() => null))?.status === 200, 60_000);
      const workers = childrenOf(tally.pid!).filter((c) => /start --roles worker$/.test(c.args));
      expect(workers, tally.output()).toHaveLength(1);
      const worker = workers[0]!.pid;
      // The worker role is the child's: it applies what the API accepts.
      const sale = {
        transactions: [
          {
            store: "S01",
            terminal: "T1",
            id: "wp-1",
            occurredAt: "2026-11-26T10:00:00Z",
            lines: [{ type: "sale", barcode: "9000000000018", qty: 2 }],
          },
        ],
      };
      const r = await fetch(`${base}/v1/pos/transactions`, {
        method: "POST",
        headers: { ...auth("pos"), "content-type": "application/json" },
        body: JSON.stringify(sale),
      });
      expect(r.status).toBe(200);
      await eventually("the sale to be applied", async () => (await balance(h.sql, "WP-A", "S01")) === -2, 30_000);
      // A flood of large bodies keeps the API's loop busy; the worker's leases are renewed in another process.
      const deep = "[".repeat(512 * 1024) + "]".repeat(512 * 1024);
      const line = { type: "sale", barcode: "9000000000018", qty: 1 };
      const big = JSON.stringify({
        transactions: Array.from({ length: 100 }, (_, i) => ({
          store: "S01",
          terminal: "F",
          id: `wpf-${i}`,
          occurredAt: "2026-11-26T10:00:00Z",
          lines: Array.from({ length: 100 }, () => line),
        })),
      });
      for (let round = 0; round < 3; round++)
        await Promise.all(
          [deep, big, deep, big, deep, big].map(async (body) => {
            const res = await fetch(`${base}/v1/pos/transactions`, {
              method: "POST",
              headers: { ...auth("pos"), "content-type": "application/json" },
              body,
            });
            await res.arrayBuffer();
          }),
        );
      expect(tally.output()).not.toMatch(/lease had expired|lease renewal failed/);
      expect(alive(worker)).toBe(true);
      // SIGTERM to the parent stops the child too.
      const exited = new Promise<number | null>((resolve) => tally.once("exit", (code) => resolve(code)));
      tally.kill("SIGTERM");
      expect(await exited).toBe(0);
      await eventually("the worker process to exit", async () => !alive(worker), 30_000);
    } finally {
      if (tally.exitCode === null) tally.kill("SIGKILL");
    }
  }, 180_000);

  it("with TALLY_WORKER_PROCESS=inline keeps one process", async () => {
    const port = await freePort();
    const tally = spawnTally(["start", "--roles", "api,worker"], {
      ...tallyEnv(ctx),
      TALLY_HTTP_PORT: String(port),
      TALLY_HTTP_HOST: "127.0.0.1",
      TALLY_API_TOKENS: JSON.stringify(TOKENS),
      TALLY_WORKER_PROCESS: "inline",
    });
    try {
      await eventually("the API to answer", async () => (await fetch(`http://127.0.0.1:${port}/healthz`).catch(() => null))?.status === 200, 60_000);
      expect(childrenOf(tally.pid!).filter((c) => /--roles worker/.test(c.args))).toEqual([]);
    } finally {
      tally.kill("SIGTERM");
      await new Promise((resolve) => tally.once("exit", resolve));
    }
  }, 120_000);

  it("stops (exit code 1) when its worker process dies, so that its supervisor restarts both", async () => {
    const port = await freePort();
    const tally = spawnTally(["start", "--roles", "api,worker"], {
      ...tallyEnv(ctx),
      TALLY_HTTP_PORT: String(port),
      TALLY_HTTP_HOST: "127.0.0.1",
      TALLY_API_TOKENS: JSON.stringify(TOKENS),
      TALLY_LOG_LEVEL: "warn",
    });
    try {
      await eventually("the worker process to run", async () => childrenOf(tally.pid!).some((c) => /start --roles worker$/.test(c.args)), 60_000);
      const worker = childrenOf(tally.pid!).find((c) => /start --roles worker$/.test(c.args))!.pid;
      const exited = new Promise<number | null>((resolve) => tally.once("exit", (code) => resolve(code)));
      process.kill(worker, "SIGKILL");
      expect(await exited, tally.output().slice(-3000)).toBe(1);
      expect(tally.output()).toMatch(/worker process exited/);
    } finally {
      if (tally.exitCode === null) tally.kill("SIGKILL");
    }
  }, 120_000);
});
