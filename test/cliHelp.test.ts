// The command line: `--help` on every command prints its usage, exits 0 and does nothing else; typos
// are usage errors (exit 2) with a suggestion; `--version`; `--config`; `--format json`; the help
// text names every setting with the default src/platform/settings.ts gives it.
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import postgres from "postgres";
import { describe, expect, it } from "vitest";
import { COMPUTED_DEFAULTS, DEFAULTS, WITHOUT_DEFAULT } from "../src/platform/settings.ts";
import { testContext } from "./support/context.ts";
import { ROOT, runTally } from "./support/tally.ts";

// Nothing listens on port 1: a command that tried to reach Postgres or NATS would fail, not exit 0.
const UNREACHABLE = { TALLY_DATABASE_URL: "postgres://nobody@127.0.0.1:1/none", TALLY_NATS_URL: "nats://127.0.0.1:1" };

/** Every command and subcommand; the test below also finds them by walking the help, so a new one must be added here. */
const COMMANDS = [
  ["migrate"],
  ["start"],
  ["submit"],
  ["ledger"],
  ["ledger", "verify"],
  ["ledger", "anchor"],
  ["ledger", "export"],
  ["ledger", "archive"],
  ["dlq"],
  ["dlq", "list"],
  ["dlq", "replay"],
  ["dlq", "discard"],
  ["dlq", "skip"],
  ["source"],
  ["source", "check"],
  ["source", "enable"],
  ["source", "status"],
  ["source", "drop"],
  ["source", "resnapshot"],
  ["partitions"],
  ["partitions", "resize"],
  ["partitions", "status"],
  ["reconcile"],
  ["gl"],
  ["gl", "close"],
  ["gl", "periods"],
  ["gl", "export"],
  ["gl", "trial-balance"],
  ["token"],
  ["token", "new"],
  ["demo"],
  ["demo", "init"],
  ["dev"],
  ["bench"],
];

/** The names under "Commands:" in a help text (without `help`). */
const listed = (help: string): Array<string> => {
  const section = help.split(/\nCommands:\n/)[1]?.split(/\n\n/)[0] ?? "";
  return [...section.matchAll(/^ {2}(\S+)/gm)].map((m) => m[1]!).filter((c) => c !== "help");
};

describe("tally --help", () => {
  it("every command and subcommand prints its usage with exit 0, and the list above is complete", async () => {
    const results = await Promise.all(COMMANDS.map((c) => runTally([...c, "--help"], UNREACHABLE).then((r) => ({ c, ...r }))));
    const found = new Set<string>(listed((await runTally(["--help"], UNREACHABLE)).stdout));
    for (const { c, code, stdout, output } of results) {
      expect(code, `${c.join(" ")} --help: ${output}`).toBe(0);
      expect(stdout).toMatch(new RegExp(`^Usage: tally ${c.join(" ")} `));
      for (const sub of listed(stdout)) found.add(`${c.join(" ")} ${sub}`);
    }
    expect([...found].sort()).toEqual(COMMANDS.map((c) => c.join(" ")).sort());
  });

  it("`--help` anywhere on the line runs nothing: a fresh database stays empty", async () => {
    const ctx = await testContext();
    const env = { TALLY_DATABASE_URL: ctx.databaseUrl, TALLY_NATS_URL: ctx.natsUrl, TALLY_ENV: ctx.env };
    for (const args of [
      ["migrate", "--help"],
      ["migrate", "--runtime-role", "x", "-h"],
      ["help", "migrate"],
      ["ledger", "verify", "--help"],
      ["ledger", "verify", "--anchors", "--help"],
      ["start", "--roles", "worker", "--help"],
      ["submit", "-", "--wait", "--help"],
      ["source", "enable", "erp", "--help"],
      ["dlq", "replay", "--all", "--help"],
      ["demo", "init", "--help"],
    ]) {
      const r = await runTally(args, env);
      expect(r.code, `${args.join(" ")}: ${r.output}`).toBe(0);
      expect(r.stdout).toMatch(/^Usage: tally /);
    }
    const sql = postgres(ctx.databaseUrl, { max: 1, onnotice: () => {} });
    try {
      const tables = await sql`select table_name from information_schema.tables where table_schema = 'public'`;
      expect(tables).toHaveLength(0);
    } finally {
      await sql.end();
    }
  });

  it("names every setting with its default, and the exit codes", async () => {
    const { stdout, code } = await runTally(["--help"], UNREACHABLE);
    expect(code).toBe(0);
    const flat = stdout.replace(/\s+/g, " ");
    for (const [name, value] of Object.entries({ ...DEFAULTS, ...COMPUTED_DEFAULTS }))
      expect(flat, name).toMatch(new RegExp(`${name} \\([^)]*default ${String(value).replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\\)`));
    for (const name of WITHOUT_DEFAULT) expect(flat).toContain(name);
    expect(stdout).toMatch(/^ {2}2 {2}usage error/m);
    expect(stdout).toMatch(/^ {2}3 {2}a check ran and found a problem: ledger verify/m);
  });
});

