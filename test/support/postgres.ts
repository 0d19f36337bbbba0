// The server harness moved to src/app/devStack/ (`tally dev` starts these servers too).
export { startPostgres } from "../../src/app/devStack/index.ts";
export type { PostgresServer } from "../../src/app/devStack/index.ts";

import { connectPostgres } from "../../src/platform/db.ts";

/**
 * A session of its own holding a lock, as a stuck admin transaction would: `statement` runs in a
 * transaction left open until `release()`. Resolves once the lock is held.
 */
export async function holdLock(databaseUrl: string, statement: string): Promise<{ release: () => Promise<void> }> {
  const locker = connectPostgres(databaseUrl, { max: 1, application: "test-lock-holder" });
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  let locked!: () => void;
  const isLocked = new Promise<void>((r) => (locked = r));
  const holding = locker.begin(async (tx) => {
    await tx.unsafe(statement);
    locked();
    await released;
  });
  await Promise.race([isLocked, holding]).catch(async (err: unknown) => {
    await locker.end({ timeout: 5 });
    throw err;
  });
  return {
    release: async () => {
      release();
      await holding.catch(() => {});
      await locker.end({ timeout: 5 });
    },
  };
}
