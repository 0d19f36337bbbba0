/**
 * The OpenAPI document as channels' generated clients see it, dumped from the real app:
 * - Redocly's recommended lint passes with no error and no warning (redocly.yaml);
 * - openapi-typescript's types of it equal the committed test/openapi/tallyApi.ts, which the typed client
 *   (test/openapi/client.ts) and the calls below are type-checked against by `tsc`;
 * - the typed client's replies from the live app are what the document promises (status, media type, schema),
 *   errors included: RFC 9457 problem documents as application/problem+json.
 * `npm run check:openapi` runs this file. TALLY_OPENAPI_WRITE=1 rewrites tallyApi.ts from the document
 * (`npm run openapi:types`); TALLY_OPENAPI_OUT=<file> keeps the dumped document.
 */
import { execFile, spawn } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { Ajv, type ValidateFunction } from "ajv";
import addFormats from "ajv-formats";
import openapiTS, { astToString, type OpenAPI3 } from "openapi-typescript";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { testContext } from "./support/context.ts";
import { startApi, type ApiFixture } from "./apiSupport.ts";
import { horizonPast, insertJournal } from "./support/glJournal.ts";
import { OPERATIONS, TallyClient, type Conformance, type Send } from "./openapi/client.ts";

const root = resolve(import.meta.dirname, "..");
const bin = (name: string) => join(root, "node_modules", ".bin", name);
const TYPES = join(root, "test", "openapi", "tallyApi.ts");

type Content = Record<string, { schema?: object }>;

interface Operation {
  operationId?: string;
  tags?: Array<string>;
  security?: Array<unknown>;
  parameters?: Array<unknown>;
  requestBody?: unknown;
  responses: Record<string, { content?: Content }>;
}
type Doc = { paths: Record<string, Record<string, Operation>>; components: { schemas: Record<string, object> } } & Record<string, unknown>;

let api: ApiFixture;
let dir: string;
let doc: Doc;

