import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { COMPUTED_DEFAULTS, DEFAULTS, WITHOUT_DEFAULT, loadSettings } from "../src/platform/settings.ts";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

/** README.md's settings table (`| setting | default | meaning |`): each variable named in a row, with the row's default. */
function readmeTable(): Map<string, string> {
  const lines = readFileSync(path.join(ROOT, "README.md"), "utf8").split("\n");
  const start = lines.findIndex((l) => /^\|\s*setting\s*\|\s*default\s*\|/.test(l));
  if (start < 0) throw new Error("README.md has no settings table (| setting | default | meaning |)");
  const rows = new Map<string, string>();
  for (const line of lines.slice(start + 2)) {
    if (!line.startsWith("|")) break;
    const [names, defaultText] = line
      .split("|")
      .slice(1, 3)
      .map((c) => c.trim());
    const value = defaultText!.replace(/^`|`$/g, "");
    for (const name of names!.match(/TALLY_[A-Z0-9_]+/g) ?? []) {
      expect(rows.has(name), `${name} appears twice in README.md's settings table`).toBe(false);
      rows.set(name, value);
    }
  }
  return rows;
}

/** Every environment variable settings.ts reads (each is named once, as a string literal, in its Config). */
function variablesRead(): Set<string> {
  const source = readFileSync(path.join(ROOT, "src/platform/settings.ts"), "utf8");
  const config = source.slice(source.indexOf("const envName"), source.indexOf("/** Decodes the settings"));
  return new Set([...config.matchAll(/"(TALLY_[A-Z0-9_]+)"/g)].map((m) => m[1]!));
}

describe("README.md's settings table is the settings module's", () => {
  const table = readmeTable();
  const expected = new Map<string, string>([
    ...Object.entries(DEFAULTS).map(([k, v]) => [k, String(v)] as const),
    ...Object.entries(COMPUTED_DEFAULTS),
    ...WITHOUT_DEFAULT.map((k) => [k, "—"] as const),
  ]);

  it("lists every setting the module reads, and no other", () => {
    expect([...expected.keys()].sort()).toEqual([...variablesRead()].sort());
    expect([...table.keys()].sort()).toEqual([...expected.keys()].sort());
  });

  it("gives each setting the module's default", () => {
    for (const [name, value] of expected) expect(table.get(name), name).toBe(value);
  });

  it("the module's defaults are what loading no settings gives", () => {
    const s = loadSettings({});
    expect(s).toMatchObject({
      env: DEFAULTS.TALLY_ENV,
      natsUrl: DEFAULTS.TALLY_NATS_URL,
      partitions: DEFAULTS.TALLY_PARTITIONS,
      duplicateWindowMs: DEFAULTS.TALLY_DUPLICATE_WINDOW_SECONDS * 1000,
      leaseTtlMs: DEFAULTS.TALLY_LEASE_TTL_MS,
      httpPort: DEFAULTS.TALLY_HTTP_PORT,
      configFile: DEFAULTS.TALLY_CONFIG,
      maxActors: DEFAULTS.TALLY_MAX_ACTORS,
      batchMax: DEFAULTS.TALLY_BATCH_MAX,
      httpHost: DEFAULTS.TALLY_HTTP_HOST,
      apiRateLimit: DEFAULTS.TALLY_API_RATE_LIMIT,
      shutdownTimeoutMs: DEFAULTS.TALLY_SHUTDOWN_TIMEOUT_MS,
      requestTimeoutMs: DEFAULTS.TALLY_REQUEST_TIMEOUT_MS,
      workerProcess: DEFAULTS.TALLY_WORKER_PROCESS,
      anchorIntervalMs: DEFAULTS.TALLY_ANCHOR_INTERVAL_MS,
      metricsPort: DEFAULTS.TALLY_METRICS_PORT,
      metricsHost: DEFAULTS.TALLY_METRICS_HOST,
    });
    expect(s.databaseUrl).toBeUndefined();
  });
});
