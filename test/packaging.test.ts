// The published package works where users put it: `npm pack`, then `npm install -g` into a temp prefix,
// and `tally` run from another folder with its own tally.config.ts importing `tally/config`.
// Dependencies come from the npm cache (--prefer-offline); the two installs take about 30 s.
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import module from "node:module";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROOT } from "./support/tally.ts";

/** The environment without npm's own variables (`npm test` sets npm_config_prefix and friends). */
const ENV = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.toLowerCase().startsWith("npm_")));

interface Run {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

function run(file: string, args: ReadonlyArray<string>, cwd: string, env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve) => {
    execFile(file, [...args], { cwd, env: { ...ENV, ...env }, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === "number" ? error.code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

const CONFIG = `import { defineConfig, type TableMapping } from "tally/config";

const orders: TableMapping = () => [];

export default defineConfig({
  channels: { web: { locations: ["DC1"] } },
  sources: { shop: { tables: { "public.orders": { map: orders } } } },
});
`;

/** Without module.registerHooks (Node < 22.15) a global tally cannot lend its own entry point to a config elsewhere. */
const canLendEntryPoint = typeof module.registerHooks === "function";

describe("the packed tarball, installed globally and as a dependency", () => {
  let dir: string;
  let tarball: string;
  let tally: string;
  let installed: string;
  let dependent: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "tally-pack-"));
    const packed = await run("npm", ["pack", "--ignore-scripts", "--silent", "--pack-destination", dir], ROOT);
    expect(packed.code, packed.stderr).toBe(0);
    tarball = path.join(dir, packed.stdout.trim().split("\n").at(-1)!);
    // Globally into a temp prefix, and as a dependency of a project (npm hoists tally's dependencies
    // into the project's node_modules, where the postinstall script must patch them): both at once.
    dependent = path.join(dir, "dependent");
    await mkdir(dependent);
    await writeFile(path.join(dependent, "package.json"), '{ "name": "shop", "version": "1.0.0", "private": true }\n');
    const flags = ["--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error"];
    const started = Date.now();
    const installs = await Promise.all([
      run("npm", ["install", "-g", "--prefix", path.join(dir, "global"), ...flags, tarball], dir),
      run("npm", ["install", "--omit=optional", ...flags, tarball], dependent),
    ]);
    for (const install of installs) expect(install.code, install.stderr).toBe(0);
    console.log(`npm install -g and npm install of the tarball, at once: ${((Date.now() - started) / 1000).toFixed(1)} s`);
    tally = path.join(dir, "global/bin/tally");
    installed = path.join(dir, "global/lib/node_modules/tally");
  }, 300_000);
  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it.concurrent("holds what the runtime needs and no tests", async () => {
    const list = await run("tar", ["tzf", tarball], dir);
    const files = list.stdout.trim().split("\n");
    for (const f of [
      "bin/tally.js",
      "src/config.ts",
      "src/app/cli/index.js",
      "ledger/index.ts",
      "actors/index.ts",
      "cdc/index.ts",
      "LICENSE",
      "package.json",
    ])
      expect(files).toContain(`package/${f}`);
    expect(files.filter((f) => f.startsWith("package/migrations/") && f.endsWith(".sql")).length).toBeGreaterThan(0);
    expect(files.filter((f) => f.startsWith("package/patches/") && f.endsWith(".patch"))).toHaveLength(2);
    expect(files.filter((f) => f.includes(".test.") || f.startsWith("package/test/"))).toEqual([]);
  });

  it.concurrent("tally --version prints the package's version", async () => {
    const { version } = JSON.parse(await readFile(path.join(ROOT, "package.json"), "utf8")) as { version: string };
    const r = await run(tally, ["--version"], dir);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe(`tally ${version}\n`);
  });

  it.runIf(canLendEntryPoint).concurrent("reads tally.config.ts from the working directory (a folder that is no package)", async () => {
    const proj = path.join(dir, "plain");
    await mkdir(proj);
    await writeFile(path.join(proj, "tally.config.ts"), CONFIG);
    const r = await run(tally, ["source", "enable", "shop", "--print-sql"], proj);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain("CREATE PUBLICATION tally_dev_shop FOR TABLE public.orders;");
  });

  it.runIf(canLendEntryPoint).concurrent("reads TALLY_CONFIG relative to the working directory (an ES module package)", async () => {
    const proj = path.join(dir, "esm");
    await mkdir(path.join(proj, "conf"), { recursive: true });
    await writeFile(path.join(proj, "package.json"), '{ "type": "module" }\n');
    await writeFile(path.join(proj, "conf/retail.config.ts"), CONFIG.replace('"public.orders"', '"sales.order_lines"'));
    const r = await run(tally, ["source", "enable", "shop", "--print-sql"], proj, { TALLY_CONFIG: "conf/retail.config.ts", TALLY_ENV: "prod" });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain("CREATE PUBLICATION tally_prod_shop FOR TABLE sales.order_lines;");
  });

  it.concurrent("names a missing config file by its absolute path", async () => {
    const proj = path.join(dir, "missing");
    await mkdir(proj);
    const r = await run(tally, ["source", "status"], proj, { TALLY_CONFIG: "nope.config.ts" });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`tally: config file ${path.join(proj, "nope.config.ts")} not found`);
  });

  it.concurrent("as a dependency: patched where npm put the drivers, and the project's node_modules/tally resolves tally/config", async () => {
    expect(existsSync(path.join(dependent, "node_modules/postgres/package.json")), "postgres hoisted into the project").toBe(true);
    await writeFile(path.join(dependent, "tally.config.ts"), CONFIG);
    const r = await run(path.join(dependent, "node_modules/.bin/tally"), ["source", "enable", "shop", "--print-sql"], dependent);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain("FOR TABLE public.orders;");
  });

  // Last, after the concurrent ones: it undoes a patch in the installed copy.
  it("refuses to run when a driver patch is not applied (an install with --ignore-scripts), naming the fix", async () => {
    const undo = await run("patch", ["-R", "-p1", "-s", "-d", installed, "-i", path.join(installed, "patches/postgres+3.4.9.patch")], dir);
    expect(undo.code, undo.stderr).toBe(0);
    const r = await run(tally, ["source", "status"], dir);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("the driver patches are not in effect, so Tally will not run");
    expect(r.stderr).toContain(path.join(installed, "node_modules/postgres/src/connection.js"));
    expect(r.stderr).toContain(`npm run postinstall\` in ${installed}`);
  });
});