describe("usage errors exit 2", () => {
  it("an unknown command or option, with a suggestion", async () => {
    const cases: Array<[Array<string>, string, RegExp]> = [
      [["ledgr", "verify"], "unknown command 'ledgr'", /did you mean ledger\?/i],
      [["ledger", "verfy"], "unknown command 'verfy'", /did you mean verify\?/i],
      [["ledger", "verify", "--anchor"], "unknown option '--anchor'", /did you mean --anchors\?/i],
      [["dlq", "list", "--orign", "shop"], "unknown option '--orign'", /did you mean --origin\?/i],
      [["migrate", "--print-grant"], "unknown option '--print-grant'", /did you mean --print-grants\?/i],
    ];
    const results = await Promise.all(cases.map(([args]) => runTally(args, UNREACHABLE)));
    results.forEach((r, i) => {
      const [args, message, suggestion] = cases[i]!;
      expect(r.code, `${args.join(" ")}: ${r.output}`).toBe(2);
      expect(r.output).toContain(message);
      expect(r.output).toMatch(suggestion);
    });
  });

  it("a missing argument, a bad value, a missing subcommand", async () => {
    const cases: Array<[Array<string>, string]> = [
      [["submit"], "missing required argument 'file'"],
      [["submit", "-", "--timeout", "0"], "expected seconds > 0"],
      [["ledger", "export", "--format", "xml"], "--format: expected csv or ndjson"],
      [["ledger", "archive"], "required option '--before <month>' not specified"],
      [["ledger", "archive", "--before", "2025-1"], "expected a month as YYYY-MM"],
      [["dlq", "list", "--format", "yaml"], "--format: expected table or json"],
      [["dlq", "skip", "0", "--seq", "-1"], "expected a stream sequence"],
      [["token", "new", "x"], "required option '--scopes <scopes>' not specified"],
      [["token", "new", "x", "--scopes", "root"], "root"],
      [["start", "--roles", "worker,cook"], '--roles: unknown role "cook"'],
      [["ledger"], "Usage: tally ledger"],
    ];
    const results = await Promise.all(cases.map(([args]) => runTally(args, UNREACHABLE)));
    results.forEach((r, i) => {
      const [args, message] = cases[i]!;
      expect(r.code, `${args.join(" ")}: ${r.output}`).toBe(2);
      expect(r.output).toContain(message);
    });
  });
});

describe("tally --version, --config, --format json", () => {
  it("--version prints the package version", async () => {
    const { version } = JSON.parse(await readFile(path.join(ROOT, "package.json"), "utf8")) as { version: string };
    for (const flag of ["--version", "-V", "version"]) {
      const r = await runTally([flag], UNREACHABLE);
      expect(r.code).toBe(0);
      expect(r.stdout).toBe(`tally ${version}\n`);
    }
  });

  it("--config <file> is the config file, before or after the command (as TALLY_CONFIG)", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "tally-cli-config-"));
    try {
      const file = path.join(dir, "other.config.ts");
      const erp = path.join(ROOT, "cdc/demo/mappings.ts");
      await writeFile(
        file,
        `import { erpSource } from ${JSON.stringify(erp)};\nexport default { channels: {}, sources: { elsewhere: erpSource } };\n`,
      );
      for (const args of [
        ["--config", file, "source", "enable", "elsewhere", "--print-sql"],
        ["source", "enable", "elsewhere", "--print-sql", "--config", file],
      ]) {
        const r = await runTally(args, { ...UNREACHABLE, TALLY_CONFIG: "nosuch.config.ts" });
        expect(r.code, r.output).toBe(0);
        expect(r.stdout).toContain("CREATE PUBLICATION tally_dev_elsewhere FOR TABLE");
      }
      // Without it, TALLY_CONFIG is the file (which has no such source).
      const plain = await runTally(["source", "enable", "elsewhere", "--print-sql"], UNREACHABLE);
      expect(plain.code).toBe(1);
      const missing = await runTally(["--config", path.join(dir, "nosuch.ts"), "source", "enable", "erp", "--print-sql"], UNREACHABLE);
      expect(missing.code).toBe(1);
      expect(missing.output).toContain(`${path.join(dir, "nosuch.ts")} not found`);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("prints JSON for scripts (ledger verify, dlq list, source status, source check); a failed source check exits 3", async () => {
    const ctx = await testContext();
    const env = { TALLY_DATABASE_URL: ctx.databaseUrl, TALLY_NATS_URL: ctx.natsUrl, TALLY_ENV: ctx.env, TALLY_LOG_LEVEL: "warn" };
    expect((await runTally(["migrate"], env)).code).toBe(0);
    const verify = await runTally(["ledger", "verify", "--format", "json"], env);
    expect(verify.code, verify.output).toBe(0);
    expect(JSON.parse(verify.stdout)).toEqual({ ok: true, entries: 0, skus: 0, balances: 0, problem: null });
    for (const flags of [["--format", "json"], ["--json"]]) {
      const dlq = await runTally(["dlq", "list", ...flags], env);
      expect(dlq.code, dlq.output).toBe(0);
      expect(JSON.parse(dlq.stdout)).toEqual([]);
    }
    const status = await runTally(["source", "status", "--json"], env);
    expect(status.code, status.output).toBe(0);
    expect(JSON.parse(status.stdout)).toEqual([]);

    // A source database without the ERP's tables: the check runs and fails (exit 3), in either format.
    const erp = { ...env, TALLY_SOURCE_ERP_URL: ctx.databaseUrl };
    const json = await runTally(["source", "check", "erp", "--format", "json"], erp);
    expect(json.code, json.output).toBe(3);
    const [report] = JSON.parse(json.stdout) as Array<{ source: string; checks: Array<{ ok: boolean; check: string }> }>;
    expect(report!.source).toBe("erp");
    expect(report!.checks.filter((c) => !c.ok).length).toBeGreaterThan(0);
    const table = await runTally(["source", "check", "erp"], erp);
    expect(table.code).toBe(3);
    expect(table.stdout).toContain("FAIL");
    expect(table.output).toContain("source check: failed");
  });
});
