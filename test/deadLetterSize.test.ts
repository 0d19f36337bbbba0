import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { withStoredPayload } from "../src/wire/deadLetters.ts";
import { getDeadLetter, listDeadLetters } from "../src/operations/deadLetterReplay.ts";
import { submit } from "../src/ingest/submit.ts";
import { testContext } from "./support/context.ts";
import { startApi, type ApiFixture } from "./apiSupport.ts";

let api: ApiFixture;

beforeAll(async () => {
  api = await startApi(await testContext(), {}, []);
});
afterAll(async () => {
  await api?.close();
});

describe("a dead letter too large for NATS", () => {
  it("keeps its payload in Postgres and says so (an invalid POS body of nearly 1 MiB)", async () => {
    const maxPayload = api.h.nats.nc.info!.max_payload;
    // Within the POS route's 1 MiB body limit, yet its dead letter (payload, reason, headers) is not within NATS's.
    const body = JSON.stringify({ transactions: "x".repeat(Math.min(maxPayload, 1024 * 1024) - 4_000) });
    const r = await api.call({
      method: "POST",
      url: "/v1/pos/transactions",
      as: "pos",
      headers: { "content-type": "application/json" },
      payload: body,
    });
    expect(r.statusCode).toBe(400);

    const list = await api.call({ method: "GET", url: "/v1/dlq?origin=pos", as: "admin" });
    expect(list.statusCode).toBe(200);
    const letter = list.json().letters.find((l: { payloadStored?: unknown }) => l.payloadStored !== undefined);
    expect(letter).toMatchObject({
      origin: "pos",
      payload: null,
      payloadStored: { in: "postgres", table: "dead_letter_payloads", bytes: body.length, json: true },
    });
    expect(letter.reason).toMatch(
      /^transactions: expected an array of transactions \(payload of \d+ bytes too large for NATS: kept in Postgres, dead_letter_payloads key dlq:pos:[0-9a-f]+\)$/,
    );
    // What a replay reads: the payload as it was posted.
    const stored = await getDeadLetter(api.h.nats, api.h.topology, letter.id);
    expect(JSON.stringify((await withStoredPayload(api.sql, stored!)).payload)).toBe(body);
  });

  it("keeps its payload in Postgres too for `tally submit` (an invalid line larger than NATS allows)", async () => {
    const maxPayload = api.h.nats.nc.info!.max_payload;
    const line = `{"not a command": "${"y".repeat(maxPayload)}"`;
    const report = await submit(
      (async function* () {
        yield line;
      })(),
      { js: api.h.nats.js, nc: api.h.nats.nc, sql: api.sql, topology: api.h.topology },
    );
    expect(report).toMatchObject({ lines: 1, invalid: 1, published: 0 });
    const letter = (await listDeadLetters(api.h.nats, api.h.topology, "submit")).find((l) => l.payloadStored !== undefined);
    expect(letter).toMatchObject({
      origin: "submit",
      payload: null,
      context: { line: 1 },
      payloadStored: { in: "postgres", table: "dead_letter_payloads", bytes: line.length, json: false },
    });
    expect(letter!.reason).toMatch(
      /^not valid JSON \(payload of \d+ bytes too large for NATS: kept in Postgres, dead_letter_payloads key dlq:submit:[0-9a-f]{32}\)$/,
    );
    expect((await withStoredPayload(api.sql, letter!)).payload).toBe(line);
  });
});
