/**
 * A CPU profile of this process over the load window (V8's sampling profiler through the
 * inspector, 1 ms samples), summarised by stage: each sample goes to the stage of the nearest
 * frame, from the running function outwards, that belongs to one — so a query built by the
 * Postgres driver counts for the driver, a schema check in the worker for the worker. Native socket
 * writes are a stage of their own: V8 samples wall time, and a write that wakes its peer on a busy
 * machine often waits for the core to come back (see the bench's main-thread run-queue figure).
 */
import { Session } from "node:inspector/promises";

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: Array<number>;
}
interface Profile {
  nodes: Array<ProfileNode>;
  samples: Array<number>;
  timeDeltas: Array<number>;
}

export interface ProfileSummary {
  /** Samples taken (about one per millisecond of CPU on this thread). */
  readonly samples: number;
  /** Share of samples in which the thread was idle (waiting for I/O). */
  readonly idle: number;
  /** Share of the busy samples per stage, largest first. */
  readonly stages: ReadonlyArray<{ stage: string; share: number }>;
  /** The functions with the most samples of their own (busy samples), largest first. */
  readonly hottest: ReadonlyArray<{ fn: string; share: number }>;
}

/** Stages by where a frame's code lives; the first match wins. */
const STAGES: ReadonlyArray<[RegExp, string]> = [
  [/node_modules\/postgres\//, "Postgres driver (queries, results)"],
  [/node_modules\/(pg|pg-logical-replication|pg-protocol)\/|\/cdc\//, "CDC (replication stream, mapping)"],
  [/node_modules\/@nats-io\//, "NATS client (publish, consume)"],
  [/node_modules\/undici\/|\/bench\//, "load generator (this benchmark)"],
  [
    /node_modules\/(fastify|@fastify|find-my-way|avvio|light-my-request|fast-json-stringify|ajv)|node:_http_|\/src\/http\//,
    "HTTP API (fastify, routes)",
  ],
  [/node_modules\/effect\//, "command schema checks (Effect Schema)"],
  [/node_modules\/xstate\//, "SKU actors (xstate)"],
  [/\/actors\/|\/ledger\//, "worker apply (decide, plan, hash)"],
  [/\/src\/relay\.ts|\/src\/webhooks\.ts/, "outbox relay"],
  [/node_modules\/(pino|prom-client)\//, "logs and metrics"],
];

const SOCKET_WRITES = new Set(["writeBuffer", "writev", "writeUtf8String", "writeLatin1String", "writeAsciiString", "writeUcs2String"]);

export async function startProfile(): Promise<() => Promise<ProfileSummary>> {
  const session = new Session();
  session.connect();
  await session.post("Profiler.enable");
  await session.post("Profiler.setSamplingInterval", { interval: 1000 });
  await session.post("Profiler.start");
  return async () => {
    const { profile } = (await session.post("Profiler.stop")) as { profile: Profile };
    session.disconnect();
    return summarise(profile);
  };
}

export function summarise(profile: Profile): ProfileSummary {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const stageOf = new Map<number, string>();
  const stage = (id: number): string => {
    const known = stageOf.get(id);
    if (known) return known;
    const n = byId.get(id)!;
    const name = n.callFrame.functionName;
    let s: string | undefined;
    if (name === "(garbage collector)") s = "garbage collection";
    // Native socket writes: the system call is cheap (~10 µs), but the write wakes its peer, which
    // may take the core, and V8 keeps sampling (wall time) while this thread waits to get it back.
    else if (n.callFrame.url === "" && SOCKET_WRITES.has(name)) s = "socket writes (incl. waiting for a CPU after waking the peer)";
    else if (name === "(program)") s = "V8 and Node internals";
    else s = STAGES.find(([re]) => re.test(n.callFrame.url))?.[1];
    if (!s) {
      const up = parent.get(id);
      s = up === undefined ? "Node internals (timers, streams)" : stage(up);
    }
    stageOf.set(id, s);
    return s;
  };
  const stages = new Map<string, number>();
  const self = new Map<string, number>();
  let idle = 0;
  for (const id of profile.samples) {
    const n = byId.get(id)!;
    if (n.callFrame.functionName === "(idle)") {
      idle++;
      continue;
    }
    const s = stage(id);
    stages.set(s, (stages.get(s) ?? 0) + 1);
    const where = n.callFrame.url
      ? `${n.callFrame.url.replace(/^.*node_modules\//, "").replace(/^file:\/\/.*?\/(actors|src|cdc|ledger|bench)\//, "$1/")}:${n.callFrame.lineNumber + 1}`
      : "native";
    const fn = `${n.callFrame.functionName || "(anonymous)"} (${where})`;
    self.set(fn, (self.get(fn) ?? 0) + 1);
  }
  const busy = profile.samples.length - idle;
  const share = (k: number) => Math.round((1000 * k) / Math.max(1, busy)) / 1000;
  return {
    samples: profile.samples.length,
    idle: Math.round((1000 * idle) / Math.max(1, profile.samples.length)) / 1000,
    stages: [...stages].sort((a, b) => b[1] - a[1]).map(([stage, k]) => ({ stage, share: share(k) })),
    hottest: [...self]
      .sort((a, b) => b[1] - a[1])
      .slice(0, 15)
      .map(([fn, k]) => ({ fn, share: share(k) })),
  };
}
