/** The public surface of src/channels/: other folders import only from here. */
export { OutboxRelay, RelayRound, relaySubject } from "./relay.ts";
export { AnchorMessage, AnchorPublisher, appendAnchorFile, publishAnchors, readAnchorFile, readNatsAnchors } from "./anchors.ts";
export { WEBHOOK_ORIGIN, WebhookDispatcher, resendCurrent, usableWebhookTargets, webhookTargets } from "./webhooks.ts";
export type { WebhookFeed, WebhookTarget } from "./webhooks.ts";
