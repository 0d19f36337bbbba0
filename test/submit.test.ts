import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { testContext, type TestContext } from "./support/context.ts";
import { harness, runTally, startInProcess, tallyEnv, type Harness } from "./support/tally.ts";

let ctx: TestContext;
let h: Harness;
let tally: Awaited<ReturnType<typeof startInProcess>>;
let dir: string;

beforeAll(async () => {
  ctx = await testContext();
  h = await harness(ctx);
  tally = await startInProcess(ctx, ["worker", "relay"]);
  dir = await mkdtemp(path.join(tmpdir(), "tally-submit-"));
});

afterAll(async () => {
  await tally?.close();
  await h?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

function command(id: string, type: string, sku: string, location: string, qty: number, extra: object = {}) {
  return {
    id,
    type,
    sku,
    location,
    qty,
    source: { system: "erp", ref: `ref-${id}` },
    occurredAt: "2026-11-26T10:00:00Z",
    ...extra,
  };
}

const ndjson = (lines: ReadonlyArray<object | string>): string => `${lines.map((l) => (typeof l === "string" ? l : JSON.stringify(l))).join("\n")}\n`;

const submit = (args: ReadonlyArray<string>, stdin?: string) => runTally(["submit", ...args], tallyEnv(ctx), stdin);

async function count(table: "ledger_entries" | "command_outcomes"): Promise<number> {
  const [row] = await h.sql.unsafe<Array<{ n: number }>>(`select count(*)::int as n from ${table}`);
  return row!.n;
}

async function streamMessages(stream: string): Promise<number> {
  return (await h.nats.jsm.streams.info(stream)).state.messages;
}

/** The dead letters of `tally submit`, oldest first. */
async function submitDeadLetters(): Promise<Array<{ subject: string; letter: Record<string, unknown> }>> {
  const state = (await h.nats.jsm.streams.info(h.topology.dlqStream)).state;
  const out: Array<{ subject: string; letter: Record<string, unknown> }> = [];
  for (let seq = state.first_seq; seq <= state.last_seq && state.messages > 0; seq++) {
    const m = await h.nats.jsm.streams.getMessage(h.topology.dlqStream, { seq });
    if (m && m.subject === h.topology.dlqSubject("submit")) out.push({ subject: m.subject, letter: m.json() });
  }
  return out;
}

// Stock for S-1 at DC1: 10 received, 4 reserved, so a hold of 20 must be refused.
const first = [
  command("s:r1", "receive", "S-1", "DC1", 10),
  command("s:h1", "reserve", "S-1", "DC1", 4, { reservationId: "s:h1" }),
  command("s:h2", "reserve", "S-1", "DC1", 20, { reservationId: "s:h2" }),
  command("s:s1", "sell", "S-1", "DC1", 1),
  command("s:r2", "receive", "S-2", "S01", 3),
];

describe("tally submit - --wait", () => {
  it("reports accepted and rejected commands, with the reasons", async () => {
    const r = await submit(["-", "--wait"], ndjson(first));
    expect(r.stdout).toBe("accepted 4  rejected 1  published 5  duplicate 0  invalid 0\n  rejected insufficient_stock: 1\n");
    expect(r.code).toBe(0);

    const outcomes = await h.sql<Array<{ command_id: string; status: string; reason: string | null }>>`
      select command_id, status, reason from command_outcomes order by command_id`;
    expect(outcomes).toEqual([
      { command_id: "s:h1", status: "applied", reason: null },
      { command_id: "s:h2", status: "rejected", reason: "insufficient_stock" },
      { command_id: "s:r1", status: "applied", reason: null },
      { command_id: "s:r2", status: "applied", reason: null },
      { command_id: "s:s1", status: "applied", reason: null },
    ]);
    const entries = await h.sql<Array<{ command_id: string }>>`select command_id from ledger_entries order by entry_id`;
    expect(entries.map((e) => e.command_id).sort()).toEqual(["s:h1", "s:r1", "s:r2", "s:s1"]);
    const balances = await h.sql<Array<{ bucket: string; qty: number }>>`
      select bucket, qty from balances where sku = 'S-1' and location = 'DC1' and qty <> 0 order by bucket`;
    expect(balances).toEqual([
      { bucket: "on_hand", qty: 9 },
      { bucket: "reserved", qty: 4 },
    ]);
  });

  it("reports a re-submitted input as all duplicate and writes nothing", async () => {
    const entries = await count("ledger_entries");
    const outcomes = await count("command_outcomes");
    const commandsBefore = await streamMessages(h.topology.commandsStream);

    const again = await submit(["-", "--wait"], ndjson(first));
    expect(again.stdout).toBe("accepted 0  rejected 0  published 0  duplicate 5  invalid 0\n");
    expect(again.code).toBe(0);

    const file = path.join(dir, "first.ndjson");
    await writeFile(file, ndjson(first));
    const fromFile = await submit([file, "--wait"]);
    expect(fromFile.stdout).toBe("accepted 0  rejected 0  published 0  duplicate 5  invalid 0\n");
    expect(fromFile.code).toBe(0);

    expect(await count("ledger_entries")).toBe(entries);
    expect(await count("command_outcomes")).toBe(outcomes);
    expect(await streamMessages(h.topology.commandsStream)).toBe(commandsBefore);
  });

  it("dead-letters a line with a fractional qty, names it, exits 4, and applies the rest", async () => {
    const bad = command("s:bad", "receive", "S-4", "DC1", 1.5);
    const lettersBefore = (await submitDeadLetters()).length;
    const r = await submit(["-", "--wait"], ndjson([command("s:r3", "receive", "S-3", "DC1", 5), bad, command("s:s3", "sell", "S-3", "DC1", 2)]));
    expect(r.output).toContain("line 2: qty: expected a positive integer, got 1.5");
    expect(r.stdout).toBe("accepted 2  rejected 0  published 2  duplicate 0  invalid 1\n");
    expect(r.code).toBe(4);

    const letters = await submitDeadLetters();
    expect(letters).toHaveLength(lettersBefore + 1);
    const { subject, letter } = letters.at(-1)!;
    expect(subject).toBe(h.topology.dlqSubject("submit"));
    expect(letter).toMatchObject({
      origin: "submit",
      reason: "qty: expected a positive integer, got 1.5",
      payload: bad,
      context: { line: 2 },
    });
    expect(Number.isNaN(Date.parse(letter.at as string))).toBe(false);

    // Nothing of it reached the ledger; its neighbours did.
    const [{ outcomes }] = await h.sql<[{ outcomes: number }]>`
      select count(*)::int as outcomes from command_outcomes where command_id = 's:bad'`;
    expect(outcomes).toBe(0);
    const [{ entries }] = await h.sql<[{ entries: number }]>`
      select count(*)::int as entries from ledger_entries where command_id = 's:bad' or sku = 'S-4'`;
    expect(entries).toBe(0);
    const [{ balances }] = await h.sql<[{ balances: number }]>`select count(*)::int as balances from balances where sku = 'S-4'`;
    expect(balances).toBe(0);
    const [s3] = await h.sql<Array<{ qty: number }>>`
      select qty from balances where sku = 'S-3' and location = 'DC1' and bucket = 'on_hand'`;
    expect(s3!.qty).toBe(3);
  });

  it("dead-letters a line that is not JSON, with its text", async () => {
    const r = await submit(["-", "--wait"], ndjson([command("s:r4", "receive", "S-3", "S01", 1), "{not json"]));
    expect(r.output).toContain("line 2: not valid JSON");
    expect(r.stdout).toBe("accepted 1  rejected 0  published 1  duplicate 0  invalid 1\n");
    expect(r.code).toBe(4);
    const letter = (await submitDeadLetters()).at(-1)!.letter;
    expect(letter).toMatchObject({ origin: "submit", reason: "not valid JSON", payload: "{not json", context: { line: 2 } });
  });
});

describe("tally submit <file>", () => {
  it("works like standard input", async () => {
    const file = path.join(dir, "third.ndjson");
    await writeFile(
      file,
      ndjson([
        command("f:r1", "receive", "S-5", "S01", 6),
        command("f:h1", "reserve", "S-5", "S01", 2, { reservationId: "f:h1" }),
        command("f:h2", "reserve", "S-5", "S01", 10, { reservationId: "f:h2" }),
        command("f:x1", "release", "S-5", "S01", 1, { reservationId: "f:h1" }),
      ]),
    );
    const r = await submit([file, "--wait"]);
    expect(r.stdout).toBe("accepted 3  rejected 1  published 4  duplicate 0  invalid 0\n  rejected insufficient_stock: 1\n");
    expect(r.code).toBe(0);
    const balances = await h.sql<Array<{ bucket: string; qty: number }>>`
      select bucket, qty from balances where sku = 'S-5' and location = 'S01' and qty <> 0 order by bucket`;
    expect(balances).toEqual([
      { bucket: "on_hand", qty: 6 },
      { bucket: "reserved", qty: 1 },
    ]);
  });

  it("fails clearly for a file that does not exist, publishing nothing", async () => {
    const missing = path.join(dir, "no-such-file.ndjson");
    const commandsBefore = await streamMessages(h.topology.commandsStream);
    const r = await submit([missing, "--wait"]);
    expect(r.code).toBe(1);
    expect(r.output).toContain(missing);
    expect(r.output).toMatch(/no such file/i);
    expect(r.output).not.toMatch(/\n\s+at /);
    expect(await streamMessages(h.topology.commandsStream)).toBe(commandsBefore);
  });
});
