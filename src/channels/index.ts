/** The public surface of src/channels/: other folders import only from here. */
export { OutboxRelay, relaySubject } from "./relay.ts";
export type { RelayRound } from "./relay.ts";
export { AnchorPublisher, appendAnchorFile, publishAnchors, readAnchorFile, readNatsAnchors } from "./anchors.ts";
export { WEBHOOK_ORIGIN, WebhookDispatcher, resendCurrent, usableWebhookTargets, webhookTargets } from "./webhooks.ts";
export type { WebhookTarget } from "./webhooks.ts";
