import { availableParallelism } from "node:os";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SettingsError, loadSettings } from "../src/platform/settings.ts";
import { ConfigFileError, decodeTallyConfig, loadTallyConfig, resolveConfigPath } from "../src/platform/configFile.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { ROOT, runTally, spawnTally, tallyEnv } from "./support/tally.ts";

/** The error `fn` throws (fails the test if it returns). */
function thrown(fn: () => unknown): Error {
  try {
    fn();
  } catch (e) {
    return e as Error;
  }
  throw new Error("expected it to throw");
}

/** Waits for a spawned CLI to exit; kills it (and fails) if it is still running after `ms`. */
async function exitWithin(child: ReturnType<typeof spawnTally>, ms: number): Promise<number | null> {
  if (child.exitCode !== null) return child.exitCode;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`still running after ${ms} ms; output:\n${child.output()}`));
    }, ms);
    child.on("exit", (code) => {
      clearTimeout(timer);
      resolve(code);
    });
  });
}

const noStackTrace = /\n\s+at /;

describe("loadSettings", () => {
  it("has the documented defaults", () => {
    expect(loadSettings({})).toMatchObject({
      env: "dev",
      databaseUrl: undefined,
      natsUrl: "nats://127.0.0.1:4222",
      partitions: 16,
      duplicateWindowMs: 7_200_000,
      leaseTtlMs: 10_000,
      httpPort: 8080,
      configFile: "tally.config.ts",
    });
  });

  it("treats an empty variable as unset", () => {
    expect(loadSettings({ TALLY_ENV: "", TALLY_PARTITIONS: "" })).toMatchObject({ env: "dev", partitions: 16 });
  });

  it("decodes good values", () => {
    expect(
      loadSettings({
        TALLY_ENV: "prod_eu",
        TALLY_DATABASE_URL: "postgresql://tally@db:5432/tally",
        TALLY_NATS_URL: "tls://nats:4222",
        TALLY_PARTITIONS: "64",
        TALLY_DUPLICATE_WINDOW_SECONDS: "60",
        TALLY_LEASE_TTL_MS: "1000",
        TALLY_HTTP_PORT: "0",
        TALLY_CONFIG: "/etc/tally/config.ts",
        TALLY_APPLY_CONCURRENCY: "3",
      }),
    ).toMatchObject({
      env: "prod_eu",
      databaseUrl: "postgresql://tally@db:5432/tally",
      natsUrl: "tls://nats:4222",
      partitions: 64,
      duplicateWindowMs: 60_000,
      leaseTtlMs: 1000,
      httpPort: 0,
      configFile: "/etc/tally/config.ts",
      applyConcurrency: 3,
    });
  });

  it("lets as many partitions apply at once as there are cores, unless told otherwise", () => {
    expect(loadSettings({}).applyConcurrency).toBe(availableParallelism());
  });

  it.each([
    ["TALLY_ENV", "Prod"],
    ["TALLY_ENV", "a-b"],
    ["TALLY_ENV", "x".repeat(41)],
    ["TALLY_PARTITIONS", "0"],
    ["TALLY_PARTITIONS", "abc"],
    ["TALLY_PARTITIONS", "1.5"],
    ["TALLY_PARTITIONS", "1025"],
    ["TALLY_DATABASE_URL", "mysql://x"],
    ["TALLY_NATS_URL", "http://x"],
    ["TALLY_LEASE_TTL_MS", "5"],
    ["TALLY_DUPLICATE_WINDOW_SECONDS", "0"],
    ["TALLY_HTTP_PORT", "65536"],
    ["TALLY_APPLY_CONCURRENCY", "0"],
  ])("rejects %s=%s with a SettingsError naming it", (name, value) => {
    const error = thrown(() => loadSettings({ [name]: value }));
    expect(error).toBeInstanceOf(SettingsError);
    expect(error.name).toBe("SettingsError");
    expect(error.message).toMatch(new RegExp(`^invalid settings: ${name}: `));
  });

  it("names every bad setting at once", () => {
    const error = thrown(() => loadSettings({ TALLY_ENV: "Prod", TALLY_PARTITIONS: "0" }));
    expect(error.message).toContain("TALLY_ENV: ");
    expect(error.message).toContain("TALLY_PARTITIONS: ");
  });

  describe("in the CLI", () => {
    let ctx: TestContext;
    beforeAll(async () => {
      ctx = await testContext();
    });

    it("a bad setting exits 1 with one line naming it, no stack trace", async () => {
      const r = await runTally(["migrate"], { ...tallyEnv(ctx), TALLY_PARTITIONS: "abc" });
      expect(r.code).toBe(1);
      const lines = r.output.trim().split("\n");
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(/^tally: invalid settings: TALLY_PARTITIONS: /);
      expect(r.output).not.toMatch(noStackTrace);
    });

    it("a missing TALLY_DATABASE_URL is named", async () => {
      const env: Record<string, string> = { ...tallyEnv(ctx), TALLY_DATABASE_URL: "" };
      const r = await runTally(["migrate"], env);
      expect(r.code).toBe(1);
      expect(r.output.trim()).toMatch(/^tally: TALLY_DATABASE_URL: is not set/);
    });
  });
});

