// deploy/: what can be checked without a Docker engine or a booted systemd. The systemd units go through
// `systemd-analyze verify` and `security --offline`; the compose file is parsed and its structure checked
// against deploy/nats/tally.conf and the Dockerfile; the NATS cluster of the compose file is started here
// with the same nats-server arguments (loopback ports instead of container names) and must place a stream
// on all three nodes; the Dockerfile's COPY sources must exist and not be excluded from the build context.
// Not validated here: building the image, and running the compose file or the units for real.
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { cpSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { afterAll, describe, expect, it } from "vitest";
import { parse } from "yaml";
import { findNatsServer } from "../src/app/devStack/index.ts";
import { freePort } from "./support/ports.ts";
import { ROOT } from "./support/tally.ts";

const DEPLOY = path.join(ROOT, "deploy");

function run(file: string, args: ReadonlyArray<string>, cwd: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(file, [...args], { cwd }, (error, stdout, stderr) => {
      resolve({ code: error ? (typeof error.code === "number" ? error.code : 1) : 0, stdout, stderr });
    });
  });
}

describe("systemd units (deploy/systemd)", () => {
  const units = path.join(DEPLOY, "systemd");
  /** A temp copy whose ExecStart points at an executable that exists here (verify checks it). */
  function copy(): string {
    const dir = mkdtempSync(path.join(tmpdir(), "tally-units-"));
    cpSync(units, dir, { recursive: true });
    for (const f of readdirSync(dir).filter((f) => f.endsWith(".service")))
      writeFileSync(path.join(dir, f), readFileSync(path.join(dir, f), "utf8").replaceAll("/usr/bin/tally", process.execPath));
    return dir;
  }
  const verify = (dir: string, ...names: Array<string>) => run("systemd-analyze", ["verify", "--man=no", ...names], dir);

  it("pass systemd-analyze verify with no warning (each role instance, the migration, the target)", async () => {
    const dir = copy();
    try {
      for (const role of ["worker", "relay", "cdc", "api"]) {
        const r = await verify(dir, `tally@${role}.service`, "tally-migrate.service", "tally.target");
        expect(r.stderr, role).toBe("");
        expect(r.code, role).toBe(0);
      }
      // The check itself catches a typo and an ExecStart that is not there.
      writeFileSync(path.join(dir, "tally-migrate.service"), `${readFileSync(path.join(dir, "tally-migrate.service"), "utf8")}ProtectSytem=strict\n`);
      expect((await verify(dir, "tally-migrate.service")).stderr).toContain("Unknown key 'ProtectSytem'");
      expect((await run("systemd-analyze", ["verify", "--man=no", "tally@worker.service"], units)).code).not.toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("are hardened: systemd-analyze security rates the role unit's exposure at most 2.0 (of 10)", async () => {
    const dir = copy();
    try {
      const r = await run("systemd-analyze", ["security", "--offline=yes", "--no-pager", "tally@worker.service"], dir);
      const exposure = /Overall exposure level for tally@worker\.service: ([\d.]+)/.exec(r.stdout + r.stderr);
      expect(exposure, r.stdout + r.stderr).not.toBeNull();
      console.log(`systemd-analyze security: exposure ${exposure![1]}`);
      expect(Number(exposure![1])).toBeLessThanOrEqual(2);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("read their settings from an EnvironmentFile and run `tally start --roles <instance>`", () => {
    const unit = readFileSync(path.join(units, "tally@.service"), "utf8");
    expect(unit).toMatch(/^EnvironmentFile=\/etc\/tally\/tally\.env$/m);
    expect(unit).toMatch(/^ExecStart=\/usr\/bin\/tally start --roles %i$/m);
    expect(unit).toMatch(/^Requires=tally-migrate\.service$/m);
  });
});

type Service = {
  image?: string;
  build?: { context: string; dockerfile: string };
  command?: Array<string>;
  environment?: Record<string, string>;
  depends_on?: Record<string, { condition: string }>;
  volumes?: Array<string>;
  restart?: string;
  healthcheck?: { test?: Array<string>; disable?: boolean };
};
const compose = parse(readFileSync(path.join(DEPLOY, "compose.yaml"), "utf8"), { merge: true }) as { services: Record<string, Service> };
const services = compose.services;
const natsConf = readFileSync(path.join(DEPLOY, "nats/tally.conf"), "utf8");
const NATS = ["nats-1", "nats-2", "nats-3"];
const ROLES = ["worker", "relay", "cdc", "api"];
const flag = (command: ReadonlyArray<string>, name: string) => command[command.indexOf(name) + 1];

describe("compose file (deploy/compose.yaml)", () => {
  it("runs a 3-node JetStream cluster on deploy/nats/tally.conf, each node with every password the config refers to", () => {
    const settings = natsConf.replace(/#.*$/gm, "");
    const vars = [...new Set([...settings.matchAll(/[:=]\s*\$([A-Z_][A-Z0-9_]*)\b/g)].map((m) => m[1]!))];
    expect(vars.length).toBeGreaterThan(0);
    const names = new Set<string>();
    for (const name of NATS) {
      const s = services[name]!;
      expect(s.image).toMatch(/^nats:2\./);
      expect(flag(s.command!, "-c")).toBe("/etc/nats/tally.conf");
      expect(s.volumes).toContain("./nats/tally.conf:/etc/nats/tally.conf:ro");
      expect(flag(s.command!, "--cluster_name")).toBe("tally");
      expect(flag(s.command!, "--routes")!.split(",").sort()).toEqual(NATS.map((n) => `nats://${n}:6222`));
      names.add(flag(s.command!, "--server_name")!);
      expect(Object.keys(s.environment!).sort()).toEqual([...vars].sort());
    }
    expect(names.size).toBe(3);
    // Each node keeps its JetStream store on its own volume.
    const store = /^\s*store_dir: "([^"]+)"/m.exec(natsConf)![1]!;
    for (const name of NATS) expect(store.startsWith(`${services[name]!.volumes![1]!.split(":")[1]}/`), store).toBe(true);
    expect(existsSync(path.join(DEPLOY, "nats/tally.conf"))).toBe(true);
  });

  it("runs Postgres 15 with logical replication, and `tally migrate` once before every role", () => {
    expect(services["postgres"]!.image).toBe("postgres:15");
    expect(services["postgres"]!.command).toContain("wal_level=logical");
    const migrate = services["migrate"]!;
    expect(migrate.command).toEqual(["migrate"]);
    expect(migrate.restart).toBe("no");
    expect(migrate.depends_on).toEqual({ postgres: { condition: "service_healthy" } });
    for (const role of ROLES) expect(services[role]!.depends_on!["migrate"]).toEqual({ condition: "service_completed_successfully" });
  });

  it("runs each role as a service with its own NATS user of deploy/nats/tally.conf, in environment prod", () => {
    const users = new Set([...natsConf.matchAll(/user: (tally_[a-z]+)/g)].map((m) => m[1]));
    for (const role of ROLES) {
      const s = services[role]!;
      expect(s.command).toEqual(["start", "--roles", role]);
      expect(s.environment!["TALLY_NATS_USER"]).toBe(`tally_${role}`);
      expect(users.has(`tally_${role}`), `tally_${role} in tally.conf`).toBe(true);
      expect(s.environment!["TALLY_ENV"]).toBe("prod");
      expect(s.environment!["TALLY_NATS_URL"]!.split(",")).toEqual(NATS.map((n) => `nats://${n}:4222`));
      expect(s.build).toEqual({ context: "..", dockerfile: "deploy/Dockerfile" });
      if (role !== "api") expect(s.healthcheck).toEqual({ disable: true });
    }
    expect(services["api"]!.healthcheck!.test!.join(" ")).toContain("/readyz");
    expect(natsConf).toContain("tally.prod.");
  });

  it("refers only to services it defines and files that exist", () => {
    for (const [name, s] of Object.entries(services)) {
      for (const dep of Object.keys(s.depends_on ?? {})) expect(Object.keys(services), `${name} depends on ${dep}`).toContain(dep);
      for (const v of s.volumes ?? []) if (v.startsWith("./")) expect(existsSync(path.join(DEPLOY, v.split(":")[0]!)), v).toBe(true);
      if (s.build) expect(existsSync(path.join(DEPLOY, s.build.context, s.build.dockerfile))).toBe(true);
    }
  });
});

describe("Dockerfile (deploy/Dockerfile)", () => {
  const dockerfile = readFileSync(path.join(DEPLOY, "Dockerfile"), "utf8");
  const ignored = readFileSync(path.join(DEPLOY, "Dockerfile.dockerignore"), "utf8")
    .split("\n")
    .filter((l) => l.trim() !== "" && !l.startsWith("#"));

  it("copies only files that exist in the build context (the repository root) and are not ignored", () => {
    const sources = [...dockerfile.matchAll(/^COPY (.+) \S+$/gm)].flatMap((m) => m[1]!.split(" "));
    expect(sources).toEqual(expect.arrayContaining(["package.json", "package-lock.json", "patches/", "bin/", "src/", "migrations/"]));
    for (const source of sources) {
      expect(existsSync(path.join(ROOT, source)), source).toBe(true);
      expect(ignored, source).not.toContain(source.replace(/\/$/, ""));
    }
  });

  it("is Node 22 slim, installs production dependencies with the patches, runs as non-root under tini, checks /readyz", () => {
    expect(dockerfile).toMatch(/^FROM node:22-[a-z]+-slim$/m);
    expect(dockerfile).toMatch(/^COPY patches\/ patches\/\nRUN npm ci --omit=dev/m);
    expect(dockerfile).toMatch(/^USER node$/m);
    expect(dockerfile).toMatch(/^ENTRYPOINT \["\/usr\/bin\/tini", "--", "node", "\/app\/bin\/tally\.js"\]$/m);
    expect(dockerfile).toMatch(/^HEALTHCHECK .*\n\s+CMD .*\/readyz/m);
  });
});

describe("the compose file's NATS cluster, started here", () => {
  const children: Array<ChildProcess> = [];
  let dir: string;
  afterAll(async () => {
    for (const c of children) c.kill("SIGKILL");
    await Promise.all(children.map((c) => (c.exitCode === null ? new Promise((r) => c.once("exit", r)) : null)));
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("forms a JetStream cluster that keeps a stream on all three nodes (R3)", async () => {
    dir = mkdtempSync(path.join(tmpdir(), "tally-nats-cluster-"));
    const ports = new Map<string, { client: number; cluster: number; http: number }>();
    for (const n of NATS) ports.set(n, { client: await freePort(), cluster: await freePort(), http: await freePort() });
    const env = { ...process.env, ...Object.fromEntries(Object.keys(services["nats-1"]!.environment!).map((k) => [k, `pw${k.length}x`])) };
    for (const n of NATS) {
      const p = ports.get(n)!;
      // The compose command, with container names and fixed ports swapped for loopback and free ports.
      // The config file as it is, but for its store folder (nats-server refuses -sd next to store_dir).
      const conf = path.join(dir, `${n}.conf`);
      writeFileSync(conf, natsConf.replace(/^(\s*store_dir: )"[^"]+"/m, `$1"${path.join(dir, n)}"`));
      const args = services[n]!.command!.map((a) =>
        a
          .replace("/etc/nats/tally.conf", conf)
          .replace("nats://0.0.0.0:6222", `nats://127.0.0.1:${p.cluster}`)
          .replace(/nats:\/\/(nats-\d):6222/g, (_, host: string) => `nats://127.0.0.1:${ports.get(host)!.cluster}`),
      );
      args[args.indexOf("--http_port") + 1] = String(p.http);
      args.push("-a", "127.0.0.1", "-p", String(p.client), "-l", path.join(dir, `${n}.log`));
      children.push(spawn(findNatsServer(), args, { env, stdio: "ignore" }));
    }
    const servers = NATS.map((n) => `nats://127.0.0.1:${ports.get(n)!.client}`);
    const deadline = Date.now() + 60_000;
    for (;;) {
      try {
        const nc = await connect({ servers, user: "tally_admin", pass: env["TALLY_NATS_ADMIN_PASSWORD"]!, timeout: 2000, reconnect: false });
        try {
          const jsm = await jetstreamManager(nc, { timeout: 5000 });
          const info = await jsm.streams.add({ name: "R3_PROBE", subjects: ["probe.>"], num_replicas: 3 });
          expect(info.cluster?.name).toBe("tally");
          expect([info.cluster?.leader, ...(info.cluster?.replicas ?? []).map((r) => r.name)].sort()).toEqual([
            "tally-nats-1",
            "tally-nats-2",
            "tally-nats-3",
          ]);
          return;
        } finally {
          await nc.close();
        }
      } catch (error) {
        if (Date.now() > deadline) {
          for (const n of NATS) console.log(`${n}.log:\n${readFileSync(path.join(dir, `${n}.log`), "utf8").slice(-2000)}`);
          throw error;
        }
        await new Promise((r) => setTimeout(r, 500));
      }
    }
  });
});
