/** An expected failure of a request: its HTTP status, a machine-readable code and a sentence. */
export class ApiError extends Error {
  override readonly name = "ApiError";
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly extra: Readonly<Record<string, unknown>> = {},
  ) {
    super(message);
  }
}

/** The body of every error reply. */
export const ErrorSchema = {
  $id: "Error",
  type: "object",
  required: ["error", "message"],
  properties: {
    error: { type: "string", description: "machine-readable code: invalid_request, unauthorized, forbidden, not_found, insufficient_stock …" },
    message: { type: "string" },
    issues: {
      type: "array",
      items: { type: "object", required: ["path", "message"], properties: { path: { type: "string" }, message: { type: "string" } } },
    },
  },
  additionalProperties: true,
} as const;

export const errorRef = { $ref: "Error#" } as const;

/** Error replies a route may give, for its response schema. */
export const errors = (...statuses: ReadonlyArray<number>) => Object.fromEntries(statuses.map((s) => [s, errorRef]));