describe("decodeTallyConfig", () => {
  const message = (input: unknown): string => {
    const error = thrown(() => decodeTallyConfig(input, "my.config.ts"));
    expect(error).toBeInstanceOf(ConfigFileError);
    return error.message;
  };

  it("accepts channels and defaults the buffer to 0 and the catalog lag tolerance to 300 s", () => {
    const config = decodeTallyConfig({
      channels: { web: { locations: ["DC1", "S01"], buffer: 2, catalogLagToleranceSeconds: 60 }, "store-1": { locations: ["S01"] } },
    });
    expect(config.channels).toEqual({
      web: { locations: ["DC1", "S01"], buffer: 2, catalogLagToleranceSeconds: 60 },
      "store-1": { locations: ["S01"], buffer: 0, catalogLagToleranceSeconds: 300 },
    });
    expect(() => decodeTallyConfig({ channels: { web: { locations: ["DC1"], catalogLagToleranceSeconds: 0 } } })).toThrow(
      /channels\.web\.catalogLagToleranceSeconds/,
    );
  });

  it("rejects a location id outside the one id grammar (':' is not allowed in commands, so not here either)", () => {
    expect(message({ channels: { web: { locations: ["S:01"] } } })).toMatch(
      /^my\.config\.ts: channels\.web\.locations\.0\b.*expected a location id \(1 to 200 letters, digits, _ - \. \*\)/,
    );
  });

  it("rejects a channel with no locations, naming the path", () => {
    expect(message({ channels: { web: { locations: [] } } })).toMatch(/^my\.config\.ts: channels\.web\.locations\b/);
    expect(message({ channels: { web: {} } })).toMatch(/^my\.config\.ts: channels\.web\.locations: is missing/);
  });

  it("rejects a bad channel name, naming it", () => {
    expect(message({ channels: { "Web Shop": { locations: ["DC1"] } } })).toMatch(/channels\.Web Shop: /);
    expect(message({ channels: { web: { locations: ["DC1"] }, "a.b": { locations: ["DC1"] } } })).toMatch(/channels\.a\.b: /);
  });

  it("rejects a negative or fractional buffer, naming the path", () => {
    expect(message({ channels: { web: { locations: ["DC1"], buffer: -1 } } })).toMatch(/^my\.config\.ts: channels\.web\.buffer: /);
    expect(message({ channels: { web: { locations: ["DC1"], buffer: 1.5 } } })).toMatch(/channels\.web\.buffer: /);
  });

  it("rejects a bad location id and a misspelt field, naming each", () => {
    expect(message({ channels: { web: { locations: ["DC 1"] } } })).toMatch(/channels\.web\.locations\.0: expected a location id/);
    expect(message({ channels: { web: { locations: ["DC1"], bufer: 2 } } })).toMatch(/channels\.web\.bufer: /);
  });

  it("names every bad field at once", () => {
    const m = message({ channels: { web: { locations: [] }, pos: { locations: ["S01"], buffer: -3 } } });
    expect(m).toContain("channels.web.locations");
    expect(m).toContain("channels.pos.buffer");
  });

  it("rejects a module with no default export", () => {
    expect(message(undefined)).toMatch(/^my\.config\.ts: \(root\): /);
  });
});

