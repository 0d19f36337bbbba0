import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    // One real Postgres and one real nats-server for the whole run (tests talk to real servers, never mocks).
    globalSetup: ["test/support/globalSetup.ts"],
    include: ["test/**/*.test.ts", "actors/**/*.test.ts", "ledger/**/*.test.ts", "cdc/**/*.test.ts", "src/**/*.test.ts", "bench/**/*.test.ts"],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    pool: "forks",
    // Two cores: at most two test files at once.
    maxWorkers: 2,
    reporters: ["default", "./test/support/summaryReporter.ts"],
  },
});
