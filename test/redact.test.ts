import { Writable } from "node:stream";
import { describe, expect, it } from "vitest";
import { loadSettings } from "../src/platform/settings.ts";
import { banner } from "../src/app/dev.ts";
import { createLogger } from "../src/platform/log.ts";
import { maskSecrets } from "../src/platform/redact.ts";
import { runTally } from "./support/tally.ts";

describe("maskSecrets", () => {
  it.each([
    ["postgres://tally:s3cr%40t@db:5432/tally?sslmode=verify-full", "postgres://tally:***@db:5432/tally?sslmode=verify-full"],
    ["postgres://tally@db:5432/tally", "postgres://tally@db:5432/tally"],
    ["nats://tally_api:pw@nats:4222,nats://other:4222", "nats://tally_api:***@nats:4222,nats://other:4222"],
    ["nats://t0ken@127.0.0.1:4222", "nats://***@127.0.0.1:4222"],
    ["host=db user=x password=hunter2 dbname=y", "host=db user=x password=*** dbname=y"],
    ["https://hooks.example.com/x?token=abc&channel=web", "https://hooks.example.com/x?token=***&channel=web"],
    ['{"password":"abc","user":"x"}', '{"password":"***","user":"x"}'],
    ["connect ECONNREFUSED 127.0.0.1:5432", "connect ECONNREFUSED 127.0.0.1:5432"],
  ])("%s", (input, masked) => {
    expect(maskSecrets(input)).toBe(masked);
  });
});

const dev = (databaseUrl: string, natsUrl: string) =>
  banner(
    {
      settings: loadSettings({}),
      simulator: null,
      postgres: undefined,
      nats: undefined,
      databaseUrl,
      natsUrl,
      apiUrl: "http://127.0.0.1:8080",
      devToken: "tly_devtoken123",
      sourceUrls: { TALLY_SOURCE_ERP_URL: "postgres://erp:erp-pw@erp:5432/erp", TALLY_SOURCE_SHOP_URL: "postgres://shop:shop-pw@shop:5432/shop" },
    },
    ".tally",
  );

describe("secrets never reach an output", () => {
  it("the tally dev banner masks the external database's and the sources' passwords, and still shows the dev admin token", () => {
    const text = dev("postgres://tally:Sup3rSecret@db.example.com:5432/tally", "nats://tally_api:NatsPw@nats:4222");
    for (const secret of ["Sup3rSecret", "NatsPw", "erp-pw", "shop-pw"]) expect(text).not.toContain(secret);
    expect(text).toContain("postgres://tally:***@db.example.com:5432/tally");
    expect(text).toContain("tly_devtoken123");
  });

  it("log lines are masked, whatever field the URL is in", async () => {
    let out = "";
    const sink = new Writable({
      write: (chunk, _enc, done) => {
        out += chunk.toString();
        done();
      },
    });
    const log = createLogger("test", "info", sink);
    log.warn(
      { url: "https://user:HookPw@hooks.example.com/x?token=HookToken", err: new Error("cannot connect to postgres://a:DbPw@db/x") },
      "failed",
    );
    log.flush?.();
    await new Promise((r) => setImmediate(r));
    expect(out).toContain("failed");
    for (const secret of ["HookPw", "HookToken", "DbPw"]) expect(out).not.toContain(secret);
  });

  it("a CLI error about a database URL names the parameter at fault, without the password", async () => {
    const r = await runTally(["migrate"], {
      TALLY_DATABASE_URL: "postgres://tally:CliPw@127.0.0.1:1/tally?sslmode=verify-full&sslrootcert=/nonexistent/ca.crt",
    });
    expect(r.code).not.toBe(0);
    expect(r.output).toMatch(/sslrootcert/);
    expect(r.output).not.toContain("CliPw");
  });
});
