import { execFileSync } from "node:child_process";
import { chmodSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { nkeys, type NatsConnection } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadSettings } from "../src/platform/settings.ts";
import { connectPostgres } from "../src/platform/db.ts";
import { startPostgres, type PostgresServer } from "../src/app/devStack/index.ts";
import { connectNats } from "../src/wire/nats.ts";
import { startNats } from "./support/nats.ts";
import { startSecuredNats } from "./support/securedNats.ts";
import { runTally } from "./support/tally.ts";
import { makeCa, makeServerCert, type TestCa } from "./support/tlsCerts.ts";

let dir: string;
let ca: TestCa;
let otherCa: TestCa;
let server: TestCa;

/** The account Postgres runs as when the tests run as root (it must own its key file). */
function postgresOwner(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  for (const user of ["postgres", "nobody"]) {
    try {
      const id = (flag: string) => Number(execFileSync("id", [flag, user], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim());
      return { uid: id("-u"), gid: id("-g") };
    } catch {
      // No such user.
    }
  }
  return undefined;
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "tally-tls-"));
  chmodSync(dir, 0o755); // Postgres (another user when we are root) reads its certificate here.
  ca = makeCa(dir, "tally-test-ca");
  otherCa = makeCa(dir, "other-ca");
  server = makeServerCert(dir, ca, "server", postgresOwner());
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("Postgres over TLS (sslmode and sslrootcert in the database URL)", () => {
  let pg: PostgresServer;
  beforeAll(async () => {
    pg = await startPostgres({ settings: { ssl: "on", ssl_cert_file: server.certFile, ssl_key_file: server.keyFile } });
  }, 120_000);
  afterAll(async () => {
    await pg?.destroy();
  });

  it("connects with sslmode=verify-full and the CA that signed the server's certificate, encrypted", async () => {
    const sql = connectPostgres(`${pg.url()}?sslmode=verify-full&sslrootcert=${encodeURIComponent(ca.certFile)}`, { max: 1 });
    try {
      const [row] = await sql<Array<{ ssl: boolean }>>`select ssl from pg_stat_ssl where pid = pg_backend_pid()`;
      expect(row!.ssl).toBe(true);
    } finally {
      await sql.end({ timeout: 5 });
    }
  });

  it("refuses a server whose certificate another CA signed", async () => {
    const wrongCa = connectPostgres(`${pg.url()}?sslmode=verify-full&sslrootcert=${encodeURIComponent(otherCa.certFile)}`, { max: 1 });
    await expect(wrongCa`select 1`).rejects.toThrow(/certificate/i);
    await wrongCa.end({ timeout: 5 });
  });

  it("`tally migrate` runs over verify-full (the URL's TLS parameters are not sent to the server as settings)", async () => {
    const admin = connectPostgres(pg.url(), { max: 1 });
    await admin.unsafe("create database tls_ledger");
    await admin.end({ timeout: 5 });
    const url = `${pg.url("tls_ledger")}?sslmode=verify-full&sslrootcert=${encodeURIComponent(ca.certFile)}`;
    const ok = await runTally(["migrate"], { TALLY_ENV: "tls", TALLY_DATABASE_URL: url });
    expect(ok.output).not.toMatch(/error/i);
    expect(ok.code).toBe(0);
    const wrong = await runTally(["migrate"], {
      TALLY_ENV: "tls",
      TALLY_DATABASE_URL: url.replace(encodeURIComponent(ca.certFile), encodeURIComponent(otherCa.certFile)),
    });
    expect(wrong.code).not.toBe(0);
  }, 60_000);
});

describe("NATS over TLS (TALLY_NATS_CA_FILE)", () => {
  it("connects as its user when the server's certificate chains to the CA, and refuses it otherwise", async () => {
    const nats = await startSecuredNats("tls", {
      extra: `tls {\n  cert_file: "${server.certFile}"\n  key_file: "${server.keyFile}"\n}`,
      probeTls: { ca: await import("node:fs/promises").then((f) => f.readFile(ca.certFile, "utf8")) },
    });
    const clients: Array<NatsConnection> = [];
    try {
      const settings = loadSettings({ ...nats.env("worker"), TALLY_NATS_CA_FILE: ca.certFile });
      const nc = await connectNats(settings.natsUrl, "test-tls", settings.natsAccess);
      clients.push(nc);
      expect(nc.info?.tls_required).toBe(true);
      await nc.flush();
      const wrong = loadSettings({ ...nats.env("worker"), TALLY_NATS_CA_FILE: otherCa.certFile });
      await expect(connectNats(wrong.natsUrl, "test-tls", { ...wrong.natsAccess })).rejects.toThrow();
    } finally {
      for (const c of clients) await c.close();
      await nats.close();
    }
  }, 60_000);
});

