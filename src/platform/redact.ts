/**
 * Masks secrets in text meant for people or logs: the password in `scheme://user:password@host`,
 * a NATS token in `nats://token@host`, and the values of query parameters and `key=value` pairs
 * whose names say they are secret (password, token, secret, key, signature …). Everything else is
 * left as it was, so a masked URL still says which server and user it is.
 */
export function maskSecrets(text: string): string {
  return text
    .replace(/\b([a-z][a-z0-9+.-]*:\/\/)([^\s/@:]*):([^\s/@]*)@/gi, (_, scheme: string, user: string) => `${scheme}${user}:${MASK}@`)
    .replace(/\b((?:nats|tls|ws|wss):\/\/)([^\s/@:]+)@/gi, (_, scheme: string) => `${scheme}${MASK}@`)
    .replace(SECRET_PAIR, (_, name: string, sep: string) => `${name}${sep}${MASK}`);
}

/** What stands in for a secret. */
export const MASK = "***";

const SECRET_NAMES = "password|passwd|pwd|pass|token|access_token|auth_token|api[_-]?key|secret|client_secret|sslpassword|signature|sig";
/** `name=value` (query strings, libpq DSNs) and `"name":"value"` (JSON) with a secret-sounding name. */
const SECRET_PAIR = new RegExp(`\\b(${SECRET_NAMES})(=|"\\s*:\\s*")(?!\\*\\*\\*)[^\\s&"',;]+`, "gi");
