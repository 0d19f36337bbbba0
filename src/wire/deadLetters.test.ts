import { describe, expect, it } from "vitest";
import { deadLetter, deadLetterMsgId, foundWhereAndWhy } from "./deadLetters.ts";

// Literal ids as each origin built them before there was one recipe: JetStream's duplicate window
// and `dead_letter_payloads` keys depend on them, so a change to the recipe must fail here.
describe("dead-letter message ids (pinned byte for byte)", () => {
  it("by default: where the letter was found and why (CDC changes, reservations, webhooks)", () => {
    const d = deadLetter("erp", "item.sku: unknown", { a: 1 }, { lsn: "0/10", index: 2 });
    expect(deadLetterMsgId(d.origin, foundWhereAndWhy(d))).toBe("dlq:erp:2746a4df96084a45a2acbd535a71f1dc");
  });

  it("a stream message the worker could not apply: context, reason and payload", () => {
    const d = deadLetter("commands", "bad envelope", new TextEncoder().encode('{"v":2}'), { stream_seq: 7, subject: "tally.dev.cmd.0" });
    expect(deadLetterMsgId(d.origin, { hashOf: [JSON.stringify(d.context), d.reason, JSON.stringify(d.payload) ?? ""] })).toBe(
      "dlq:commands:1ec15ab66c7ca131d91cc5032ad35c30",
    );
  });

  it("a POS transaction: its text (or payload hash) and reason; a submit line: its text", () => {
    expect(deadLetterMsgId("pos", { hashOf: ["}{", "not JSON"] })).toBe("dlq:pos:d8d91a05e5ef6678eee8e17be9781eb2");
    expect(deadLetterMsgId("submit", { hashOf: ['{"id":"x"}'] })).toBe("dlq:submit:5e2b92cc57ce618dfbb54844a31775e4");
  });

  it("a snapshot row: a readable key", () => {
    expect(deadLetterMsgId("erp", { key: "snapshot:0/1A2B3C4:public.stock:A-1/DC1" })).toBe("dlq:erp:snapshot:0/1A2B3C4:public.stock:A-1/DC1");
  });
});
