import { spawn, spawnSync } from "node:child_process";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { instanceId } from "../ledger/index.ts";
import type { Command } from "../src/contract/command.ts";
import { encodeToken } from "../src/wire/topology.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { ROOT, commandMaker, eventually, harness, publishAndSettle, startInProcess, type Harness } from "./support/tally.ts";

// The integrators' example (docs/integrators.md) in Python with nats-py: skipped only where nats-py is not installed.
const hasNatsPy = spawnSync("python3", ["-c", "import nats"]).status === 0;

let ctx: TestContext;
let h: Harness;
let tally: Awaited<ReturnType<typeof startInProcess>>;

beforeAll(async () => {
  if (!hasNatsPy) return;
  ctx = await testContext();
  h = await harness(ctx);
  tally = await startInProcess(ctx, ["worker", "relay"]);
}, 60_000);
afterAll(async () => {
  await tally?.close();
  await h?.close();
});

const cmd = commandMaker("py");
const applyAll = (commands: ReadonlyArray<Command>) => publishAndSettle(h, commands);

describe.skipIf(!hasNatsPy)("examples/python/availability.py (nats-py)", () => {
  it("reads a SKU's availability from the KV bucket (encoded key) and prints the low_stock event raised while it watches", async () => {
    const sku = "PY.1"; // a dot: the key is web.PY=2E1
    await applyAll([cmd("set_policy", sku, { safetyStock: 0, reorderPoint: 5 }), cmd("receive", sku, { qty: 20 })]);
    const kv = (await h.nats.availability.get(`web.PY=2E1`))!.json<Record<string, unknown>>();

    const child = spawn(
      "python3",
      [
        path.join(ROOT, "examples/python/availability.py"),
        ...["--url", ctx.natsUrl, "--env", ctx.env, "--channel", "web", "--sku", sku, "--event", "low_stock", "--max-events", "1", "--seconds", "30"],
      ],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    let out = "";
    let err = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on("exit", resolve));
    const lines = () => out.split("\n").filter((l) => l.trim() !== "");

    await eventually(`the example to watch (stderr: ${err})`, async () => lines().some((l) => "watching" in JSON.parse(l)), 30_000);
    await applyAll([cmd("sell", sku, { qty: 16 })]); // 20 → 4: at or below the reorder point
    expect(await exited, err).toBe(0);

    const [first, watching, event] = lines().map((l) => JSON.parse(l));
    expect(first.availability).toMatchObject({ ...kv, revision: expect.any(Number) });
    expect(first.availability).toMatchObject({ channel: "web", sku, available: 18, onHand: 20, reserved: 0 });
    expect(watching).toEqual({ watching: `tally.${ctx.env}.events.low_stock` });
    expect(event.subject).toBe(`tally.${ctx.env}.events.low_stock`);
    expect(event.event).toMatchObject({
      type: "low_stock",
      sku,
      location: "S01",
      available: 4,
      replenishmentRequested: { reorderPoint: 5, shortfall: 1 },
    });
    expect(event.msgId).toMatch(new RegExp(`^${await instanceId(h.sql)}:\\d+$`));
  });

  it("encodes names into keys and subjects exactly as Tally does (encodeToken)", () => {
    const names = ["SKU-0001", "AUD.IT.1", "AUD*IT*2", "Bröd 1kg", "=", "", "a>b c/d:e", "日本", "😀"];
    const script = `import json, sys; sys.path.insert(0, sys.argv[1]); from availability import encode_token; print(json.dumps([encode_token(n) for n in json.loads(sys.argv[2])]))`;
    const r = spawnSync("python3", ["-c", script, path.join(ROOT, "examples/python"), JSON.stringify(names)], {
      encoding: "utf8",
      env: { ...process.env, PYTHONDONTWRITEBYTECODE: "1" },
    });
    expect(r.status, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual(names.map(encodeToken));
  });
});
