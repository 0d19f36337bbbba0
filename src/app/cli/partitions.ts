import { Effect } from "effect";
import { loadSettings } from "../../platform/index.ts";
import { fromPromise, runEffect } from "../roles.ts";
import { CommandError, EXIT, ledgerResource, natsTopology, type OutputFormat, UsageError, writeJson } from "./common.ts";

type Status = Awaited<ReturnType<typeof import("../../operations/index.ts")["layoutStatus"]>>;

function printStatus(s: Status): void {
  const d = s.draining;
  process.stdout.write(`applied: generation ${s.applied.generation}, ${s.applied.partitions} partitions\n`);
  if (s.published) process.stdout.write(`published: generation ${s.published.generation}, ${s.published.partitions} partitions\n`);
  if (d)
    process.stdout.write(`resize under way: generation ${d.generation}, ${d.previousPartitions} → ${d.partitions} partitions, cut at ${d.cutSeq}\n`);
  for (const p of s.partitions)
    process.stdout.write(
      `partition ${p.partition}\tcheckpoint ${p.checkpoint}\tlast ${p.lastSeq}\t${p.checkpoint >= p.lastSeq ? "caught up" : `${p.lastSeq - p.checkpoint} behind`}\n`,
    );
}

/** `tally partitions status`: the layout applied and published, and each partition's checkpoint against its subject's last message. */
export async function status(opts: { readonly format: OutputFormat }): Promise<number> {
  const settings = loadSettings();
  const { layoutStatus } = await import("../../operations/index.ts");
  const s = await runEffect(
    Effect.scoped(
      Effect.gen(function* () {
        const sql = yield* ledgerResource(settings, "tally-partitions");
        const nats = yield* natsTopology(settings, "tally-partitions");
        return yield* fromPromise(() => layoutStatus({ sql, jsm: nats.jsm, topology: nats.topology }));
      }),
    ),
  );
  if (opts.format === "json") writeJson(s);
  else printStatus(s);
  return EXIT.ok;
}

/**
 * `tally partitions resize <n> [--dry-run] [--timeout <seconds>]`: changes the partition count (see
 * docs/scaling.md for the procedure); `--dry-run` shows the layouts and how far each partition is.
 */
export async function resize(
  n: string,
  opts: { readonly dryRun?: boolean; readonly timeout: number; readonly format: OutputFormat },
): Promise<number> {
  if (!/^\d+$/.test(n) || Number(n) < 1 || Number(n) > 1024)
    throw new UsageError(`partitions resize: expected a count from 1 to 1024, got ${JSON.stringify(n)}`);
  const partitions = Number(n);
  const settings = loadSettings();
  const { layoutStatus, resizePartitions, ResizeError } = await import("../../operations/index.ts");
  return runEffect(
    Effect.scoped(
      Effect.gen(function* () {
        const sql = yield* ledgerResource(settings, "tally-partitions");
        const nats = yield* natsTopology(settings, "tally-partitions");
        const deps = { sql, jsm: nats.jsm, topology: nats.topology };
        if (opts.dryRun) {
          const s = yield* fromPromise(() => layoutStatus(deps));
          if (opts.format === "json") writeJson({ ...s, resizeTo: partitions });
          else {
            printStatus(s);
            process.stdout.write(
              `dry run: would resize ${s.applied.partitions} → ${partitions} partitions (generation ${s.applied.generation + 1}); nothing changed\n`,
            );
          }
          return EXIT.ok;
        }
        return yield* fromPromise(async () => {
          try {
            const row = await resizePartitions(deps, partitions, {
              timeoutMs: opts.timeout * 1000,
              onStep: (step) => opts.format !== "json" && process.stdout.write(`${step}\n`),
            });
            if (opts.format === "json") writeJson(row);
            return EXIT.ok;
          } catch (error) {
            if (error instanceof ResizeError) throw new CommandError(`partitions resize: ${error.message}`, { cause: error });
            throw error;
          }
        });
      }),
    ),
  );
}
