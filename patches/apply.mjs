#!/usr/bin/env node
// The postinstall script: applies patches/*.patch with patch-package where the patched packages are
// installed. That is this package's own node_modules in a clone, a global install or an image, but the
// project's node_modules when tally is a dependency whose packages npm hoisted there (patch-package
// alone only looks in the folder it runs in). Tally checks at start-up that the patches are in effect.
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

/** The nearest folder, from this package up, whose node_modules holds the patched postgres. */
function appRoot() {
  for (let dir = root; ; dir = path.dirname(dir)) {
    if (existsSync(path.join(dir, "node_modules", "postgres", "package.json"))) return dir;
    if (path.dirname(dir) === dir) return root;
  }
}

const cwd = appRoot();
const require = createRequire(import.meta.url);
const patchPackage = require.resolve("patch-package/index.js");
const args = [patchPackage, "--patch-dir", path.relative(cwd, path.join(root, "patches")) || "patches"];
const result = spawnSync(process.execPath, args, { cwd, stdio: "inherit" });
process.exit(result.status ?? 1);
