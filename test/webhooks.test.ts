import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodeCommand, type Command } from "../src/contract/command.ts";
import { decodeTallyConfig } from "../src/platform/configFile.ts";
import { listDeadLetters, replayDeadLetter } from "../src/operations/deadLetterReplay.ts";
import { publishCommands } from "../src/wire/publisher.ts";
import {
  DELIVERY_HEADER,
  SIGNATURE_HEADER,
  signWebhook,
  usableWebhookTargets,
  verifyWebhook,
  webhookTargets,
  type WebhookBody,
} from "../src/channels/webhooks.ts";
import { testContext, type TestContext } from "./support/context.ts";
import { eventually, harness, startInProcess, stealDeliveries, type Harness } from "./support/tally.ts";
import { settle } from "./apiSupport.ts";

/** An answer that never comes. */
const HANG = -1;

/** A webhook receiver: per path, what it answers and what it got. */
class Receiver {
  readonly got = new Map<string, Array<{ body: WebhookBody; raw: string; signature: string; delivery: string }>>();
  /** Per path: answer with this status (default 200); a function can decide per request. */
  readonly answer = new Map<string, (n: number) => number>();
  server!: Server;
  url = "";

  async start(): Promise<void> {
    this.server = createServer(async (req: IncomingMessage, res) => {
      let raw = "";
      for await (const chunk of req) raw += chunk;
      const path = req.url ?? "/";
      const list = this.got.get(path) ?? [];
      this.got.set(path, list);
      list.push({
        body: JSON.parse(raw) as WebhookBody,
        raw,
        signature: String(req.headers[SIGNATURE_HEADER]),
        delivery: String(req.headers[DELIVERY_HEADER]),
      });
      const status = (this.answer.get(path) ?? (() => 200))(list.length);
      if (status === HANG) return; // no answer: the sender's timeout ends it
      res.statusCode = status;
      res.end();
    });
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  /** The latest availability per SKU that a path accepted (2xx answers only). */
  accepted(path: string): Map<string, { available: number; version: number }> {
    const out = new Map<string, { available: number; version: number }>();
    const answer = this.answer.get(path) ?? (() => 200);
    (this.got.get(path) ?? []).forEach((r, i) => {
      const status = answer(i + 1);
      if (status === HANG || status >= 300) return;
      for (const item of r.body.items) {
        const prev = out.get(item.sku);
        if (!prev || prev.version < item.version) out.set(item.sku, { available: Number(item.available), version: item.version });
      }
    });
    return out;
  }
}

const SECRET = "s3cret-for-webhook-tests";
let ctx: TestContext;
let h: Harness;
const receiver = new Receiver();

const webhook = (path: string) => ({
  url: `${receiver.url}${path}`,
  lingerMs: 100,
  backoffMs: 50,
  maxBackoffMs: 200,
  maxAttempts: 3,
  timeoutMs: 2000,
});
const configFor = () =>
  decodeTallyConfig({
    channels: {
      hook_ok: { locations: ["DC1"], webhook: webhook("/ok") },
      hook_down: { locations: ["DC1"], webhook: webhook("/down") },
      hook_flaky: { locations: ["DC1"], webhook: { ...webhook("/flaky"), maxAttempts: 5 } },
      plain: { locations: ["DC1"] },
    },
  });
const env = { TALLY_WEBHOOK_HOOK_OK_SECRET: SECRET, TALLY_WEBHOOK_HOOK_DOWN_SECRET: SECRET, TALLY_WEBHOOK_HOOK_FLAKY_SECRET: SECRET };

let n = 0;
function receive(sku: string, qty: number): Command {
  const d = decodeCommand({
    id: `wh:${++n}`,
    type: "receive",
    sku,
    location: "DC1",
    qty,
    source: { system: "erp", ref: `r${n}` },
    occurredAt: new Date().toISOString(),
  });
  if (d._tag === "Left") throw d.left;
  return d.right;
}

beforeAll(async () => {
  ctx = await testContext();
  h = await harness(ctx);
  await receiver.start();
  Object.assign(process.env, env);
  // The dead endpoint first hangs (each attempt waits out the 2 s timeout), then answers 503.
  receiver.answer.set("/down", (k) => (k <= 2 ? HANG : 503));
  // The flaky endpoint refuses the first two requests.
  receiver.answer.set("/flaky", (k) => (k <= 2 ? 500 : 200));
});
afterAll(async () => {
  await h?.close();
  receiver.server?.close();
});

describe("webhook channels", () => {
  it("refuses to start without a channel's signing secret, naming the variable", () => {
    expect(() => webhookTargets(configFor(), {})).toThrow(/TALLY_WEBHOOK_HOOK_OK_SECRET must hold the signing secret/);
    expect(() => webhookTargets(configFor(), { ...env, TALLY_WEBHOOK_HOOK_DOWN_SECRET: "short" })).toThrow(
      /TALLY_WEBHOOK_HOOK_DOWN_SECRET: expected a signing secret of at least 16 characters/,
    );
    expect(() => decodeTallyConfig({ channels: { x: { locations: ["DC1"], webhook: { url: "ftp://x" } } } })).toThrow(
      /channels\.x\.webhook\.url: expected an http:\/\/ or https:\/\/ URL/,
    );
    expect(usableWebhookTargets(configFor(), { TALLY_WEBHOOK_HOOK_OK_SECRET: SECRET }).map((t) => t.channel)).toEqual(["hook_ok"]);
  });

  it("signs with HMAC-SHA256 over the timestamp and body; a receiver rejects a changed body, another secret or an old signature", () => {
    const body = JSON.stringify({ channel: "c", deliveryId: "d", items: [] });
    const sig = signWebhook(SECRET, body);
    expect(sig).toMatch(/^t=\d+,v1=[0-9a-f]{64}$/);
    expect(verifyWebhook(SECRET, sig, body)).toBe(true);
    expect(verifyWebhook(SECRET, sig, `${body} `)).toBe(false);
    expect(verifyWebhook("another-secret-of-16", sig, body)).toBe(false);
    expect(verifyWebhook(SECRET, signWebhook(SECRET, body, new Date(Date.now() - 3600_000)), body)).toBe(false);
    expect(verifyWebhook(SECRET, undefined, body)).toBe(false);
  });

  it("POSTs each channel's changes, batched and signed; a dead endpoint is retried, then dead-lettered, and never holds up the others; a flaky one gets the same delivery until it accepts", async () => {
    const tally = await startInProcess(ctx, ["worker", "relay"], { leaseTtlMs: 3000 }, configFor());
    try {
      expect(tally.webhooks.map((w) => w.channel).sort()).toEqual(["hook_down", "hook_flaky", "hook_ok"]);
      // 60 receipts over 20 SKUs, published in 3 waves.
      const expected = new Map<string, number>();
      for (let wave = 0; wave < 3; wave++) {
        const commands = Array.from({ length: 20 }, (_, i) => receive(`WH-${i}`, i + 1));
        for (const c of commands) expected.set(c.sku, (expected.get(c.sku) ?? 0) + (c as { qty: number }).qty);
        await publishCommands(h.nats.js, h.topology, commands);
        await settle(
          h,
          commands.map((c) => c.id),
        );
      }
      await eventually(
        "the healthy endpoint to have every SKU's latest availability",
        async () => {
          const got = receiver.accepted("/ok");
          return [...expected].every(([sku, qty]) => got.get(sku)?.available === qty);
        },
        20_000,
      );
      // Not held up: the healthy channel has everything while the dead one is still on its first batch's attempts.
      const early = (await listDeadLetters(h.nats, h.topology, "webhook")).filter((l) => (l.context as { channel?: string }).channel === "hook_down");
      expect(early).toEqual([]);
      const ok = receiver.got.get("/ok")!;
      // Batched: far fewer requests than changes, each signed and identified.
      expect(ok.length).toBeLessThan(60);
      for (const r of ok) {
        expect(verifyWebhook(SECRET, r.signature, r.raw)).toBe(true);
        expect(r.delivery).toBe(r.body.deliveryId);
        expect(r.body.channel).toBe("hook_ok");
        expect(new Set(r.body.items.map((i) => i.sku)).size).toBe(r.body.items.length); // the latest per SKU only
      }

      // The flaky endpoint: refused twice, then got the very same delivery, and everything after it.
      await eventually(
        "the flaky endpoint to catch up",
        async () => {
          const got = receiver.accepted("/flaky");
          return [...expected].every(([sku, qty]) => got.get(sku)?.available === qty);
        },
        20_000,
      );
      const flaky = receiver.got.get("/flaky")!;
      expect(flaky.length).toBeGreaterThanOrEqual(3);
      expect(flaky[0]!.delivery).toBe(flaky[1]!.delivery);
      expect(flaky[2]!.delivery).toBe(flaky[0]!.delivery);
      expect(flaky[2]!.raw).toBe(flaky[0]!.raw);

      // The dead endpoint: each batch tried 3 times (same delivery id), then dead-lettered with its payload.
      await eventually(
        "the dead endpoint's batches to be dead-lettered",
        async () => {
          const letters = (await listDeadLetters(h.nats, h.topology, "webhook")).filter(
            (l) => (l.context as { channel?: string }).channel === "hook_down",
          );
          const skus = new Set(letters.flatMap((l) => (l.payload as WebhookBody).items.map((i) => i.sku)));
          return [...expected.keys()].every((s) => skus.has(s));
        },
        30_000,
      );
      const letters = (await listDeadLetters(h.nats, h.topology, "webhook")).filter(
        (l) => (l.context as { channel?: string }).channel === "hook_down",
      );
      expect(letters[0]!.reason).toMatch(/^webhook hook_down: POST http:\/\/127\.0\.0\.1:\d+\/down failed 3 times, last: HTTP 503$/);
      expect(letters[0]!.payload).toMatchObject({ channel: "hook_down", deliveryId: (letters[0]!.context as { deliveryId: string }).deliveryId });
      console.log(
        `webhooks: ok ${ok.length} requests for 60 changes, flaky ${flaky.length}, down ${receiver.got.get("/down")!.length} attempts → ${letters.length} dead letters`,
      );
      const down = receiver.got.get("/down")!;
      const byDelivery = new Map<string, number>();
      for (const r of down) byDelivery.set(r.delivery, (byDelivery.get(r.delivery) ?? 0) + 1);
      for (const l of letters) expect(byDelivery.get((l.context as { deliveryId: string }).deliveryId)).toBe(3);

      // Replay once the endpoint is fixed: it gets the channel's current availability, and the letter goes.
      receiver.answer.set("/down", () => 200);
      const before = receiver.got.get("/down")!.length;
      for (const l of letters) {
        const r = await replayDeadLetter(
          { sql: h.sql, nats: h.nats, topology: h.topology, sources: new Map(), webhooks: webhookTargets(configFor()) },
          l,
        );
        expect(r).toMatchObject({ ok: true });
      }
      const replayed = receiver.got.get("/down")!.slice(before);
      const latest = new Map(replayed.flatMap((r) => r.body.items.map((i) => [i.sku, i.available] as const)));
      for (const [sku, qty] of expected) expect(latest.get(sku)).toBe(qty);
      expect(
        (await listDeadLetters(h.nats, h.topology, "webhook")).filter((l) => (l.context as { channel?: string }).channel === "hook_down"),
      ).toEqual([]);
    } finally {
      await tally.close();
    }
  }, 90_000);

  it("resumes after a restart from where it stopped: changes made while down arrive, nothing older is re-sent", async () => {
    const got = () => receiver.got.get("/ok")?.length ?? 0;
    const commands = [receive("WH-R1", 4), receive("WH-R2", 6)];
    // Tally is down (the previous test closed it): the changes wait in the stream.
    await publishCommands(h.nats.js, h.topology, commands);
    const requestsBefore = got();
    const tally = await startInProcess(ctx, ["worker", "relay"], { leaseTtlMs: 3000 }, configFor());
    try {
      await eventually(
        "the changes made while down",
        async () => {
          const a = receiver.accepted("/ok");
          return a.get("WH-R1")?.available === 4 && a.get("WH-R2")?.available === 6;
        },
        20_000,
      );
      const after = receiver.got.get("/ok")!.slice(requestsBefore);
      const skus = new Set(after.flatMap((r) => r.body.items.map((i) => i.sku)));
      expect([...skus].sort()).toEqual(["WH-R1", "WH-R2"]);
    } finally {
      await tally.close();
    }
  }, 60_000);

  it("a sender whose consumer skipped deliveries (lost in transit) starts over from what it acknowledged: every SKU's change arrives", async () => {
    const tally = await startInProcess(ctx, ["worker", "relay"], { leaseTtlMs: 3000 }, configFor());
    try {
      await publishCommands(h.nats.js, h.topology, [receive("WH-G0", 1)]);
      await eventually("the sender to run", async () => receiver.accepted("/ok").get("WH-G0")?.available === 1, 20_000);
      let name = "";
      for await (const info of h.nats.jsm.consumers.list(h.topology.availabilityStream))
        if (info.name.startsWith("webhook_hook_ok_")) name = info.name;
      // Another client pulls from the sender's consumer and never acknowledges: to the server those
      // are delivered, exactly like messages lost with a dropped connection.
      const until = Date.now() + 15_000;
      const thief = stealDeliveries(h.nats, h.topology.availabilityStream, name, { max: 10, batch: 2, more: () => Date.now() < until });
      const skus = Array.from({ length: 300 }, (_, i) => `WH-G${i + 1}`);
      for (let i = 0; i < skus.length; i += 10) {
        await publishCommands(
          h.nats.js,
          h.topology,
          skus.slice(i, i + 10).map((sku) => receive(sku, 7)),
        );
        await new Promise((r) => setTimeout(r, 20));
      }
      const stolen = await thief;
      expect(stolen, "availability messages the other client took").toBeGreaterThan(0);
      await eventually(
        "every SKU's change at the receiver",
        async () => {
          const a = receiver.accepted("/ok");
          return skus.every((sku) => a.get(sku)?.available === 7);
        },
        30_000,
      );
    } finally {
      await tally.close();
    }
  }, 90_000);
});
