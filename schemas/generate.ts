/** `npm run schemas`: writes the JSON Schema of every NATS payload to schemas/nats/ (see registry.ts). */
import { mkdir, readdir, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { natsJsonSchemas } from "./registry.ts";

const dir = path.join(path.dirname(fileURLToPath(import.meta.url)), "nats");
await mkdir(dir, { recursive: true });
const schemas = natsJsonSchemas();
for (const file of await readdir(dir)) if (!schemas.has(file.replace(/\.json$/, ""))) await rm(path.join(dir, file));
for (const [name, text] of schemas) await writeFile(path.join(dir, `${name}.json`), text);
console.log(`wrote ${schemas.size} schemas to ${path.relative(process.cwd(), dir) || "."}`);
