/** The public surface of src/http/: other folders import only from here. */
export { SCOPES, decodeTokens, loadTokens, newToken, sha256Hex } from "./auth.ts";
export type { ApiToken } from "./auth.ts";
export { buildApp, drainApp } from "./server.ts";
export { ApiError } from "./errors.ts";
export type { ApiMetrics } from "./metrics.ts";
