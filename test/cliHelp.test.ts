// `--help` on any command prints its usage, exits 0 and does nothing else; `--version` prints the version.
import { readFile } from "node:fs/promises";
import path from "node:path";
import postgres from "postgres";
import { describe, expect, it } from "vitest";
import { testContext } from "./support/context.ts";
import { ROOT, runTally } from "./support/tally.ts";

// Nothing listens on port 1: a command that tried to reach Postgres or NATS would fail, not exit 0.
const UNREACHABLE = { TALLY_DATABASE_URL: "postgres://nobody@127.0.0.1:1/none", TALLY_NATS_URL: "nats://127.0.0.1:1" };

describe("tally --help and --version", () => {
  it("prints each command's usage with exit 0 and touches nothing", async () => {
    const commands = [
      ["migrate"],
      ["start"],
      ["submit"],
      ["ledger", "verify"],
      ["ledger", "export"],
      ["ledger", "anchor"],
      ["token", "new"],
      ["dlq", "list"],
      ["dlq", "replay"],
      ["source"],
      ["demo", "init"],
      ["dev"],
      ["bench"],
    ];
    const results = await Promise.all(commands.map((c) => runTally([...c, "--help"], UNREACHABLE).then((r) => ({ c, ...r }))));
    for (const { c, code, stdout, output } of results) {
      expect(code, `${c.join(" ")} --help: ${output}`).toBe(0);
      expect(stdout).toMatch(/^usage:\n/);
      expect(stdout).toContain(`  tally ${c.join(" ")}`);
    }
  });

  it("`migrate --help` and `ledger verify --help` leave a database as they found it", async () => {
    const ctx = await testContext();
    const env = { TALLY_DATABASE_URL: ctx.databaseUrl, TALLY_NATS_URL: ctx.natsUrl, TALLY_ENV: ctx.env };
    for (const args of [
      ["migrate", "--help"],
      ["migrate", "--runtime-role", "x", "-h"],
      ["ledger", "verify", "--help"],
    ]) {
      const r = await runTally(args, env);
      expect(r.code, r.output).toBe(0);
    }
    const sql = postgres(ctx.databaseUrl, { max: 1, onnotice: () => {} });
    try {
      const tables = await sql`select table_name from information_schema.tables where table_schema = 'public'`;
      expect(tables).toHaveLength(0);
    } finally {
      await sql.end();
    }
  });

  it("an unknown command is a usage error that lists the commands", async () => {
    const r = await runTally(["nosuch", "--help"], UNREACHABLE);
    expect(r.code).toBe(1);
    expect(r.output).toContain('unknown command "nosuch"');
  });

  it("--version prints the package version", async () => {
    const { version } = JSON.parse(await readFile(path.join(ROOT, "package.json"), "utf8")) as { version: string };
    for (const flag of ["--version", "-V", "version"]) {
      const r = await runTally([flag], UNREACHABLE);
      expect(r.code).toBe(0);
      expect(r.stdout).toBe(`tally ${version}\n`);
    }
  });
});
