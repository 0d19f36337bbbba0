/**
 * Every payload Tally puts on NATS, by the file its JSON Schema is shipped in (`schemas/nats/`).
 * The JSON Schemas are generated from the Effect schemas the code builds these payloads with:
 * `npm run schemas` writes them, and test/natsSchemas.test.ts fails when a committed file differs.
 */
import { JSONSchema, Schema } from "effect";
import { AnchorMessage, RelayRound } from "../src/channels/index.ts";
import { AvailabilityValue, CatalogValue, Command, EVENT_SCHEMAS } from "../src/contract/index.ts";
import { PosPayload } from "../src/ingest/index.ts";
import { DeadLetter, OutcomeBatch } from "../src/wire/index.ts";

/** The body of a message on the commands subjects (`tally.<env>.cmd.<partition>`): one partition's commands, in order. */
const CommandEnvelope = Schema.Struct({ v: Schema.Literal(1), commands: Schema.Array(Command) }).annotations({
  title: "Command envelope",
  description: "A batch of canonical commands of one partition, in order",
});

const PAYLOADS: Readonly<Record<string, Schema.Schema.Any>> = {
  availability: AvailabilityValue,
  catalog: CatalogValue,
  ...Object.fromEntries(Object.entries(EVENT_SCHEMAS).map(([type, schema]) => [`event.${type}`, schema])),
  "dead-letter": DeadLetter,
  anchors: AnchorMessage,
  outcomes: OutcomeBatch,
  relay: RelayRound,
  commands: CommandEnvelope,
  pos: PosPayload,
};

/** File name (without `.json`) → its JSON Schema text, as committed. */
export function natsJsonSchemas(): Map<string, string> {
  const out = new Map<string, string>();
  for (const [name, schema] of Object.entries(PAYLOADS)) {
    const json = { $id: `https://tally.example/schemas/nats/${name}.json`, ...withoutUnknownIds(JSONSchema.make(schema)) };
    out.set(name, `${JSON.stringify(json, null, 2)}\n`);
  }
  return out;
}

/**
 * Effect writes "any value" as `{"$id": "/schemas/unknown", "title": "unknown"}`; a document using it
 * twice would give one `$id` to two places, which validators refuse. Any value is `{}` (with its description).
 */
function withoutUnknownIds<T>(node: T): T {
  if (Array.isArray(node)) return node.map(withoutUnknownIds) as T;
  if (typeof node !== "object" || node === null) return node;
  const entries = Object.entries(node).map(([k, v]) => [k, withoutUnknownIds(v)] as const);
  const unknown = entries.some(([k, v]) => k === "$id" && v === "/schemas/unknown");
  return Object.fromEntries(unknown ? entries.filter(([k]) => k !== "$id" && k !== "title") : entries) as T;
}
