/**
 * The worker role in a child process of its own (`tally start --roles worker`), for a process that also
 * serves the API: a flood of large request bodies then cannot hold the event loop that renews the
 * worker's partition leases. The child reads the same environment (settings and config file) as the
 * parent; its logs go to the parent's stdout/stderr. Closing the scope stops it (SIGTERM: it finishes its
 * batches and releases its leases); if it dies on its own the parent's program fails, so that whatever
 * supervises the parent restarts both.
 */
import { spawn, type ChildProcess } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Effect } from "effect";
import type { Registry } from "prom-client";
import type { Logger } from "../platform/index.ts";
import type { MetricsSource } from "./processMetrics.ts";

const BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../bin/tally.js");
/** How long a stopping worker may take to finish its batches before it is killed. */
const STOP_GRACE_MS = 30_000;

/** Set in the worker child's environment: its metrics go to the parent over IPC (it opens no port of its own). */
export const WORKER_CHILD_ENV = "TALLY_WORKER_CHILD";
/** How long a scrape of the parent waits for the child's metrics. */
const METRICS_WAIT_MS = 2000;

/** The worker child died while the parent was not stopping it. */
export class WorkerProcessExited extends Error {
  override readonly name = "WorkerProcessExited";
}

/** Starts the worker child for the life of the scope; the effect it returns fails if the child exits unasked. */
export const workerProcess = (log: Logger) =>
  Effect.gen(function* () {
    let stopping = false;
    const { child, exit } = yield* Effect.acquireRelease(
      Effect.sync(() => {
        // An IPC channel only so the child sees its parent go (even killed -9): see stopWithParent.
        const c = spawn(process.execPath, [BIN, "start", "--roles", "worker"], {
          env: { ...process.env, [WORKER_CHILD_ENV]: "1" },
          stdio: ["ignore", "inherit", "inherit", "ipc"],
        });
        // Listened for at once: the child may die before the parent's own roles have started.
        const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
          c.once("exit", (code, signal) => resolve({ code, signal })),
        );
        return { child: c, exit };
      }),
      ({ child: c }) =>
        Effect.promise(async () => {
          stopping = true;
          await stopChild(c);
        }),
    );
    log.info({ pid: child.pid }, "worker role started in its own process");
    /** Fails when the child exits while the scope is open. */
    const exited = Effect.promise(() => exit).pipe(
      Effect.flatMap(({ code, signal }) => {
        if (stopping) return Effect.never;
        log.error({ pid: child.pid, code, signal }, "the worker process exited; stopping this process");
        return Effect.fail(new WorkerProcessExited(`the worker process exited (code ${code}, signal ${signal})`));
      }),
    );
    return { pid: child.pid!, exited, metrics: childMetrics(child) };
  });

type MetricsReply = { type: "tally:metrics"; id: number; metrics: Awaited<ReturnType<Registry["getMetricsAsJSON"]>> };

/** Asks the worker child for its metrics over the IPC channel (the parent serves them on its API's /metrics). */
function childMetrics(c: ChildProcess): MetricsSource {
  let next = 0;
  return () =>
    new Promise((resolve) => {
      const id = ++next;
      const done = (value: MetricsReply["metrics"] | null) => {
        clearTimeout(timer);
        c.off("message", onMessage);
        resolve(value);
      };
      const onMessage = (m: unknown) => {
        const reply = m as Partial<MetricsReply> | null;
        if (reply?.type === "tally:metrics" && reply.id === id && Array.isArray(reply.metrics)) done(reply.metrics);
      };
      // No answer in time (the child is busy or gone): the scrape carries the parent's metrics only.
      const timer = setTimeout(() => done(null), METRICS_WAIT_MS);
      c.on("message", onMessage);
      if (!c.connected || !c.send({ type: "tally:metrics", id })) done(null);
    });
}

/** In the worker child: answers the parent's metrics requests with this process's registry. */
export function answerMetricsRequests(registry: Registry): () => void {
  const onMessage = (m: unknown) => {
    const request = m as { type?: string; id?: number } | null;
    if (request?.type !== "tally:metrics" || typeof request.id !== "number") return;
    const id = request.id;
    void registry.getMetricsAsJSON().then(
      (metrics) => process.connected && process.send?.({ type: "tally:metrics", id, metrics }),
      () => process.connected && process.send?.({ type: "tally:metrics", id, metrics: [] }),
    );
  };
  process.on("message", onMessage);
  return () => process.off("message", onMessage);
}

async function stopChild(c: ChildProcess): Promise<void> {
  if (c.exitCode !== null || c.signalCode !== null) return;
  const gone = new Promise<void>((resolve) => c.once("exit", () => resolve()));
  c.kill("SIGTERM");
  const timer = setTimeout(() => c.kill("SIGKILL"), STOP_GRACE_MS);
  await gone;
  clearTimeout(timer);
}

/**
 * In a worker child: when the parent's IPC channel closes (the parent exited or was killed -9), stop
 * as on SIGTERM, so an orphaned worker never keeps holding partitions. A no-op without a channel.
 */
export function stopWithParent(): void {
  if (!process.channel) return;
  process.channel.unref();
  process.once("disconnect", () => process.kill(process.pid, "SIGTERM"));
}
