import pg from "pg";

/**
 * pgoutput values reach the mapping in Postgres's own text form. pg-logical-replication parses
 * column values with the `pg` package's global type parsers, which would turn numeric into a
 * lossy float-free string (fine) but timestamps into JS Dates (losing microseconds and the zone)
 * and int8 into strings. Tally decodes every value deliberately in RowView instead, so the parsers
 * of the types it reads are set to identity. `pg` is used by nothing else in Tally (the ledger uses
 * postgres.js), so this global setting affects only replication.
 */
const TEXT_OIDS = [
  16, // bool
  20, // int8
  21, // int2
  23, // int4
  26, // oid
  700, // float4
  701, // float8
  1082, // date
  1083, // time
  1114, // timestamp
  1184, // timestamptz
  1186, // interval
  1266, // timetz
  1700, // numeric
  114, // json
  3802, // jsonb
];

let installed = false;
export function keepValuesAsText(): void {
  if (installed) return;
  for (const oid of TEXT_OIDS) pg.types.setTypeParser(oid, (v: string) => v);
  installed = true;
}

/** Turns a value of a pgoutput tuple into the mapping's text form (binary values become hex text). */
export function toText(v: unknown): string | null | undefined {
  if (v === null || v === undefined) return v as null | undefined;
  if (typeof v === "string") return v;
  if (Buffer.isBuffer(v) || v instanceof Uint8Array) return `\\x${Buffer.from(v).toString("hex")}`;
  return String(v);
}
