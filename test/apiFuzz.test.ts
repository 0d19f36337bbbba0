import type { AddressInfo } from "node:net";
import { AckPolicy, DeliverPolicy } from "@nats-io/jetstream";
import { Ajv, type ValidateFunction } from "ajv";
import addFormats from "ajv-formats";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { payloadHash } from "../src/ingest/posTransaction.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { auth, deadLetters, defineItems, startApi, type ApiFixture } from "./apiSupport.ts";
import {
  invalidSample,
  prng as seeded,
  resolver,
  validSample,
  WEIRD as ODD,
  type Hints,
  type JsonSchema,
  type Rand,
} from "./support/schemaSamples.ts";

let ctx: TestContext;
let api: ApiFixture;

beforeAll(async () => {
  ctx = await testContext();
  // With a stream token secret, so POST /v1/stream-tokens is exercised as configured (unset, it answers 503 by design).
  api = await startApi(ctx, { rateLimitPerMinute: 1_000_000, background: false }, undefined, {
    streamTokenSecret: "fuzz-stream-token-secret-of-32-characters!",
  });
  await defineItems(api.sql, [
    {
      sku: "FZ-A",
      kind: "stock",
      baseUnit: "EA",
      units: { CASE: 6 },
      identifiers: [
        { system: "barcode", id: "111" },
        { system: "barcode", id: "112", uom: "CASE" },
      ],
    },
    { sku: "FZ-W", kind: "stock", baseUnit: "g", units: { kg: 1000 }, identifiers: [{ system: "plu", id: "42" }] },
  ]);
});
afterAll(async () => {
  await api?.close();
});

/** A small seeded PRNG (mulberry32): a failure can be replayed from its seed. */
function prng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number) => Math.floor(next() * n);
  const pick = <T>(xs: ReadonlyArray<T>): T => xs[int(xs.length)]!;
  return { next, int, pick };
}

const SEED = Number(process.env.FUZZ_SEED ?? 20261126);
const R = prng(SEED);
const WEIRD: ReadonlyArray<unknown> = [
  null,
  true,
  false,
  0,
  -1,
  1.5,
  // biome-ignore lint/correctness/noPrecisionLoss: 1e309 overflows to Infinity on purpose: the fuzz wants the largest double there is
  1e309 === Infinity ? 1e308 : 0,
  -0,
  "",
  " ",
  "0",
  "1e3",
  "NaN",
  "🧀",
  "a".repeat(300),
  "S01\u0000",
  "../../etc",
  [],
  [1],
  {},
  { a: 1 },
  2 ** 53,
  -(2 ** 53),
  1e-7,
  "1.25",
  "1,25",
  "2026-02-30T10:00:00Z",
  "2026-11-26T10:00:00",
  "2026-11-26T10:00:00Z",
];

