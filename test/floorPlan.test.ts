// The floor plan (docs/architecture.md) is checked by dependency-cruiser in CI (`npm run check:deps`).
// This test proves the check bites: the tree passes as it is, and a copy with one upward import fails.
import { execFile } from "node:child_process";
import { cp, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, describe, expect, it } from "vitest";
import { ROOT } from "./support/tally.ts";

const run = promisify(execFile);
const DEPCRUISE = path.join(ROOT, "node_modules/.bin/depcruise");
const FOLDERS = ["src", "actors", "ledger", "cdc", "bench"];

const cruise = async (cwd: string): Promise<{ code: number; out: string }> => {
  try {
    const { stdout } = await run(DEPCRUISE, [...FOLDERS, "--config", ".dependency-cruiser.cjs"], { cwd, maxBuffer: 16 * 1024 * 1024 });
    return { code: 0, out: stdout };
  } catch (error) {
    const e = error as { code?: number; stdout?: string };
    return { code: e.code ?? -1, out: e.stdout ?? "" };
  }
};

let copy: string | undefined;
afterAll(async () => {
  if (copy) await rm(copy, { recursive: true, force: true });
});

describe("the floor plan check", () => {
  it("passes on the tree as it is", async () => {
    const { code, out } = await cruise(ROOT);
    expect(out).toContain("no dependency violations found");
    expect(code).toBe(0);
  });

  it("fails on an upward import, naming the rule and both files", async () => {
    copy = await mkdtemp(path.join(tmpdir(), "tally-floorplan-"));
    for (const f of [...FOLDERS, "tsconfig.json", ".dependency-cruiser.cjs", "package.json"])
      await cp(path.join(ROOT, f), path.join(copy, f), { recursive: true });
    // The wire (floor 3) reaching up to the HTTP API (floor 10).
    const topology = path.join(copy, "src/wire/topology.ts");
    await writeFile(topology, `import "../http/index.ts";\n${await readFile(topology, "utf8")}`);
    const { code, out } = await cruise(copy);
    expect(code).not.toBe(0);
    expect(out).toMatch(/error no-upward-from-src-wire: src\/wire\/topology\.ts → src\/http\/index\.ts/);
  });

  it("fails on an import that bypasses another folder's index.ts", async () => {
    const relay = path.join(copy!, "src/channels/relay.ts");
    await writeFile(relay, `import "../wire/publisher.ts";\n${await readFile(relay, "utf8")}`);
    const { code, out } = await cruise(copy!);
    expect(code).not.toBe(0);
    expect(out).toMatch(/error through-index: src\/channels\/relay\.ts → src\/wire\/publisher\.ts/);
  });
});