describe("loadTallyConfig", () => {
  it("loads the repository's tally.config.ts", async () => {
    const config = await loadTallyConfig(path.join(ROOT, "tally.config.ts"));
    expect(config.channels.web).toEqual({ locations: ["DC1", "S01"], buffer: 2, catalogLagToleranceSeconds: 300 });
    expect(config.channels.store_s01).toEqual({ locations: ["S01"], buffer: 0, catalogLagToleranceSeconds: 300 });
    // The web and one channel per store of the demo retailer (S01 … S10).
    expect(Object.keys(config.channels).sort()).toEqual(
      ["web", ...Array.from({ length: 10 }, (_, i) => `store_s${String(i + 1).padStart(2, "0")}`)].sort(),
    );
  });

  it("names a missing file by its absolute path", async () => {
    const missing = path.join(tmpdir(), "tally-no-such-config.ts");
    await expect(loadTallyConfig(missing)).rejects.toThrow(ConfigFileError);
    await expect(loadTallyConfig(missing)).rejects.toThrow(`config file ${missing} not found`);
  });

  it("resolves a relative path against the working directory, not the package", () => {
    const dir = path.join(ROOT, "test");
    expect(resolveConfigPath("config.test.ts", dir)).toBe(path.join(dir, "config.test.ts"));
    expect(() => resolveConfigPath("tally.config.ts", dir)).toThrow(`config file ${path.join(dir, "tally.config.ts")} not found`);
    expect(() => resolveConfigPath("tally.config.ts", dir)).toThrow("working directory");
  });

  it("names a file that exists but cannot be loaded", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "tally-config-"));
    const broken = path.join(dir, "broken.config.ts");
    await writeFile(broken, 'import { nothing } from "./absent.ts";\nexport default nothing;\n');
    try {
      await expect(loadTallyConfig(broken)).rejects.toThrow(`${broken}: cannot be loaded`);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("`tally start` with a bad config file", () => {
  let ctx: TestContext;
  let dir: string;
  beforeAll(async () => {
    ctx = await testContext();
    dir = await mkdtemp(path.join(tmpdir(), "tally-config-"));
    await writeFile(path.join(dir, "package.json"), '{ "type": "module" }\n');
  });
  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it.each([
    ["empty-locations", "{ channels: { web: { locations: [] } } }", "channels.web.locations"],
    ["negative-buffer", '{ channels: { web: { locations: ["DC1"], buffer: -1 } } }', "channels.web.buffer"],
    ["bad-name", '{ channels: { "Web Shop": { locations: ["DC1"] } } }', "channels.Web Shop"],
  ])("%s: exits non-zero naming the field", async (name, body, field) => {
    // The temp folder is made an ES module package (as the repository is): outside one, the tsx
    // loader cannot import an `export default` .ts file at all (ERR_REQUIRE_CYCLE_MODULE).
    const file = path.join(dir, `${name}.config.ts`);
    await writeFile(file, `export default ${body};\n`);
    const child = spawnTally(["start"], { ...tallyEnv(ctx), TALLY_CONFIG: file });
    child.stdin!.end();
    const code = await exitWithin(child, 30_000);
    expect(code).toBe(1);
    const out = child.output();
    expect(out).toContain(`tally: ${file}: ${field}`);
    expect(out).not.toMatch(noStackTrace);
  });
});