let txnNo = 0;
function validLine(n: number): Record<string, unknown> {
  switch (R.int(5)) {
    case 0:
      return { line: n, type: "sale", barcode: "111", qty: 1 + R.int(5) };
    case 1:
      return { line: n, type: "sale", barcode: "112", qty: 1 + R.int(2) };
    case 2:
      return { line: n, type: "sale", plu: "42", weight: { value: R.pick(["0.5", "1.25", 0.75, "2"]), unit: R.pick(["kg", "g"]) } };
    case 3:
      return { line: n, type: "return", sku: "FZ-A", qty: 1, restockable: R.next() < 0.5 };
    default:
      return { line: n, type: "sale", sku: R.pick(["FZ-A", "FZ-UNKNOWN"]), qty: 1 };
  }
}
function transaction(): Record<string, unknown> {
  const lines = Array.from({ length: 1 + R.int(4) }, (_, i) => validLine(i + 1));
  if (R.next() < 0.2 && lines.length > 1) lines.push({ line: lines.length + 1, type: "void", voids: 1 + R.int(lines.length + 1) });
  return { store: R.pick(["S01", "DC1"]), terminal: `T${R.int(3)}`, id: `fz${++txnNo}`, occurredAt: "2026-11-26T10:00:00Z", lines };
}
/** Breaks a value in one random place: a field removed, replaced by something odd, or a new one added. */
function mutate(value: unknown, depth = 0): unknown {
  if (value === null || typeof value !== "object" || depth > 4) return R.pick(WEIRD);
  const copy: Record<string, unknown> | Array<unknown> = Array.isArray(value) ? [...value] : { ...(value as Record<string, unknown>) };
  const keys = Object.keys(copy);
  const roll = R.next();
  if (keys.length === 0 || roll < 0.15)
    (copy as Record<string, unknown>)[R.pick(["extra", "qty", "weight", "voids", "type", "lines"])] = R.pick(WEIRD);
  else {
    const k = R.pick(keys);
    if (roll < 0.35) delete (copy as Record<string, unknown>)[k];
    else if (roll < 0.7) (copy as Record<string, unknown>)[k] = R.pick(WEIRD);
    else (copy as Record<string, unknown>)[k] = mutate((copy as Record<string, unknown>)[k], depth + 1);
  }
  return copy;
}
function body(): string {
  const r = R.next();
  if (r < 0.08) return R.pick(["", "{", "[]", "null", '{"transactions":', "\u0000", "nope", "1", '"str"', "{}".repeat(3)]);
  if (r < 0.16) return JSON.stringify(mutate({ transactions: [transaction()] }));
  const txns = Array.from({ length: 1 + R.int(4) }, () => (R.next() < 0.6 ? mutate(transaction()) : transaction()));
  return JSON.stringify({ transactions: txns });
}

describe("fuzzing POST /v1/pos/transactions", () => {
  it(`never answers 5xx, never writes a rejected transaction, dead-letters every rejection (seed ${SEED})`, async () => {
    const rejected: Array<{ raw: unknown; id: unknown }> = [];
    const wholeBodies: Array<string> = [];
    let accepted = 0;
    for (let i = 0; i < 2000; i++) {
      const text = body();
      const r = await api.call({
        method: "POST",
        url: "/v1/pos/transactions",
        as: "pos",
        headers: { "content-type": "application/json" },
        payload: text,
      });
      expect(r.statusCode, `request ${i}: ${text.slice(0, 200)} → ${r.body.slice(0, 300)}`).toBeLessThan(500);
      expect([200, 400, 409], text.slice(0, 200)).toContain(r.statusCode);
      const res = r.json() as { results: Array<{ index: number; status: string; reason?: string }>; error?: string };
      if (res.results.length === 0) {
        wholeBodies.push(text);
        continue;
      }
      const sent = (JSON.parse(text) as { transactions: Array<unknown> }).transactions;
      for (const t of res.results) {
        if (t.status === "accepted") accepted++;
        else if (t.reason !== "idempotency_conflict") rejected.push({ raw: sent[t.index], id: (sent[t.index] as { id?: unknown } | null)?.id });
      }
    }
    expect(accepted).toBeGreaterThan(100);
    expect(rejected.length).toBeGreaterThan(500);
    // Nothing of a rejected transaction reached the stream or the ledger (ids are unique per generated transaction).
    const rejectedIds = [...new Set(rejected.map((r) => r.id).filter((id): id is string => typeof id === "string" && /^fz\d+$/.test(id)))];
    const acceptedIds = new Set<string>();
    const rows = await api.sql<Array<{ transaction_id: string }>>`select transaction_id from pos_transactions`;
    for (const r of rows) acceptedIds.add(r.transaction_id);
    const leaked = rejectedIds.filter((id) => !acceptedIds.has(id)); // an id accepted in another (unmutated) form is not a leak
    // What reaches the ledger is what was published to the commands stream.
    const msgs = await api.h.nats.jsm.streams.info(api.h.topology.commandsStream);
    expect(msgs.state.messages).toBeGreaterThan(0);
    const consumer = await api.h.nats.jsm.consumers.add(api.h.topology.commandsStream, {
      ack_policy: AckPolicy.None,
      deliver_policy: DeliverPolicy.All,
      inactive_threshold: 30_000_000_000,
    });
    const c = await api.h.nats.js.consumers.get(api.h.topology.commandsStream, consumer.name);
    const published = new Set<string>();
    for (;;) {
      const batch = await c.fetch({ max_messages: 1000, expires: 1000 });
      let got = 0;
      for await (const m of batch) {
        got++;
        for (const cmd of m.json<{ commands: Array<{ id: string }> }>().commands) published.add(cmd.id.split(":")[3]!);
      }
      if (got === 0) break;
    }
    for (const id of leaked) expect(published.has(id), `rejected transaction ${id} was published`).toBe(false);
    // Every rejection is in the dead-letter stream with its payload.
    const letters = await deadLetters(api.h, "pos");
    const key = (v: unknown) => (typeof v === "string" ? `text:${v}` : payloadHash(v));
    const kept = new Set(letters.map((l) => key(l.payload)));
    for (const r of rejected) expect(kept.has(key(r.raw)), `rejection not dead-lettered: ${JSON.stringify(r.raw).slice(0, 200)}`).toBe(true);
    for (const text of wholeBodies) {
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch {
        expect(kept.has(`text:${text}`), `unparsable body not dead-lettered: ${text}`).toBe(true);
        continue;
      }
      expect(kept.has(key(parsed)), `body not dead-lettered: ${text.slice(0, 200)}`).toBe(true);
    }
  }, 180_000);
});

