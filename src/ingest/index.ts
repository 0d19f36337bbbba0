/** The public surface of src/ingest/: other folders import only from here. */
export { submit } from "./submit.ts";
export { InvalidBatch, PosIngest } from "./posIngest.ts";
export { MAX_AMOUNT, MAX_BATCH_LINES, MAX_LINES, MAX_TRANSACTIONS, PosPayload, payloadHash } from "./posTransaction.ts";
export { PosSubscriber } from "./posSubscriber.ts";