describe("NATS authentication other than user and password", () => {
  it("a token, from TALLY_NATS_TOKEN or as nats://<token>@host", async () => {
    const folder = await mkdtemp(join(tmpdir(), "tally-token-"));
    const configFile = join(folder, "token.conf");
    await writeFile(configFile, 'authorization { token: "t0ken-s3cret" }\n');
    const nats = await startNats({ configFile, probeOptions: { token: "t0ken-s3cret" } });
    try {
      for (const env of [
        { TALLY_NATS_URL: nats.url, TALLY_NATS_TOKEN: "t0ken-s3cret" },
        { TALLY_NATS_URL: nats.url.replace("nats://", "nats://t0ken-s3cret@") },
      ]) {
        const s = loadSettings(env);
        const nc = await connectNats(s.natsUrl, "test-token", s.natsAccess);
        await nc.flush();
        await nc.close();
      }
      await expect(connectNats(nats.url, "test-token", { token: "wrong" })).rejects.toThrow(/authorization/i);
    } finally {
      await nats.destroy();
      await rm(folder, { recursive: true, force: true });
    }
  }, 60_000);

  it("an NKey seed file (TALLY_NATS_NKEY_SEED_FILE)", async () => {
    const folder = await mkdtemp(join(tmpdir(), "tally-nkey-"));
    const user = nkeys.createUser();
    const seedFile = join(folder, "tally.nk");
    await writeFile(seedFile, `${new TextDecoder().decode(user.getSeed())}\n`);
    const configFile = join(folder, "nkey.conf");
    await writeFile(configFile, `authorization { users = [ { nkey: ${user.getPublicKey()} } ] }\n`);
    const nats = await startNats({
      configFile,
      probeOptions: { authenticator: (await import("@nats-io/transport-node")).nkeyAuthenticator(user.getSeed()) },
    });
    try {
      const s = loadSettings({ TALLY_NATS_URL: nats.url, TALLY_NATS_NKEY_SEED_FILE: seedFile });
      const nc = await connectNats(s.natsUrl, "test-nkey", s.natsAccess);
      await nc.flush();
      await nc.close();
      const stranger = join(folder, "stranger.nk");
      await writeFile(stranger, new TextDecoder().decode(nkeys.createUser().getSeed()));
      await expect(connectNats(nats.url, "test-nkey", { nkeySeedFile: stranger })).rejects.toThrow(/authorization/i);
    } finally {
      await nats.destroy();
      await rm(folder, { recursive: true, force: true });
    }
  }, 60_000);

  it("a .creds file (user JWT and seed) on a server in operator mode (TALLY_NATS_CREDS_FILE)", async () => {
    const folder = await mkdtemp(join(tmpdir(), "tally-creds-"));
    const operator = nkeys.createOperator();
    const account = nkeys.createAccount();
    const user = nkeys.createUser();
    const now = Math.floor(Date.now() / 1000);
    const operatorJwt = jwt(operator, { sub: operator.getPublicKey(), name: "tally-test", nats: { type: "operator", version: 2 } }, now);
    const accountJwt = jwt(
      operator,
      {
        sub: account.getPublicKey(),
        name: "tally",
        nats: {
          type: "account",
          version: 2,
          limits: { subs: -1, data: -1, payload: -1, imports: -1, exports: -1, wildcards: true, conn: -1, leaf: -1 },
        },
      },
      now,
    );
    const userJwt = jwt(
      account,
      { sub: user.getPublicKey(), name: "tally_worker", nats: { type: "user", version: 2, pub: {}, sub: {}, subs: -1, data: -1, payload: -1 } },
      now,
    );
    const credsFile = join(folder, "tally.creds");
    await writeFile(
      credsFile,
      `-----BEGIN NATS USER JWT-----\n${userJwt}\n------END NATS USER JWT------\n\n-----BEGIN USER NKEY SEED-----\n${new TextDecoder().decode(user.getSeed())}\n------END USER NKEY SEED------\n`,
    );
    const configFile = join(folder, "operator.conf");
    await writeFile(configFile, `operator: ${operatorJwt}\nresolver: MEMORY\nresolver_preload: { ${account.getPublicKey()}: ${accountJwt} }\n`);
    const { credsAuthenticator } = await import("@nats-io/transport-node");
    const { readFile } = await import("node:fs/promises");
    const nats = await startNats({ configFile, probeOptions: { authenticator: credsAuthenticator(await readFile(credsFile)) }, jetStream: false });
    try {
      const s = loadSettings({ TALLY_NATS_URL: nats.url, TALLY_NATS_CREDS_FILE: credsFile });
      const nc = await connectNats(s.natsUrl, "test-creds", s.natsAccess);
      await nc.flush();
      await nc.close();
      await expect(connectNats(nats.url, "test-creds")).rejects.toThrow(/authorization/i);
    } finally {
      await nats.destroy();
      await rm(folder, { recursive: true, force: true });
    }
  }, 60_000);
});

/** A NATS JWT (header, claims, ed25519 signature by `signer`), as `nsc` would write it. */
function jwt(signer: ReturnType<typeof nkeys.createOperator>, claims: Record<string, unknown>, iat: number): string {
  const b64 = (b: Uint8Array | string) => Buffer.from(b).toString("base64url");
  const header = b64(JSON.stringify({ typ: "JWT", alg: "ed25519-nkey" }));
  const body = b64(JSON.stringify({ jti: `${iat}${Math.random().toString(36).slice(2)}`.toUpperCase(), iat, iss: signer.getPublicKey(), ...claims }));
  return `${header}.${body}.${b64(signer.sign(new TextEncoder().encode(`${header}.${body}`)))}`;
}
