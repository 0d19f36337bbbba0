import { Effect } from "effect";
import { configuredSources } from "../../../cdc/index.ts";
import { usableWebhookTargets } from "../../channels/index.ts";
import { createLogger, knownStores, loadSettings, loadTallyConfig, type Settings } from "../../platform/index.ts";
import { fromPromise, runEffect } from "../roles.ts";
import { CommandError, EXIT, ledgerResource, natsTopology, type OutputFormat, UsageError, writeJson } from "./common.ts";

type Letter = Awaited<ReturnType<typeof import("../../operations/index.ts")["listDeadLetters"]>>[number];
type Nats = Effect.Effect.Success<ReturnType<typeof natsTopology>>;

/** `tally dlq list [--origin o]`: dead letters of every origin (CDC sources, submit, commands, POS). */
export async function list(opts: { readonly origin?: string; readonly format: OutputFormat }): Promise<number> {
  return withLetters(opts.origin, async (_settings, letters) => {
    if (opts.format === "json") writeJson(letters);
    else {
      for (const l of letters) process.stdout.write(`${l.id}\t${l.at}\t${l.origin}\t${l.reason}\n`);
      process.stdout.write(`${letters.length} dead letters\n`);
    }
    return EXIT.ok;
  });
}

/** The letters a replay or discard acts on: the ids given (each must exist) or, with --all, every one. */
function chosen(sub: string, letters: ReadonlyArray<Letter>, ids: ReadonlyArray<string>, all: boolean) {
  const wanted = all ? letters : letters.filter((l) => ids.includes(String(l.id)));
  const missing = all ? [] : ids.filter((id) => !letters.some((l) => String(l.id) === id));
  for (const id of missing) process.stderr.write(`dlq: no dead letter ${id}\n`);
  if (wanted.length === 0 && missing.length === 0) throw new UsageError(`dlq ${sub}: give dead letter ids or --all`);
  return { wanted, missing: missing.length };
}

/** `tally dlq discard <id…|--all>`: removes dead letters for good. */
export async function discard(ids: ReadonlyArray<string>, opts: { readonly all?: boolean }): Promise<number> {
  const dlq = await import("../../operations/index.ts");
  return withLetters(undefined, async (_settings, letters, nats) => {
    const { wanted, missing } = chosen("discard", letters, ids, opts.all === true);
    for (const l of wanted) {
      await dlq.discardDeadLetter(nats, nats.topology, l.id);
      process.stdout.write(`${l.id}\tdiscarded\t${l.reason}\n`);
    }
    return missing > 0 ? EXIT.failure : EXIT.ok;
  });
}

/** `tally dlq replay <id…|--all>`: maps or decodes each letter again and publishes it; a letter that succeeds is removed. */
export async function replay(ids: ReadonlyArray<string>, opts: { readonly all?: boolean }): Promise<number> {
  const dlq = await import("../../operations/index.ts");
  const { PosIngest } = await import("../../ingest/index.ts");
  return withLetters(undefined, async (settings, letters, nats, sql) => {
    const { wanted, missing } = chosen("replay", letters, ids, opts.all === true);
    let failed = missing;
    const config = await loadTallyConfig(settings.configFile);
    const t = nats.topology;
    const sources = new Map(configuredSources(config, settings.env).map((s) => [s.name, s] as const));
    const pos = new PosIngest({
      sql,
      nats,
      topology: t,
      stores: knownStores(config),
      finance: config.finance,
      log: createLogger("tally-dlq", "warn"),
    });
    for (const l of wanted) {
      const r = await dlq.replayDeadLetter({ sql, nats, topology: t, sources, pos, webhooks: usableWebhookTargets(config) }, l);
      if (r.ok) process.stdout.write(`${l.id}\treplayed\t${r.commands} commands\n`);
      else {
        failed++;
        process.stdout.write(`${l.id}\tstill failing\t${r.reason}\n`);
      }
    }
    return failed > 0 ? EXIT.failure : EXIT.ok;
  });
}

type Ledger = Effect.Effect.Success<ReturnType<typeof ledgerResource>>;

