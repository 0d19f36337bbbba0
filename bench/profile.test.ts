import { describe, expect, it } from "vitest";
import { summarise } from "./profile.ts";

const frame = (id: number, functionName: string, url: string, children: Array<number> = []) => ({
  id,
  callFrame: { functionName, url, lineNumber: 9 },
  children,
});

describe("bench CPU profile summary", () => {
  it("counts each sample for the stage of its nearest frame that has one, and idle apart", () => {
    const profile = {
      nodes: [
        frame(1, "(root)", "", [2, 3, 6, 7]),
        frame(2, "processImmediate", "node:internal/timers", [4]),
        frame(3, "(idle)", ""),
        frame(4, "nextWrite", "file:///app/node_modules/postgres/src/connection.js", [5]),
        frame(5, "writeBuffer", ""), // native socket write, under the Postgres driver: a stage of its own
        frame(6, "planBatch", "file:///app/actors/batch.ts", [8]),
        frame(7, "(garbage collector)", ""),
        frame(8, "decodeUnknown", "file:///app/node_modules/effect/dist/esm/ParseResult.js"),
      ],
      samples: [5, 4, 4, 3, 6, 8, 7, 3],
      timeDeltas: [1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000],
    };
    const s = summarise(profile);
    expect(s.samples).toBe(8);
    expect(s.idle).toBe(0.25);
    expect(s.stages).toEqual([
      { stage: "Postgres driver (queries, results)", share: 0.333 },
      { stage: "socket writes (incl. waiting for a CPU after waking the peer)", share: 0.167 },
      { stage: "worker apply (decide, plan, hash)", share: 0.167 },
      { stage: "command schema checks (Effect Schema)", share: 0.167 },
      { stage: "garbage collection", share: 0.167 },
    ]);
    expect(s.hottest[0]).toEqual({ fn: "nextWrite (postgres/src/connection.js:10)", share: 0.333 });
  });
});
