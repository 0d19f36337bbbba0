/**
 * Examples from JSON schemas (as the OpenAPI document states them), for the API fuzzer: a valid value
 * of a schema, and a value that breaks it in one place. Seeded, so a failure replays from its seed.
 * Covers what Tally's routes use: types, enums, min/max, lengths, item counts, date-time, and patterns
 * made of literals and character classes with quantifiers (`^[A-Za-z0-9_.-]{1,200}$`, `^r_[0-9a-f]{32}$`).
 */

/** A small seeded PRNG (mulberry32). */
export function prng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number) => Math.floor(next() * n);
  const between = (lo: number, hi: number) => lo + int(hi - lo + 1);
  const pick = <T>(xs: ReadonlyArray<T>): T => xs[int(xs.length)]!;
  return { next, int, between, pick };
}
export type Rand = ReturnType<typeof prng>;

export type JsonSchema = Record<string, unknown> & {
  type?: string | ReadonlyArray<string>;
  enum?: ReadonlyArray<unknown>;
  properties?: Record<string, JsonSchema>;
  required?: ReadonlyArray<string>;
  items?: JsonSchema;
  anyOf?: ReadonlyArray<JsonSchema>;
  oneOf?: ReadonlyArray<JsonSchema>;
  $ref?: string;
};

/** Values a field of this name should usually take, so that valid examples reach past "not found". */
export type Hints = Readonly<Record<string, ReadonlyArray<unknown>>>;

/** Resolves `#/components/schemas/…` references against the document. */
export const resolver =
  (doc: { components?: { schemas?: Record<string, JsonSchema> } }) =>
  (s: JsonSchema): JsonSchema => {
    let out = s;
    for (let i = 0; out.$ref && i < 10; i++) out = doc.components?.schemas?.[out.$ref.replace("#/components/schemas/", "")] ?? {};
    return out;
  };

const PRINTABLE = Array.from({ length: 0x7e - 0x21 + 1 }, (_, i) => String.fromCharCode(0x21 + i));

/** Strings matching a pattern of literals and `[classes]` with `{m,n}`, `{n}`, `+`, `*`, `?` (null: a pattern beyond that). */
export function fromPattern(pattern: string, r: Rand): string | null {
  let p = pattern;
  if (p.startsWith("^")) p = p.slice(1);
  if (p.endsWith("$")) p = p.slice(0, -1);
  let out = "";
  let i = 0;
  const escaped = (c: string): string => {
    if (c === "x") {
      const code = parseInt(p.slice(i + 1, i + 3), 16);
      i += 2;
      return String.fromCharCode(code);
    }
    if (c === "d") return "0123456789"[r.int(10)]!;
    return c;
  };
  while (i < p.length) {
    let choices: Array<string>;
    const c = p[i]!;
    if (c === "(" || c === "|" || c === ")") return null;
    if (c === "[") {
      const chars: Array<string> = [];
      i++;
      const item = (): string => {
        const ch = p[i]!;
        if (ch === "\\") {
          i++;
          return escaped(p[i]!);
        }
        return ch;
      };
      while (p[i] !== "]") {
        const from = item();
        i++;
        if (p[i] === "-" && p[i + 1] !== "]") {
          i++;
          const to = item();
          i++;
          for (let k = from.charCodeAt(0); k <= to.charCodeAt(0); k++) chars.push(String.fromCharCode(k));
        } else chars.push(from);
      }
      i++;
      choices = chars;
    } else if (c === "\\") {
      i++;
      const e = p[i]!;
      choices = e === "d" ? [..."0123456789"] : [escaped(e)];
      i++;
    } else if (c === ".") {
      choices = PRINTABLE;
      i++;
    } else {
      choices = [c];
      i++;
    }
    let [lo, hi] = [1, 1];
    const q = p[i];
    if (q === "{") {
      const end = p.indexOf("}", i);
      const [a, b] = p.slice(i + 1, end).split(",");
      lo = Number(a);
      hi = b === undefined ? lo : b === "" ? lo + 8 : Number(b);
      i = end + 1;
    } else if (q === "+" || q === "*" || q === "?") {
      [lo, hi] = q === "+" ? [1, 12] : q === "*" ? [0, 12] : [0, 1];
      i++;
    }
    // Mostly short: a long string is one case among many, not the usual one.
    const n = r.next() < 0.8 ? r.between(lo, Math.min(hi, lo + 12)) : r.between(lo, hi);
    for (let k = 0; k < n; k++) out += r.pick(choices);
  }
  return out;
}

const isoDate = (r: Rand): string => {
  const d = new Date(Date.UTC(r.between(2020, 2030), r.int(12), 1 + r.int(28), r.int(24), r.int(60), r.int(60))).toISOString();
  return r.next() < 0.5 ? d : d.replace(".000Z", "Z");
};

