// Tally refuses to run when a driver patch (patches/*.patch) is not in effect, e.g. after an install with
// --ignore-scripts. The check is run against a temp package root holding copies of the patched files.
import { execFileSync } from "node:child_process";
import { cpSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { DriverPatchError, assertDriverPatches, driverPatchProblems, parsePatch } from "../src/platform/driverPatches.ts";
import { ROOT, runTally } from "./support/tally.ts";

const PATCHES = path.join(ROOT, "patches");
const PATCH_FILES = readdirSync(PATCHES).filter((f) => f.endsWith(".patch"));
const patched = PATCH_FILES.flatMap((name) => parsePatch(name, readFileSync(path.join(PATCHES, name), "utf8")));

describe("driver patch check", () => {
  let root: string;
  beforeEach(() => {
    // A package root with the patches and a copy of each file they patch, taken from the (patched) install.
    root = mkdtempSync(path.join(tmpdir(), "tally-patches-"));
    cpSync(PATCHES, path.join(root, "patches"), { recursive: true });
    for (const { file } of patched) {
      mkdirSync(path.dirname(path.join(root, "node_modules", file)), { recursive: true });
      cpSync(path.join(ROOT, "node_modules", file), path.join(root, "node_modules", file));
    }
  });
  afterEach(() => rmSync(root, { recursive: true, force: true }));

  it("reads every file each patch changes", () => {
    expect(patched.map((p) => p.file).sort()).toEqual(
      ["@nats-io/nats-core/lib/request.js", "postgres/cjs/src/connection.js", "postgres/src/connection.js"].sort(),
    );
    for (const p of patched) expect(p.added.length, p.file).toBeGreaterThan(0);
  });

  it("passes on this repository's install and on a copy of the patched files", () => {
    expect(driverPatchProblems(ROOT)).toEqual([]);
    expect(driverPatchProblems(root)).toEqual([]);
    expect(() => assertDriverPatches(root)).not.toThrow();
  });

  it.each(PATCH_FILES)("refuses when %s is not applied, naming each file and the fix", (name) => {
    // Undo the patch the way it was applied (patch-package diffs are relative to the package root).
    execFileSync("patch", ["-R", "-p1", "-s", "-d", root, "-i", path.join(PATCHES, name)]);
    const undone = patched.filter((p) => p.patch === name);
    const problems = driverPatchProblems(root);
    expect(problems).toHaveLength(undone.length);
    for (const { file } of undone)
      expect(problems.join("\n")).toContain(`${path.join(root, "node_modules", file)} lacks the change of patches/${name}`);
    const error = (() => {
      try {
        assertDriverPatches(root);
      } catch (e) {
        return e as Error;
      }
      throw new Error("assertDriverPatches did not throw");
    })();
    expect(error).toBeInstanceOf(DriverPatchError);
    expect(error.message).toContain(`npm run postinstall\` in ${root}`);
    expect(error.message).toContain("--ignore-scripts");
  });

  it("names a patched package that is not installed at all", () => {
    rmSync(path.join(root, "node_modules", "postgres"), { recursive: true });
    expect(driverPatchProblems(root)).toEqual([
      "node_modules/postgres/cjs/src/connection.js (patched by patches/postgres+3.4.9.patch) is not installed",
      "node_modules/postgres/src/connection.js (patched by patches/postgres+3.4.9.patch) is not installed",
    ]);
  });

  it("finds a driver hoisted to a node_modules folder above the package (tally installed as a dependency)", () => {
    const pkg = path.join(root, "node_modules", "tally");
    cpSync(PATCHES, path.join(pkg, "patches"), { recursive: true });
    expect(driverPatchProblems(pkg)).toEqual([]);
    writeFileSync(path.join(root, "node_modules", "postgres/src/connection.js"), "// unpatched\n");
    expect(driverPatchProblems(pkg)).toEqual([expect.stringContaining(`${path.join(root, "node_modules", "postgres/src/connection.js")} lacks`)]);
  });

  it("the CLI checks at start-up (this repository's install is patched, so a command runs)", async () => {
    const r = await runTally(["source", "status"], { TALLY_CONFIG: path.join(ROOT, "tally.config.ts") });
    expect(r.output).not.toContain("DriverPatchError");
    expect(r.code, r.output).toBe(0);
  });
});