/** One operation of the OpenAPI document, as the fuzzer needs it. */
interface Operation {
  readonly method: string;
  readonly path: string;
  readonly params: ReadonlyArray<{ name: string; in: "path" | "query" | "header"; required: boolean; schema: JsonSchema }>;
  readonly body: JsonSchema | null;
  readonly bodyRequired: boolean;
  readonly responses: Record<string, { content?: Record<string, { schema?: JsonSchema }> }>;
}
interface Request {
  path: Record<string, unknown>;
  query: Record<string, unknown>;
  header: Record<string, unknown>;
  /** JSON value, or raw text when `raw` is set. */
  body?: unknown;
  raw?: string;
  contentType?: string;
}

const EXAMPLES = Number(process.env.FUZZ_EXAMPLES ?? 50);

describe("fuzzing every operation of the live OpenAPI document (/docs/json)", () => {
  let base: string;
  let doc: { paths: Record<string, Record<string, Record<string, unknown>>>; components?: { schemas?: Record<string, JsonSchema> } };
  let ajv: Ajv;
  const validators = new Map<string, ValidateFunction>();
  let reservationId = "r_00000000000000000000000000000000";

  beforeAll(async () => {
    await api.app.listen({ port: 0, host: "127.0.0.1" });
    base = `http://127.0.0.1:${(api.app.server.address() as AddressInfo).port}`;
    const d = await fetch(`${base}/docs/json`);
    expect(d.status).toBe(200);
    doc = (await d.json()) as typeof doc;
    // OpenAPI 3.0 schemas: `nullable`, `example`… are not JSON Schema keywords.
    ajv = new Ajv({ strict: false, allErrors: false, validateFormats: true });
    addFormats.default(ajv);
    ajv.addSchema({ $id: "openapi", components: doc.components ?? {} });
    // A real reservation, so that commit/release/get see an id that exists.
    const made = await fetch(`${base}/v1/reservations`, {
      method: "POST",
      headers: { ...auth("admin"), "content-type": "application/json", "idempotency-key": "fuzz-seed" },
      body: JSON.stringify({ channel: "web", lines: [{ sku: "FZ-A", qty: 1 }], ttlSeconds: 600 }),
    });
    const id = ((await made.json()) as { id?: string }).id;
    if (id) reservationId = id;
  });

  const validator = (schema: JsonSchema): ValidateFunction => {
    const key = JSON.stringify(schema);
    let v = validators.get(key);
    if (!v) {
      // References point into the document's components: resolve them through the registered "openapi" schema.
      const rewritten = JSON.parse(key.replaceAll('"#/components/', '"openapi#/components/')) as JsonSchema;
      validators.set(key, (v = ajv.compile(rewritten)));
    }
    return v;
  };

  function operations(): Array<Operation> {
    const out: Array<Operation> = [];
    for (const [path, methods] of Object.entries(doc.paths))
      for (const [method, raw] of Object.entries(methods)) {
        if (!["get", "post", "put", "patch", "delete"].includes(method)) continue;
        const op = raw as {
          parameters?: Array<{ name: string; in: string; required?: boolean; schema: JsonSchema }>;
          requestBody?: { required?: boolean; content?: Record<string, { schema: JsonSchema }> };
          responses: Operation["responses"];
        };
        out.push({
          method: method.toUpperCase(),
          path,
          params: (op.parameters ?? [])
            .filter((p) => p.in !== "cookie")
            .map((p) => ({ name: p.name, in: p.in as "path" | "query" | "header", required: p.required ?? false, schema: p.schema })),
          body: op.requestBody?.content?.["application/json"]?.schema ?? null,
          bodyRequired: op.requestBody?.required ?? false,
          responses: op.responses,
        });
      }
    return out;
  }

  const hints = (): Hints => ({
    sku: ["FZ-A", "FZ-W"],
    skus: ["FZ-A", "FZ-A,FZ-W"],
    pin: ["FZ-A", "FZ-A,FZ-W"],
    location: ["DC1", "S01"],
    store: ["S01", "DC1"],
    channel: ["web", "store_s01"],
    id: [reservationId],
    origin: ["pos", "reservations"],
    barcode: ["111", "112"],
    plu: ["42"],
  });

  function validRequest(op: Operation, r: Rand): Request {
    const deref = resolver(doc);
    const h = hints();
    const req: Request = { path: {}, query: {}, header: {} };
    for (const p of op.params) {
      if (p.name === "authorization") continue;
      if (!p.required && r.next() < 0.5) continue;
      for (let tries = 0; ; tries++) {
        const v = validSample(p.schema, p.name, r, deref, tries < 5 ? h : {});
        if (validator(p.schema)(p.in === "query" || p.in === "path" || p.in === "header" ? coerce(p.schema, v, deref) : v)) {
          req[p.in][p.name] = v;
          break;
        }
        if (tries > 50) throw new Error(`cannot make a valid ${p.in} ${p.name} of ${op.method} ${op.path}: ${JSON.stringify(p.schema)}`);
      }
    }
    if (op.body) {
      for (let tries = 0; ; tries++) {
        const v = validSample(op.body, "body", r, deref, tries < 5 ? h : {});
        if (validator(op.body)(v)) {
          req.body = v;
          break;
        }
        if (tries > 50) throw new Error(`cannot make a valid body of ${op.method} ${op.path}: ${JSON.stringify(validator(op.body).errors)}`);
      }
    }
    if (op.path.startsWith("/v1/reservations") && op.method === "POST") req.header["idempotency-key"] ??= `fz-${r.int(1e9)}`;
    return req;
  }

  /** A valid request broken in one place: a parameter or a body field given an odd value or dropped, or a body that is not JSON, nested too deep, too big, or of another media type. */
  function invalidRequest(op: Operation, r: Rand): Request {
    const req = validRequest(op, r);
    const deref = resolver(doc);
    const targets: Array<() => void> = [];
    for (const p of op.params) {
      if (p.name === "authorization") continue;
      targets.push(() => (req[p.in][p.name] = ODD_FOR[p.name] && r.next() < 0.5 ? r.pick(ODD_FOR[p.name]!) : invalidSample(p.schema, r, deref)));
      if (p.required) targets.push(() => delete req[p.in][p.name]);
    }
    if (op.body) {
      const body = op.body;
      targets.push(() => (req.body = breakValue(req.body, body, r, deref)));
      targets.push(
        () =>
          (req.raw = r.pick([
            "",
            "{",
            "nope",
            "[]",
            "null",
            '{"a":',
            "\u0000",
            "[".repeat(5000) + "]".repeat(5000),
            `${'{"a":'.repeat(3000)}1${"}".repeat(3000)}`,
          ])),
      );
      targets.push(() => (req.contentType = r.pick(["text/plain", "application/xml", "application/x-www-form-urlencoded"])));
    }
    if (op.method !== "GET" && !op.body)
      targets.push(() => {
        req.raw = JSON.stringify({ unexpected: ODD[r.int(ODD.length)] });
        req.contentType = "application/json";
      });
    if (targets.length === 0) targets.push(() => (req.query[r.pick(["unexpected", "limit", "channel"])] = r.pick(ODD)));
    r.pick(targets)();
    return req;
  }

  async function send(op: Operation, req: Request): Promise<{ status: number; contentType: string; text: string }> {
    let url = op.path.replace(/\{(\w+)\}/g, (_, name: string) => encodeURIComponent(String(req.path[name] ?? "")));
    const qs = new URLSearchParams();
    for (const [k, v] of Object.entries(req.query)) qs.append(k, typeof v === "string" ? v : (JSON.stringify(v) ?? ""));
    if ([...qs].length > 0) url += `?${qs}`;
    const headers: Record<string, string> = { ...auth("admin") };
    for (const [k, v] of Object.entries(req.header)) headers[k] = asHeader(v);
    let body: string | undefined;
    if (req.raw !== undefined || req.body !== undefined) {
      body = req.raw ?? JSON.stringify(req.body);
      headers["content-type"] = req.contentType ?? "application/json";
    }
    const abort = new AbortController();
    const res = await fetch(`${base}${url}`, { method: op.method, headers, body, signal: abort.signal });
    const contentType = (res.headers.get("content-type") ?? "").split(";")[0]!.trim();
    // An event stream never ends by itself: its headers are the answer.
    if (contentType === "text/event-stream") {
      abort.abort();
      return { status: res.status, contentType, text: "" };
    }
    return { status: res.status, contentType, text: await res.text() };
  }

  /** The response is documented: its status, its media type, and (JSON) its schema. */
  function conforms(op: Operation, res: { status: number; contentType: string; text: string }): string | null {
    const documented = op.responses[String(res.status)] ?? op.responses[`${String(res.status)[0]}XX`] ?? op.responses.default;
    if (!documented) return `status ${res.status} is not documented (documented: ${Object.keys(op.responses).join(", ")})`;
    const content = documented.content;
    if (!content) return res.text === "" ? null : `status ${res.status} is documented without a body, got ${res.contentType}`;
    const media = content[res.contentType];
    if (!media)
      return `media type ${res.contentType || "(none)"} is not documented for ${res.status} (documented: ${Object.keys(content).join(", ")})`;
    if ((res.contentType !== "application/json" && res.contentType !== "application/problem+json") || !media.schema) return null;
    let json: unknown;
    try {
      json = JSON.parse(res.text);
    } catch {
      return `status ${res.status}: body is not JSON: ${res.text.slice(0, 100)}`;
    }
    const v = validator(media.schema);
    return v(json) ? null : `status ${res.status}: body does not match its schema: ${ajv.errorsText(v.errors)} in ${res.text.slice(0, 200)}`;
  }

  it(`answers ${EXAMPLES} valid and ${EXAMPLES} invalid requests per operation with no 5xx, each response as documented (seed ${SEED})`, async () => {
    const r = seeded(SEED);
    const ops = operations();
    expect(ops.length).toBeGreaterThan(15);
    const problems: Array<string> = [];
    const statuses = new Map<string, Set<number>>();
    for (const op of ops) {
      const seen = new Set<number>();
      statuses.set(`${op.method} ${op.path}`, seen);
      for (let i = 0; i < EXAMPLES * 2; i++) {
        const valid = i < EXAMPLES;
        const req = valid ? validRequest(op, r) : invalidRequest(op, r);
        const res = await send(op, req);
        seen.add(res.status);
        const what = `${JSON.stringify(req).slice(0, 300)} → ${res.status} ${res.text.slice(0, 200)}`;
        const where = `${valid ? "valid" : "invalid"} ${op.method} ${op.path}`;
        // /readyz answering 503 is its documented "not ready" (e.g. a partition between holders on a
        // loaded machine), not a server error; its body is still checked against the document below.
        const notReady = op.path === "/readyz" && res.status === 503;
        if (res.status >= 500 && !notReady) problems.push(`5xx ${res.status} on ${where}: ${what}`);
        const bad = conforms(op, res);
        if (bad) problems.push(`${where}: ${bad}: ${what}`);
      }
    }
    // One example of each kind of problem (its first 100 characters name the kind and the operation).
    const kinds = new Map<string, string>();
    for (const p of problems) if (!kinds.has(p.slice(0, 100))) kinds.set(p.slice(0, 100), p);
    expect([...kinds.values()], `${problems.length} problems`).toEqual([]);
    // The valid examples reach the routes' work, not only their validation.
    const reached = [...statuses.values()].filter((s) => [...s].some((c) => c < 300)).length;
    expect(reached).toBeGreaterThan(ops.length / 2);
  }, 120_000);
});

