import { Readable } from "node:stream";
import type { FastifyReply } from "fastify";
import { EXPORT_CURSOR_HEADER, EXPORT_SUMMARY_TRAILER } from "../../ledger/index.ts";

/** An export opened on its snapshot (the ledger's or the GL journal's): the file a chunk at a time, its summary as the return value. */
interface OpenExport<S> {
  readonly nextCursor: string;
  readonly chunks: AsyncGenerator<string, S>;
  close(): Promise<void>;
}

/**
 * Streams an export as the response: CSV or NDJSON as it is read (the socket's backpressure paces
 * the reads), the resume cursor in the `Tally-Export-Cursor` header, the summary as the
 * `Tally-Export-Summary` trailer after the last row. A client that goes away ends the snapshot.
 */
export function sendExport<S>(reply: FastifyReply, exp: OpenExport<S>, format: "csv" | "ndjson", filename: string): FastifyReply {
  let summary: S | null = null;
  const stream = Readable.from(
    (async function* () {
      summary = yield* exp.chunks;
    })(),
    { objectMode: false, highWaterMark: 1 },
  );
  reply.raw.on("close", () => {
    stream.destroy();
    void exp.close();
  });
  reply.header("content-type", format === "csv" ? "text/csv; charset=utf-8" : "application/x-ndjson");
  reply.header("content-disposition", `attachment; filename="${filename}.${format}"`);
  reply.header(EXPORT_CURSOR_HEADER, exp.nextCursor);
  reply.trailer(EXPORT_SUMMARY_TRAILER, async () => JSON.stringify(summary));
  return reply.send(stream);
}