beforeAll(async () => {
  api = await startApi(await testContext(), { decisionTimeoutMs: 5000 }, ["worker"]);
  dir = await mkdtemp(join(tmpdir(), "tally-openapi-"));
  doc = api.app.swagger() as unknown as Doc;
  if (process.env.TALLY_OPENAPI_OUT) await writeFile(process.env.TALLY_OPENAPI_OUT, JSON.stringify(doc, null, 2));
});
afterAll(async () => {
  await api?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const operations = (): Array<[string, string, Operation]> =>
  Object.entries(doc.paths).flatMap(([path, methods]) =>
    Object.entries(methods).map(([method, op]): [string, string, Operation] => [method, path, op]),
  );

describe("the OpenAPI document", () => {
  it("passes Redocly's recommended lint with no error and no warning", async () => {
    const file = join(dir, "openapi.json");
    await writeFile(file, JSON.stringify(doc, null, 2));
    // npm run lint:openapi: `redocly lint --config redocly.yaml` (the recommended ruleset).
    const r = await promisify(execFile)("npm", ["run", "--silent", "lint:openapi", "--", file, "--format", "json"], {
      cwd: root,
      env: { ...process.env, REDOCLY_TELEMETRY: "off", REDOCLY_SUPPRESS_UPDATE_NOTICE: "true" },
    }).catch((e: { stdout: string }) => e);
    const report = JSON.parse(r.stdout) as { totals: { errors: number; warnings: number }; problems: Array<{ ruleId: string; message: string }> };
    expect(report.problems.map((p) => `${p.ruleId}: ${p.message}`)).toEqual([]);
    expect(report.totals).toMatchObject({ errors: 0, warnings: 0 });
  });

  it("names every operation, tags it, and documents its errors as application/problem+json", () => {
    const ids = operations().map(([, , op]) => op.operationId);
    expect(new Set(ids).size).toBe(ids.length);
    expect(ids.filter((id) => id === undefined)).toEqual([]);
    expect(Object.keys(OPERATIONS).sort()).toEqual([...ids].sort());
    expect(JSON.stringify(doc)).not.toMatch(/def-\d/);
    expect(doc).toMatchObject({ info: { license: { name: "Apache-2.0" } }, servers: [{ url: "/" }] });
    for (const [method, path, op] of operations()) {
      const where = `${method} ${path}`;
      expect(op.tags, where).toHaveLength(1);
      for (const [status, response] of Object.entries(op.responses))
        if (Number(status) >= 400 && !(path === "/readyz" && status === "503"))
          expect(Object.keys(response.content ?? {}), `${where} ${status}`).toEqual(["application/problem+json"]);
      // What takes a token or input can be refused: the probes alone have no 4XX.
      if (op.security === undefined || op.parameters !== undefined || op.requestBody !== undefined)
        expect(Object.keys(op.responses), where).toEqual(expect.arrayContaining(op.security === undefined ? ["400", "401", "403"] : ["400"]));
    }
    // Every JSON body, asked or answered, is a named component schema (generated clients name their types after them).
    for (const [method, path, op] of operations())
      for (const content of [...Object.values(op.responses).map((r) => r.content), (op.requestBody as { content?: Content } | undefined)?.content])
        for (const [type, { schema }] of Object.entries(content ?? {}))
          if (type === "application/json" || type.endsWith("+json"))
            expect(schema, `${method} ${path} ${type}`).toMatchObject({ $ref: expect.stringMatching(/^#\/components\/schemas\/[A-Z]\w+$/) });
    const media = (path: string, method = "get") => Object.keys(doc.paths[path]![method]!.responses["200"]!.content ?? {});
    expect(media("/v1/availability/stream")).toEqual(["text/event-stream"]);
    expect(media("/v1/dashboard/stream")).toEqual(["text/event-stream"]);
    expect(media("/v1/ledger/export")).toEqual(["text/csv", "application/x-ndjson"]);
    expect(media("/metrics")).toEqual(["text/plain"]);
  });

  it("generates the TypeScript types committed in test/openapi/tallyApi.ts (TALLY_OPENAPI_WRITE=1 rewrites them)", async () => {
    const generated = await formatted(generatedTypes(astToString(await openapiTS(doc as unknown as OpenAPI3, { defaultNonNullable: false }))));
    if (process.env.TALLY_OPENAPI_WRITE) await writeFile(TYPES, generated);
    expect(await readFile(TYPES, "utf8"), "the document changed: regenerate with `npm run openapi:types`").toBe(generated);
  });
});

/** The generated text, with the header that says how to regenerate it and without the two empty roots nothing uses. */
function generatedTypes(text: string): string {
  const body = text.replace("export type webhooks = Record<string, never>;\n", "").replace("export type $defs = Record<string, never>;\n", "");
  return `/**\n * Generated by openapi-typescript from the document the app serves at /docs/json: do not edit.\n * Regenerate with \`npm run openapi:types\`; test/openapi.test.ts fails while it differs.\n */\n\n${body}`;
}

/** The text as the project's formatter writes it (so that the committed file passes `biome format`). */
function formatted(text: string): Promise<string> {
  return new Promise((done, fail) => {
    const child = spawn(bin("biome"), ["format", `--stdin-file-path=${TYPES}`], { cwd: root });
    let out = "";
    let err = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    child.on("error", fail);
    child.on("close", (code) => (code === 0 ? done(out) : fail(new Error(`biome format: ${err}`))));
    child.stdin.end(text);
  });
}

/** Checks a reply against the document: its status and media type are documented, and a JSON body matches the schema. */
function conformance(): Conformance {
  const ajv = new Ajv({ strict: false, validateFormats: true });
  addFormats.default(ajv);
  ajv.addSchema({ $id: "openapi", components: doc.components });
  const validators = new Map<string, ValidateFunction>();
  const byId = new Map(operations().map(([, , op]) => [op.operationId!, op]));
  return (id, status, mediaType, body) => {
    const response = byId.get(id)?.responses[String(status)];
    if (!response) return `status ${status} is not documented`;
    const media = response.content?.[mediaType];
    if (!media) return `${status} ${mediaType} is not documented (${Object.keys(response.content ?? {}).join(", ")})`;
    if (!/^application\/([a-z.-]+\+)?json$/.test(mediaType) || !media.schema) return null;
    const key = JSON.stringify(media.schema).replaceAll('"#/components/', '"openapi#/components/');
    let v = validators.get(key);
    if (!v) validators.set(key, (v = ajv.compile(JSON.parse(key) as object)));
    return v(body) ? null : `${status} does not match its schema: ${ajv.errorsText(v.errors)} in ${JSON.stringify(body).slice(0, 300)}`;
  };
}

describe("a client typed by the generated types, against the live app", () => {
  const send: Send = async ({ method, url, headers, body }) => {
    const r = await api.app.inject({ method: method as "GET", url, headers, ...(body !== undefined ? { payload: body } : {}) });
    return {
      status: r.statusCode,
      mediaType: String(r.headers["content-type"] ?? "")
        .split(";")[0]!
        .trim(),
      text: r.body,
    };
  };
  const client = (token = "secret-admin") => new TallyClient(send, token, conformance());

  it("gets what the document promises, successes and problems alike", async () => {
    const health = await client().call("getHealth", {});
    expect(health.status === 200 && health.body.ok).toBe(true);

    const unknown = await client("secret-reader").call("getAvailability", { path: { sku: "NOPE-1" }, query: { channel: "web" } });
    if (unknown.status !== 404) throw new Error(`expected 404, got ${unknown.status}`);
    expect(unknown.mediaType).toBe("application/problem+json");
    expect(unknown.body).toEqual({
      type: "/problems/unknown-sku",
      title: "The ledger has never seen this SKU",
      status: 404,
      detail: "the ledger has never seen SKU NOPE-1",
      instance: "/v1/availability/NOPE-1",
      code: "unknown_sku",
    });

    const list = await client("secret-reader").call("listAvailability", { query: { channel: "web", skus: "NOPE-1,NOPE-2" } });
    expect(list.status === 200 && list.body.unknown).toEqual(["NOPE-1", "NOPE-2"]);

    const bad = await client("secret-reader").call("listAvailability", { query: { channel: "web", skus: "a b" } });
    expect(bad.status === 400 && bad.body.errors).toEqual([{ path: "querystring.skus", detail: '"a b" is not a SKU' }]);

    const page = await client().call("listLedgerEntries", { query: { limit: 5 } });
    expect(page.status === 200 && page.body.nextCursor).toBeNull();
  });

  it("answers a validation failure, a missing token and a missing scope as problems naming what is wrong", async () => {
    const invalid = await client().call("listLedgerEntries", { query: { limit: 0 } });
    if (invalid.status !== 400) throw new Error(`expected 400, got ${invalid.status}`);
    expect(invalid.body).toMatchObject({ code: "invalid_request", type: "/problems/invalid-request", instance: "/v1/ledger/entries" });
    expect(invalid.body.errors).toEqual([{ path: "querystring.limit", detail: "must be >= 1" }]);

    const anonymous = await client("nobody").call("getStock", { path: { sku: "X-1" } });
    expect(anonymous.status === 401 && anonymous.body.code).toBe("unauthorized");
    const scope = await client("secret-pos").call("getStock", { path: { sku: "X-1" } });
    expect(scope.status === 403 && scope.body.detail).toBe("this token lacks scope availability:read");
  });

  it("refuses a reservation it cannot hold with a ReservationProblem listing each line", async () => {
    const r = await client("secret-reserver").call("createReservation", {
      header: { "idempotency-key": "openapi-1" },
      body: { sku: "NONE-1", qty: 2, location: "DC1" },
    });
    if (r.status !== 409) throw new Error(`expected 409, got ${r.status}: ${JSON.stringify(r.body)}`);
    expect(r.body).toMatchObject({ code: "insufficient_stock", type: "/problems/insufficient-stock", status: 409, instance: "/v1/reservations" });
    expect(r.body.lines?.[0]).toMatchObject({ sku: "NONE-1", qty: 2, state: "rejected", available: 0 });
  });

  it("answers a batch of which nothing was accepted with a PosBatchProblem, its fields under body", async () => {
    const r = await client("secret-pos").call("postPosTransactions", { body: { transactions: [] } });
    if (r.status !== 400) throw new Error(`expected 400, got ${r.status}`);
    expect(r.body).toMatchObject({ code: "invalid_request", accepted: 0, rejected: 1, results: [] });
    expect(r.body.errors).toEqual([{ path: "body.transactions", detail: "expected at least one transaction" }]);
  });

  it("exports the ledger as text/csv or application/x-ndjson", async () => {
    const csv = await client("secret-ledger").call("exportLedger", { query: { format: "csv" } });
    expect(csv.status === 200 && csv.mediaType).toBe("text/csv");
    const ndjson = await client("secret-ledger").call("exportLedger", { query: { format: "ndjson" } });
    expect(ndjson.status === 200 && ndjson.mediaType).toBe("application/x-ndjson");
  });

  it("pages the GL journal and answers the trial balance as documented", async () => {
    await insertJournal(api.sql, {
      journalId: "openapi:gr:1",
      businessDate: "2026-01-05",
      lines: [
        { account: "1400", debit: 500, sku: "X-1", qty: 5, unit: "EA" },
        { account: "2100", credit: 500, sku: "X-1", qty: 5, unit: "EA", memo: "a, b" },
      ],
    });
    await horizonPast(api.sql);
    const first = await client("secret-ledger").call("listGlJournalLines", { query: { from: "2026-01-01", to: "2026-01-31", limit: 1 } });
    if (first.status !== 200) throw new Error(`expected 200, got ${first.status}`);
    expect(first.body.lines.map((l) => [l.account, l.debit, l.credit])).toEqual([["1400", 500, 0]]);
    const second = await client("secret-ledger").call("listGlJournalLines", { query: { cursor: first.body.nextCursor ?? "", limit: 1 } });
    expect(second.status === 200 && second.body.lines.map((l) => l.memo)).toEqual(["a, b"]);
    const tb = await client("secret-ledger").call("getGlTrialBalance", { query: { at: "2026-01-31" } });
    expect(tb.status === 200 && tb.body).toEqual({
      accounts: [
        { account: "1400", debit: 500, credit: 0, balance: 500 },
        { account: "2100", debit: 0, credit: 500, balance: -500 },
      ],
      debit: 500,
      credit: 500,
    });
  });

  it("answers a path no route serves, and a body of another media type, as problems too", async () => {
    const missing = await api.app.inject({ method: "GET", url: "/v1/nothing?x=1" });
    expect(missing.headers["content-type"]).toMatch(/^application\/problem\+json/);
    expect(missing.json()).toMatchObject({ status: 404, code: "not_found", type: "/problems/not-found", instance: "/v1/nothing" });
    const media = await api.app.inject({
      method: "POST",
      url: "/v1/reservations",
      headers: { authorization: "Bearer secret-reserver", "idempotency-key": "k", "content-type": "application/xml" },
      payload: "x",
    });
    expect(media.statusCode).toBe(415);
    expect(media.headers["content-type"]).toMatch(/^application\/problem\+json/);
    expect(media.json()).toMatchObject({ code: "unsupported_media_type", title: "The body's media type is not accepted" });
  });
});
