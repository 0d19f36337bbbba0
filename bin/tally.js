#!/usr/bin/env node
// The `tally` command. The command line is parsed in plain JavaScript (help and --version answer at
// once); the command that runs registers tsx's loader and imports its TypeScript module, so `tally`
// works right after `npm ci` with no build step.
import { main } from "../src/app/cli/index.js";

process.exitCode = await main(process.argv.slice(2));
