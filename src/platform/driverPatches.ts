import { existsSync, readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

/**
 * Tally runs two of its drivers (postgres, @nats-io/nats-core) with fixes from patches/*.patch, applied
 * by patch-package in the package's postinstall script (patches/apply.mjs). An install that skips scripts (`--ignore-scripts`,
 * pnpm's default) leaves them out without a word, so Tally checks at start-up that every line a patch
 * adds is in the file it patches, and refuses to run otherwise.
 */
export class DriverPatchError extends Error {
  override readonly name = "DriverPatchError";
}

/** One file a patch changes: its path under node_modules/ and the lines the patch adds to it. */
interface PatchedFile {
  readonly patch: string;
  readonly file: string;
  readonly added: ReadonlyArray<string>;
}

/** The files of one unified diff (as patch-package writes it) and the non-blank lines each gains. */
export function parsePatch(name: string, text: string): Array<PatchedFile> {
  const files: Array<PatchedFile> = [];
  let current: { file: string; added: Array<string> } | null = null;
  for (const line of text.split("\n")) {
    const target = /^\+\+\+ b\/node_modules\/(.+)$/.exec(line);
    if (target) {
      current = { file: target[1]!, added: [] };
      files.push({ patch: name, file: current.file, added: current.added });
    } else if (current && line.startsWith("+") && line.slice(1).trim() !== "") {
      current.added.push(line.slice(1).trim());
    }
  }
  return files;
}

/** Where Node finds `node_modules/<file>` from `root`: the nearest node_modules folder, walking up. */
function locate(root: string, file: string): string | null {
  for (let dir = path.resolve(root); ; dir = path.dirname(dir)) {
    const candidate = path.join(dir, "node_modules", file);
    if (existsSync(candidate)) return candidate;
    if (path.dirname(dir) === dir) return null;
  }
}

/**
 * What is wrong with the patched drivers seen from the package at `root` (empty when every patch in
 * `patchesDir` is in effect): one line per file that is missing or lacks a line its patch adds.
 */
export function driverPatchProblems(root: string, patchesDir = path.join(root, "patches")): Array<string> {
  const problems: Array<string> = [];
  const patches = existsSync(patchesDir) ? readdirSync(patchesDir).filter((f) => f.endsWith(".patch")) : [];
  for (const name of patches.sort()) {
    for (const { file, added } of parsePatch(name, readFileSync(path.join(patchesDir, name), "utf8"))) {
      const found = locate(root, file);
      if (found === null) {
        problems.push(`node_modules/${file} (patched by patches/${name}) is not installed`);
        continue;
      }
      const source = readFileSync(found, "utf8");
      const missing = added.find((line) => !source.includes(line));
      if (missing !== undefined) problems.push(`${found} lacks the change of patches/${name} (no line ${JSON.stringify(missing)})`);
    }
  }
  return problems;
}

/** The root of the running Tally package (where package.json and patches/ are). */
const PACKAGE_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

/** Throws a DriverPatchError naming each unpatched file and the fix, unless every driver patch is in effect. */
export function assertDriverPatches(root = PACKAGE_ROOT): void {
  const problems = driverPatchProblems(root);
  if (problems.length === 0) return;
  throw new DriverPatchError(
    `the driver patches are not in effect, so Tally will not run:\n  ${problems.join("\n  ")}\n` +
      `fix: run \`npm run postinstall\` in ${root} (it applies them with patch-package; an install with ` +
      "--ignore-scripts, pnpm's default, skips it: install without it, or allow tally's scripts)",
  );
}