/** Runs `use` with the ledger database, NATS and the dead letters (of one origin, or all). */
async function withLetters(
  origin: string | undefined,
  use: (settings: Settings, letters: ReadonlyArray<Letter>, nats: Nats, sql: Ledger) => Promise<number>,
): Promise<number> {
  const settings = loadSettings();
  const dlq = await import("../../operations/index.ts");
  return runEffect(
    Effect.scoped(
      Effect.gen(function* () {
        const sql = yield* ledgerResource(settings, "tally-dlq");
        const nats = yield* natsTopology(settings, "tally-dlq");
        return yield* fromPromise(async () => use(settings, await dlq.listDeadLetters(nats, nats.topology, origin), nats, sql));
      }),
    ),
  );
}

/**
 * `tally dlq skip <partition> [--seq n]`: the operator's way out of a stuck partition — the worker
 * holding it dead-letters that message (nothing is lost: it can be replayed after a fix) and moves on.
 */
export async function skip(p: string, opts: { readonly seq?: number }): Promise<number> {
  const settings = loadSettings();
  const { activeLayout, listStuck, requestSkip } = await import("../../../ledger/index.ts");
  if (!/^\d+$/.test(p)) throw new UsageError(`dlq skip: expected a partition number, got ${JSON.stringify(p)}`);
  const partition = Number(p);
  return runEffect(
    Effect.scoped(
      Effect.gen(function* () {
        const sql = yield* ledgerResource(settings, "tally-dlq");
        // The partitions workers apply: the ledger's active layout (after a resize), else TALLY_PARTITIONS.
        const partitions = (yield* fromPromise(() => activeLayout(sql)))?.partitions ?? settings.partitions;
        if (partition >= partitions)
          throw new UsageError(`dlq skip: expected a partition from 0 to ${partitions - 1} (the layout workers apply), got ${JSON.stringify(p)}`);
        const stuck = yield* fromPromise(() => listStuck(sql));
        const seq = opts.seq ?? stuck.find((s) => s.partition === partition)?.streamSeq;
        if (seq === undefined) throw new CommandError(`dlq skip: partition ${partition} is not stuck; give --seq <n> to skip a message anyway`);
        const by = `${process.env.USER ?? "operator"}@cli`;
        const fresh = yield* fromPromise(() => requestSkip(sql, partition, seq, by));
        process.stdout.write(
          `partition ${partition}: message ${seq} ${fresh ? "will be" : "was already asked to be"} dead-lettered and skipped by the worker holding it (within its next retry)\n`,
        );
        return EXIT.ok;
      }),
    ),
  );
}

/**
 * `tally dlq list --stuck`: the partitions that are not advancing (as their workers record them), with
 * the message each is stuck at.
 */
export async function stuck(opts: { readonly format: OutputFormat }): Promise<number> {
  const settings = loadSettings();
  const { listStuck } = await import("../../../ledger/index.ts");
  const { decodeEnvelope } = await import("../../wire/index.ts");
  const withMessages = await runEffect(
    Effect.scoped(
      Effect.gen(function* () {
        const sql = yield* ledgerResource(settings, "tally-dlq");
        const rows = yield* fromPromise(() => listStuck(sql));
        const nats = yield* natsTopology(settings, "tally-dlq");
        return yield* fromPromise(() =>
          Promise.all(
            rows.map(async (s) => {
              // Not found (or not readable): reported below as "not in the stream".
              const m = await nats.jsm.streams.getMessage(nats.topology.commandsStream, { seq: s.streamSeq }).catch(() => null);
              const envelope = m ? decodeEnvelope(m.data) : null;
              return { ...s, commands: envelope?.ok ? envelope.commands : null, message: m ? null : "not in the stream" };
            }),
          ),
        );
      }),
    ),
  );
  if (opts.format === "json") writeJson(withMessages);
  else {
    for (const s of withMessages) {
      const ids = (s.commands ?? []).map((c) => (c as { id?: unknown }).id).join(",");
      process.stdout.write(
        `partition ${s.partition}\tseq ${s.streamSeq}\t${s.attempts} attempts since ${s.since.toISOString()}\t${s.error}\t${ids || s.message || ""}\n`,
      );
    }
    process.stdout.write(`${withMessages.length} stuck partitions\n`);
  }
  return EXIT.ok;
}