/** A value the schema accepts (the caller checks it with a validator and asks again when it does not). */
export function validSample(schema: JsonSchema, name: string, r: Rand, deref: (s: JsonSchema) => JsonSchema, hints: Hints, depth = 0): unknown {
  const s = deref(schema);
  const hinted = hints[name];
  if (hinted && r.next() < 0.8) return r.pick(hinted);
  if (s.enum) return r.pick(s.enum);
  if (s.anyOf ?? s.oneOf) return validSample(r.pick((s.anyOf ?? s.oneOf)!), name, r, deref, hints, depth);
  const types = s.type === undefined ? ["string"] : Array.isArray(s.type) ? s.type : [s.type as string];
  const type = types.length > 1 && r.next() < 0.1 && types.includes("null") ? "null" : (types.find((t) => t !== "null") ?? "null");
  switch (type) {
    case "null":
      return null;
    case "boolean":
      return r.next() < 0.5;
    case "integer":
    case "number": {
      const lo = typeof s.minimum === "number" ? s.minimum : 0;
      const hi = typeof s.maximum === "number" ? s.maximum : lo + 1000;
      return r.next() < 0.8 ? r.between(lo, Math.min(hi, lo + 20)) : r.between(lo, Math.min(hi, Number.MAX_SAFE_INTEGER - 1));
    }
    case "array": {
      const lo = typeof s.minItems === "number" ? s.minItems : 0;
      const hi = typeof s.maxItems === "number" ? s.maxItems : lo + 3;
      return Array.from({ length: r.between(lo, Math.min(hi, lo + 3)) }, () => validSample(s.items ?? {}, name, r, deref, hints, depth + 1));
    }
    case "object": {
      const out: Record<string, unknown> = {};
      const required = new Set(s.required ?? []);
      for (const [k, v] of Object.entries(s.properties ?? {}))
        if (required.has(k) || r.next() < 0.5) out[k] = validSample(v, k, r, deref, hints, depth + 1);
      return out;
    }
    default: {
      if (s.format === "date-time") return isoDate(r);
      if (typeof s.pattern === "string") {
        const m = fromPattern(s.pattern, r);
        if (m !== null) return m;
      }
      const lo = typeof s.minLength === "number" ? s.minLength : 1;
      const hi = typeof s.maxLength === "number" ? s.maxLength : lo + 12;
      return Array.from({ length: r.between(lo, Math.min(hi, lo + 12)) }, () => r.pick([..."abcXYZ019_-"])).join("");
    }
  }
}

/** Values that break most schemas somewhere: wrong types, edges of ranges, dates Postgres cannot store, odd text. */
export const WEIRD: ReadonlyArray<unknown> = [
  null,
  true,
  false,
  0,
  -1,
  1.5,
  -0,
  1e20,
  -1e20,
  2 ** 53,
  2 ** 63,
  1e308,
  "",
  " ",
  "0",
  "1e20",
  "-1",
  "NaN",
  "Infinity",
  "true",
  "🧀",
  "a".repeat(300),
  "x".repeat(5000),
  "S01\u0000",
  "../../etc/passwd",
  "%00",
  "a:b",
  "a.b",
  "0000-01-01",
  "0000-01-01T00:00:00Z",
  "99999-01-01",
  "2026-02-30T10:00:00Z",
  "-271821-04-20T00:00:00Z",
  "1e20",
  "9223372036854775808",
  "'; drop table ledger_entries; --",
  "<script>",
  [],
  [1],
  {},
  { a: 1 },
];

/** A value that breaks the schema (or at least is odd for it): out of range, wrong type, too long, not the pattern, not in the enum. */
export function invalidSample(schema: JsonSchema, r: Rand, deref: (s: JsonSchema) => JsonSchema): unknown {
  const s = deref(schema);
  const specific: Array<unknown> = [];
  if (typeof s.maximum === "number") specific.push(s.maximum + 1, s.maximum * 1e6, 1e20);
  if (typeof s.minimum === "number") specific.push(s.minimum - 1, -1e20);
  if (typeof s.maxLength === "number") specific.push("z".repeat(s.maxLength + 1));
  if (typeof s.minLength === "number" && s.minLength > 0) specific.push("");
  if (typeof s.maxItems === "number") specific.push(Array.from({ length: s.maxItems + 1 }, () => ({})));
  if (s.enum) specific.push("not-one-of-them");
  if (s.format === "date-time") specific.push("0000-01-01T00:00:00Z", "2026-13-01T00:00:00Z", "yesterday");
  return specific.length > 0 && r.next() < 0.6 ? r.pick(specific) : r.pick(WEIRD);
}
