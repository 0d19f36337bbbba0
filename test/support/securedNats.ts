import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { encodeToken } from "../../src/wire/topology.ts";
import { startNats, type NatsServer } from "./nats.ts";
import { ROOT } from "./tally.ts";

/** The users of the shipped NATS configuration (deploy/nats/tally.conf). */
export const NATS_USERS = ["api", "cdc", "worker", "relay", "reader", "pos", "admin"] as const;
export type NatsUser = (typeof NATS_USERS)[number];

/** A nats-server running the shipped per-role configuration for one environment. */
export interface SecuredNats {
  readonly server: NatsServer;
  /** The folder holding the filled-in copy of the configuration (and whatever a test adds). */
  readonly dir: string;
  /** The server's log: permission violations are logged there, naming the user. */
  readonly logPath: string;
  /** `tally_<user>` and its password. */
  credentials(user: NatsUser): { user: string; password: string };
  /** `tally_channel_<channel>` (a channel user added from the shipped template) and its password. */
  channelCredentials(channel: string): { user: string; password: string };
  /** TALLY_NATS_URL / USER / PASSWORD for a Tally process connecting as `user`. */
  env(user: NatsUser): Record<string, string>;
  close(): Promise<void>;
}

/** The shipped `deploy/nats/tally.conf` with its environment (`prod`) replaced by `env`. */
export async function shippedNatsConfig(env: string): Promise<string> {
  const shipped = await readFile(join(ROOT, "deploy/nats/tally.conf"), "utf8");
  return shipped
    .replaceAll("tally.prod.", `tally.${env}.`)
    .replaceAll("tally_prod_", `tally_${env}_`)
    .replaceAll("TALLY_PROD_", `TALLY_${env.toUpperCase()}_`);
}

const TEMPLATE_BEGIN = "# --- channel user template: begin ---";
const TEMPLATE_END = "# --- channel user template: end ---";

/** The `<CHANNEL>` of `$TALLY_NATS_CHANNEL_<CHANNEL>_PASSWORD`, as the template's comment says. */
export const channelPasswordName = (channel: string): string =>
  `TALLY_NATS_CHANNEL_${encodeToken(channel).toUpperCase().replace(/[-=]/g, "_")}_PASSWORD`;

/** The commented channel user template of `config`, uncommented (placeholders left in). */
export function channelUserTemplate(config: string): string {
  const begin = config.indexOf(TEMPLATE_BEGIN);
  const end = config.indexOf(TEMPLATE_END);
  if (begin < 0 || end < begin) throw new Error("no channel user template in the NATS configuration");
  return config
    .slice(begin + TEMPLATE_BEGIN.length, end)
    .split("\n")
    .map((l) => l.replace(/^(\s*)# ?/, "$1"))
    .join("\n");
}

/**
 * `config` with a user per channel added the way its comment tells an operator to: the template
 * copied after it, `# ` removed, `<channel>` and `<CHANNEL>` replaced.
 */
export function withChannelUsers(config: string, channels: ReadonlyArray<string>): string {
  const template = channelUserTemplate(config);
  const blocks = channels.map((c) =>
    template.replaceAll("<channel>", encodeToken(c)).replaceAll("$TALLY_NATS_CHANNEL_<CHANNEL>_PASSWORD", `$${channelPasswordName(c)}`),
  );
  const at = config.indexOf(TEMPLATE_END) + TEMPLATE_END.length;
  return `${config.slice(0, at)}\n${blocks.join("\n")}${config.slice(at)}`;
}

/** A random password per user of the shipped configuration, and the server environment that passes them (`$TALLY_NATS_<USER>_PASSWORD`). */
export function natsPasswords(): { passwords: Record<NatsUser, string>; serverEnv: Record<string, string> } {
  const passwords = Object.fromEntries(NATS_USERS.map((u) => [u, `p${randomBytes(12).toString("hex")}`])) as Record<NatsUser, string>;
  const serverEnv = Object.fromEntries(NATS_USERS.map((u) => [`TALLY_NATS_${u.toUpperCase()}_PASSWORD`, passwords[u]]));
  return { passwords, serverEnv };
}

/**
 * The shipped `deploy/nats/tally.conf`, copied to a temp folder with its environment (`prod`)
 * replaced by `env`, random passwords in the server's environment, and the port and store folder
 * of {@link startNats}; `extra` is appended (a `tls {}` block, say). The readiness probe connects
 * as the admin user.
 */
export async function startSecuredNats(
  env: string,
  opts: { extra?: string; probeTls?: { ca: string }; channels?: ReadonlyArray<string> } = {},
): Promise<SecuredNats> {
  const dir = await mkdtemp(join(tmpdir(), "tally-secured-nats-"));
  // startNats gives the store folder on the command line (`-sd`), which may not be given twice.
  const filled = withChannelUsers((await shippedNatsConfig(env)).replace(/\n\s*store_dir: .*/, ""), opts.channels ?? []);
  const configFile = join(dir, "tally.conf");
  await writeFile(configFile, `${filled}\n${opts.extra ?? ""}\n`);
  const { passwords, serverEnv } = natsPasswords();
  const channelPasswords = new Map((opts.channels ?? []).map((c) => [c, `p${randomBytes(12).toString("hex")}`]));
  for (const [c, p] of channelPasswords) serverEnv[channelPasswordName(c)] = p;
  const logPath = join(dir, "nats-server.log");
  const server = await startNats({
    configFile,
    logPath,
    env: serverEnv,
    probeOptions: { user: "tally_admin", pass: passwords.admin, ...(opts.probeTls ? { tls: { ca: opts.probeTls.ca } } : {}) },
  });
  const credentials = (u: NatsUser) => ({ user: `tally_${u}`, password: passwords[u] });
  return {
    server,
    dir,
    logPath,
    credentials,
    channelCredentials: (c) => {
      const password = channelPasswords.get(c);
      if (password === undefined) throw new Error(`no NATS user for channel ${c}: pass it in startSecuredNats's channels`);
      return { user: `tally_channel_${encodeToken(c)}`, password };
    },
    env: (u) => ({ TALLY_NATS_URL: server.url, TALLY_NATS_USER: credentials(u).user, TALLY_NATS_PASSWORD: credentials(u).password }),
    close: async () => {
      await server.destroy();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
