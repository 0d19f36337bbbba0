#!/usr/bin/env node
// Runs the TypeScript CLI through tsx's loader, so `tally` works right after `npm ci` with no build step.
import { register } from "tsx/esm/api";
register();
await import("../src/app/cli.ts");
