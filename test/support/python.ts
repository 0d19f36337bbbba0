import { execFile } from "node:child_process";
import { promisify } from "node:util";

/** Runs a program to completion: its stdout and stderr (rejects on a non-zero exit). */
export const run = promisify(execFile);

/**
 * The Python that finance would use: the first of `python3` on PATH and Debian's own interpreter
 * that has pandas (a pyenv `python3` first on PATH does not see Debian's python3-pandas, which
 * `.ci/run` installs when neither has it).
 */
export async function pythonWithPandas(): Promise<string> {
  for (const candidate of ["python3", "/usr/bin/python3"]) {
    try {
      await run(candidate, ["-c", "import pandas"]);
      return candidate;
    } catch {
      // Not this one: try the next.
    }
  }
  throw new Error("no python3 with pandas (install Debian's python3-pandas, as .ci/run does)");
}
