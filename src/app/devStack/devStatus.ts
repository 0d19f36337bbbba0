/**
 * What `tally dev` tells a developer besides the banner: the environment that reaches the stack from
 * another shell (also written to `<dir>/env`) and the one-line live status.
 */

/** The parts of a dev stack the environment is made of. */
export interface DevEnvironmentOf {
  readonly settings: { readonly env: string };
  readonly databaseUrl: string;
  readonly natsUrl: string;
  readonly apiUrl: string;
  readonly devToken: string | null;
  readonly sourceUrls: Readonly<Record<string, string>>;
}

/**
 * The variables a second process needs to reach the stack: the settings every `tally` command reads
 * (TALLY_ENV, TALLY_DATABASE_URL, TALLY_NATS_URL and the CDC sources' TALLY_SOURCE_<NAME>_URL, without
 * which `tally source status` finds no source), and for curl the API's URL and admin token
 * (TALLY_DEV_API_URL, TALLY_DEV_TOKEN: read by no `tally` command).
 */
export function devEnvironment(stack: DevEnvironmentOf): Record<string, string> {
  return {
    TALLY_ENV: stack.settings.env,
    TALLY_DATABASE_URL: stack.databaseUrl,
    TALLY_NATS_URL: stack.natsUrl,
    ...stack.sourceUrls,
    TALLY_DEV_API_URL: stack.apiUrl,
    ...(stack.devToken ? { TALLY_DEV_TOKEN: stack.devToken } : {}),
  };
}

/** A value quoted for a POSIX shell (single quotes; a quote inside as '\''). */
const shellQuote = (value: string): string => (/^[A-Za-z0-9_@%+=:,./-]+$/.test(value) ? value : `'${value.replaceAll("'", "'\\''")}'`);

/** `export NAME=value` lines, for `source <dir>/env` (or `export $(…)`-free pasting). */
export function envFileText(vars: Readonly<Record<string, string>>): string {
  return [
    "# Written by tally dev while it runs (deleted when it stops): the environment that reaches it from another shell.",
    "# In the repository (where tally.config.ts is): source .tally/env, then e.g. npx tally source status",
    ...Object.entries(vars).map(([name, value]) => `export ${name}=${shellQuote(value)}`),
    "",
  ].join("\n");
}

/** The counters the status line reads from the running roles (structurally: the roles' own objects). */
export interface StatusSources {
  readonly worker: { readonly metrics: { readonly applied: number; readonly rejected: number } } | null;
  readonly relay: { readonly published: number } | null;
  readonly readers: ReadonlyArray<{ readonly name: string; readonly streaming: boolean; readonly metrics: { readonly halted: unknown } }>;
  readonly nats: { readonly jsm: { readonly streams: { info(name: string): Promise<{ readonly state: { readonly messages: number } }> } } };
  readonly topology: { readonly dlqStream: string };
}

/** The demo simulator's side of the status line. */
export interface StatusSimulator {
  readonly phase: string;
  readonly stats: { readonly posTransactions: number; readonly orders: number; readonly receipts: number; readonly errors: number };
}

const count = (n: number): string => n.toLocaleString("en");

/** One line: commands applied, availability published, dead letters waiting, CDC and the demo's state. */
export async function statusLine(running: StatusSources, simulator: StatusSimulator | null): Promise<string> {
  const parts: Array<string> = [];
  const worker = running.worker?.metrics;
  if (worker) parts.push(`${count(worker.applied)} commands applied${worker.rejected > 0 ? ` (${count(worker.rejected)} rejected)` : ""}`);
  if (running.relay) parts.push(`${count(running.relay.published)} availability published`);
  const dlq = await running.nats.jsm.streams.info(running.topology.dlqStream).catch(() => null); // NATS down: shown as unknown
  parts.push(dlq ? `${count(dlq.state.messages)} dead letters${dlq.state.messages > 0 ? " (tally dlq list)" : ""}` : "dead letters: ?");
  const cdc = running.readers.map((r) => `${r.name} ${r.metrics.halted ? "HALTED" : r.streaming ? "streaming" : "starting"}`);
  if (cdc.length > 0) parts.push(`cdc ${cdc.join(", ")}`);
  if (simulator) {
    const s = simulator.stats;
    parts.push(
      simulator.phase === "running"
        ? `demo ${count(s.posTransactions)} POS, ${count(s.orders)} orders, ${count(s.receipts)} receipts${s.errors > 0 ? `, ${count(s.errors)} errors` : ""}`
        : `demo ${simulator.phase}`,
    );
  }
  return `tally dev · ${parts.join(" · ")}`;
}
