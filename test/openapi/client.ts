/**
 * A small typed client of the HTTP API, as a channel would write one on the types openapi-typescript generates
 * from the OpenAPI document (tallyApi.ts, regenerated and compared by test/openapi.test.ts). `tsc` checks it
 * and its uses against those types; every reply is also checked at run time against the document itself (its
 * status, media type and schema), so neither the document nor a route can drift without a test failing.
 */
import type { operations, paths } from "./tallyApi.ts";

type Method = "get" | "post" | "delete";

/** Every operation of the document, by operationId: its method and path (a missing or renamed one fails tsc). */
export const OPERATIONS = {
  getHealth: ["get", "/healthz"],
  getReadiness: ["get", "/readyz"],
  getMetrics: ["get", "/metrics"],
  postPosTransactions: ["post", "/v1/pos/transactions"],
  getAvailability: ["get", "/v1/availability/{sku}"],
  listAvailability: ["get", "/v1/availability"],
  getStock: ["get", "/v1/stock/{sku}"],
  streamAvailability: ["get", "/v1/availability/stream"],
  createStreamToken: ["post", "/v1/stream-tokens"],
  createReservation: ["post", "/v1/reservations"],
  getReservation: ["get", "/v1/reservations/{id}"],
  releaseReservation: ["delete", "/v1/reservations/{id}"],
  commitReservation: ["post", "/v1/reservations/{id}/commit"],
  fulfillReservation: ["post", "/v1/reservations/{id}/fulfill"],
  listLedgerEntries: ["get", "/v1/ledger/entries"],
  exportLedger: ["get", "/v1/ledger/export"],
  listDeadLetters: ["get", "/v1/dlq"],
  replayDeadLetter: ["post", "/v1/dlq/{id}/replay"],
  discardDeadLetter: ["delete", "/v1/dlq/{id}"],
  listStuckPartitions: ["get", "/v1/partitions/stuck"],
  skipStuckMessage: ["post", "/v1/partitions/{partition}/skip"],
  listSources: ["get", "/v1/sources"],
  streamDashboard: ["get", "/v1/dashboard/stream"],
  listGlJournalLines: ["get", "/v1/gl/journal"],
  getGlTrialBalance: ["get", "/v1/gl/trial-balance"],
  exportGlJournal: ["get", "/v1/gl/export"],
  getCatalogItem: ["get", "/v1/catalog/{sku}"],
  listCatalogChanges: ["get", "/v1/catalog"],
  getProduct: ["get", "/v1/products/{sku}"],
  getCatalogVersions: ["get", "/v1/catalog/versions"],
  streamCatalog: ["get", "/v1/catalog/stream"],
  ackCatalogVersion: ["post", "/v1/channels/{channel}/catalog-ack"],
} as const satisfies { [Op in keyof operations]: OperationAt<Op> };

/** The [method, path] pairs at which the document serves the operation Op. */
type OperationAt<Op extends keyof operations> = {
  [P in keyof paths]: { [M in Method]: paths[P][M] extends operations[Op] ? readonly [M, P] : never }[Method];
}[keyof paths];

export type OperationId = keyof typeof OPERATIONS;

/** What a request to Op carries: its parameters (path, query, header) and its JSON body, as the document types them. */
export type RequestOf<Op extends OperationId> = Omit<operations[Op]["parameters"], "cookie"> &
  (operations[Op] extends { requestBody: { content: { "application/json": infer B } } } ? { body: B } : { body?: undefined });

/** Every reply the document promises for Op: one member per status and media type, so `status` narrows `body`. */
export type ReplyOf<Op extends OperationId> = {
  [S in keyof operations[Op]["responses"]]: operations[Op]["responses"][S] extends { content: infer C }
    ? { [M in keyof C]: { status: S; mediaType: M; body: M extends "application/json" | `${string}+json` ? C[M] : string } }[keyof C]
    : { status: S; mediaType: null; body: undefined };
}[keyof operations[Op]["responses"]];

/** One HTTP exchange (app.inject in the tests): the raw reply. */
export type Send = (request: {
  method: string;
  url: string;
  headers: Record<string, string>;
  body?: string;
}) => Promise<{ status: number; mediaType: string; text: string }>;

/** Checks a raw reply against the document (status, media type, schema); returns what is wrong, or null. */
export type Conformance = (op: OperationId, status: number, mediaType: string, body: unknown) => string | null;

export class TallyClient {
  constructor(
    private readonly send: Send,
    private readonly token: string,
    private readonly conforms: Conformance,
  ) {}

  /** Calls an operation; throws when the reply is not one the document promises. */
  async call<Op extends OperationId>(op: Op, request: RequestOf<Op>): Promise<ReplyOf<Op>> {
    const [method, template] = OPERATIONS[op];
    const { path, query, header, body } = request as {
      path?: Record<string, string | number>;
      query?: Record<string, string | number | undefined>;
      header?: Record<string, string>;
      body?: unknown;
    };
    let url: string = template.replace(/\{(\w+)\}/g, (_, name: string) => encodeURIComponent(String(path?.[name] ?? "")));
    const qs = new URLSearchParams(Object.entries(query ?? {}).flatMap(([k, v]) => (v === undefined ? [] : [[k, String(v)]])));
    if ([...qs].length > 0) url += `?${qs}`;
    const headers: Record<string, string> = { authorization: `Bearer ${this.token}`, ...header };
    if (body !== undefined) headers["content-type"] = "application/json";
    const raw = await this.send({ method: method.toUpperCase(), url, headers, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
    const parsed: unknown = /^application\/([a-z.-]+\+)?json$/.test(raw.mediaType) ? JSON.parse(raw.text) : raw.text;
    const wrong = this.conforms(op, raw.status, raw.mediaType, parsed);
    if (wrong) throw new Error(`${op}: ${wrong}`);
    return { status: raw.status, mediaType: raw.mediaType, body: parsed } as unknown as ReplyOf<Op>;
  }
}
