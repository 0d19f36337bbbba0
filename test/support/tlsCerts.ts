import { execFileSync } from "node:child_process";
import { chmodSync, chownSync, writeFileSync } from "node:fs";
import { join } from "node:path";

/** A certificate authority made with openssl in `dir`. */
export interface TestCa {
  readonly certFile: string;
  readonly keyFile: string;
}

const openssl = (args: ReadonlyArray<string>, cwd: string) => execFileSync("openssl", args, { cwd, stdio: ["ignore", "pipe", "pipe"] });
const EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

/** A self-signed CA named `name` (files `<name>.crt`, `<name>.key`). */
export function makeCa(dir: string, name: string): TestCa {
  openssl(["req", "-x509", ...EC, "-keyout", `${name}.key`, "-out", `${name}.crt`, "-days", "2", "-subj", `/CN=${name}`], dir);
  return { certFile: join(dir, `${name}.crt`), keyFile: join(dir, `${name}.key`) };
}

/**
 * A server certificate for 127.0.0.1 and localhost signed by `ca` (files `<name>.crt`, `<name>.key`).
 * The key is readable by `owner` only (Postgres refuses a key others can read).
 */
export function makeServerCert(dir: string, ca: TestCa, name: string, owner?: { uid: number; gid: number }): TestCa {
  openssl(["req", ...EC, "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", "/CN=localhost"], dir);
  writeFileSync(join(dir, `${name}.ext`), "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
  openssl(
    [
      "x509",
      "-req",
      "-in",
      `${name}.csr`,
      "-CA",
      ca.certFile,
      "-CAkey",
      ca.keyFile,
      "-CAcreateserial",
      "-out",
      `${name}.crt`,
      "-days",
      "2",
      "-extfile",
      `${name}.ext`,
    ],
    dir,
  );
  const keyFile = join(dir, `${name}.key`);
  chmodSync(keyFile, 0o600);
  if (owner !== undefined) {
    chownSync(keyFile, owner.uid, owner.gid);
    chownSync(join(dir, `${name}.crt`), owner.uid, owner.gid);
  }
  return { certFile: join(dir, `${name}.crt`), keyFile };
}