/** Odd values for fields whose schema says little (a date as free text, an id as a string): what their type alone would not try. */
const ODD_FOR: Readonly<Record<string, ReadonlyArray<unknown>>> = {
  from: ["0000-01-01", "0000-12-31T23:00:00Z", "99999-01-01", "-000001-01-01T00:00:00Z", "2026-13-45", "1e20"],
  to: ["0000-01-01", "0000-12-31T23:00:00Z", "99999-01-01", "-000001-01-01T00:00:00Z", "2026-13-45", "1e20"],
  lastEventId: ["1e20", "100000000000000000000", "-1", "9223372036854775808"],
  "last-event-id": ["1e20", "100000000000000000000", "9223372036854775808"],
  cursor: ["9223372036854775808", "99999999999999999999", "-1"],
  limit: ["1e20", "0", "-1"],
};

/** A path, query or header value as its schema's validator sees it after fastify's coercion. */
function coerce(schema: JsonSchema, v: unknown, deref: (s: JsonSchema) => JsonSchema): unknown {
  const s = deref(schema);
  return (s.type === "integer" || s.type === "number") && typeof v === "string" && /^-?\d+(\.\d+)?$/.test(v) ? Number(v) : v;
}

/** A body with one field broken: a property of an object (at any depth) given an odd value, or a required one removed. */
function breakValue(value: unknown, schema: JsonSchema, r: Rand, deref: (s: JsonSchema) => JsonSchema): unknown {
  const s = deref(schema);
  if (value === null || typeof value !== "object" || r.next() < 0.2) return invalidSample(s, r, deref);
  if (Array.isArray(value)) {
    if (value.length === 0) return [invalidSample(s.items ?? {}, r, deref)];
    const copy = [...value];
    const i = r.int(copy.length);
    copy[i] = breakValue(copy[i], s.items ?? {}, r, deref);
    return copy;
  }
  const copy = { ...(value as Record<string, unknown>) };
  const keys = Object.keys(copy);
  if (keys.length === 0 || r.next() < 0.15) {
    copy[r.pick(["extra", ...Object.keys(s.properties ?? {})])] = r.pick(ODD);
    return copy;
  }
  const k = r.pick(keys);
  if (r.next() < 0.25) delete copy[k];
  else copy[k] = breakValue(copy[k], s.properties?.[k] ?? {}, r, deref);
  return copy;
}

/** Header values are bytes: an odd value is sent as its JSON text, without what HTTP cannot carry. */
function asHeader(v: unknown): string {
  const text = typeof v === "string" ? v : (JSON.stringify(v) ?? "");
  return text.replace(/[^\x20-\x7e]/g, "?");
}
