/** A backslash escape other than `\"` and `\\`: JSON wrote a control character or a lone surrogate. */
const OTHER_ESCAPE = /\\[^"\\]/;

const element = (v: string | number | null): string =>
  v === null ? "NULL" : typeof v === "number" ? String(v) : `"${v.replaceAll("\\", "\\\\").replaceAll('"', '\\"')}"`;

/**
 * A column of a batch as one Postgres array literal (`{"a","b",NULL}`), for `${…}::text[]` and the
 * like (sent as one text parameter, read by the cast). `JSON.stringify` (native) escapes exactly
 * what a double-quoted array element needs (`"` and `\`), writes `null` where Postgres reads NULL,
 * and numbers bare: the literal is its output with braces for brackets, several times cheaper than
 * postgres.js serialising the array element by element. A value JSON escapes otherwise (a control
 * character, a lone surrogate) would be read differently by Postgres: such a column is written
 * element by element, quoting only `"` and `\`, as the driver does.
 *
 * Elements: strings, safe integers and null only.
 */
export function arrayParam(values: ReadonlyArray<string | number | null>): string {
  const json = JSON.stringify(values);
  if (json.includes("\\") && OTHER_ESCAPE.test(json)) return `{${values.map(element).join(",")}}`;
  return `{${json.slice(1, -1)}}`;
}
