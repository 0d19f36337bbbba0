/**
 * JSON text from outside (HTTP bodies, NATS POS messages) is checked for nesting before it is parsed:
 * a body nested thousands deep parses, but every recursive walk of it afterwards (hashing, logging,
 * serialising an error) overflows the stack, which would surface as a server error.
 */

/** How deep a JSON text from a client may nest its arrays and objects (a POS batch needs 5). */
export const MAX_JSON_DEPTH = 32;

/** The input is not JSON, or nests too deep: the client's mistake, with the field (`body`) it is about. */
export class JsonTextError extends Error {
  override readonly name = "JsonTextError";
  constructor(readonly problem: string) {
    super(`body: ${problem}`);
  }
}

/**
 * The deepest nesting of arrays and objects in a JSON text, scanning at most until it exceeds `max`
 * (brackets inside strings do not count). Linear in the text, no recursion, no allocation.
 */
export function jsonDepthExceeds(text: string, max: number): boolean {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 92 /* \ */) i++;
      else if (c === 34 /* " */) inString = false;
    } else if (c === 34) inString = true;
    else if (c === 91 /* [ */ || c === 123 /* { */) {
      if (++depth > max) return true;
    } else if (c === 93 /* ] */ || c === 125 /* } */) depth--;
  }
  return false;
}

/** Parses JSON text from a client; throws JsonTextError (never a RangeError) when it is not JSON or nests too deep. */
export function parseJsonText(text: string, maxDepth = MAX_JSON_DEPTH): unknown {
  if (jsonDepthExceeds(text, maxDepth)) throw new JsonTextError(`JSON nested deeper than ${maxDepth} levels`);
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new JsonTextError(`not valid JSON: ${(error as Error).message}`);
  }
}
