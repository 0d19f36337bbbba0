import type { TestProject } from "vitest/node";
import { startNats } from "./nats.ts";
import { startPostgres } from "./postgres.ts";

declare module "vitest" {
  export interface ProvidedContext {
    /** Superuser URL of the run's shared Postgres (database `postgres`). */
    pgAdminUrl: string;
    /** URL of the run's shared JetStream-enabled nats-server. */
    natsUrl: string;
  }
}

/**
 * Vitest global setup: one Postgres and one nats-server for the whole run,
 * shared by every test file (each file then makes its own database and
 * stream names through `testContext()`). The returned teardown destroys both.
 */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  // Every test file that runs CDC makes its own slots (a source per demo database, a slot per source)
  // in this one shared server, several files at a time: more than `tally dev`'s 20.
  const [pg, nats] = await Promise.allSettled([startPostgres({ settings: { max_replication_slots: "64", max_wal_senders: "64" } }), startNats()]);
  const teardown = async (): Promise<void> => {
    await Promise.allSettled([
      pg.status === "fulfilled" ? pg.value.destroy() : undefined,
      nats.status === "fulfilled" ? nats.value.destroy() : undefined,
    ]);
  };
  // On failure, do not leave the server that did start running.
  if (pg.status === "rejected") {
    await teardown();
    throw pg.reason;
  }
  if (nats.status === "rejected") {
    await teardown();
    throw nats.reason;
  }
  project.provide("pgAdminUrl", pg.value.url());
  project.provide("natsUrl", nats.value.url);
  return teardown;
}
