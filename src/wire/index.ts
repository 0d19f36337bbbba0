/** The public surface of src/wire/: other folders import only from here. */
export {
  connectNats,
  ensureBucket,
  ensureStream,
  ensureTopology,
  isClustered,
  isNotFound,
  loadLayout,
  ReplicasError,
  topologyOptions,
} from "./nats.ts";
export type { ReplicaCheck, UnderReplicated } from "./nats.ts";
export type { NatsHandles } from "./nats.ts";
export { RELAY_LEASE_KEY, availabilityKey, outcomesSubject, relaySubject, topology } from "./topology.ts";
export type { PartitionLayout, Topology } from "./topology.ts";
export { decodeEnvelope, encodeEnvelope, envelopeMsgId } from "./envelope.ts";
export { DeadLetter, deadLetter, deadLetterMsgId, publishDeadLetter, withStoredPayload } from "./deadLetters.ts";
export { expireDeadLetters } from "./deadLetterExpiry.ts";
export type { ExpiredDeadLetter } from "./deadLetterExpiry.ts";
export type { DeadLetterIdentity } from "./deadLetters.ts";
export { DeliveryGap, DeliveryOrder } from "./deliveryOrder.ts";
export { LeaseStore } from "./leases.ts";
export type { HeldLease } from "./leases.ts";
export { publishCommands, publishHealth } from "./publisher.ts";
export { OutcomeBatch, OutcomeWaiter } from "./outcomes.ts";
