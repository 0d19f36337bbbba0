import { describe, expect, it } from "vitest";
import {
  bundleComponentCommandId,
  cdcChangeCommandId,
  holdExpiryCommandId,
  mappedCommandId,
  posLineCommandId,
  RESOLVE_PROBE_COMMAND_ID,
  reserveCommandId,
  settleCommandId,
  snapshotCommandId,
  snapshotKeyText,
} from "./commandIds.ts";

// Literal strings as the recipes produced them before they moved here: existing ledgers and
// JetStream duplicate windows hold these ids, so any change to a recipe must fail this test.
describe("command ids (pinned byte for byte)", () => {
  it("a CDC change", () => {
    expect(cdcChangeCommandId("erp", "0/16B3748", 3)).toBe("erp:0/16B3748:3");
    expect(cdcChangeCommandId("shop-eu", "1A/FF00", 0)).toBe("shop-eu:1A/FF00:0");
  });

  it("a snapshot row, and its key text", () => {
    expect(snapshotKeyText(["sku", "location"], { sku: "A-1", location: "DC1", qty: "5" })).toBe("A-1/DC1");
    expect(snapshotKeyText(["a", "b"], { a: null })).toBe("/");
    expect(snapshotCommandId("erp", "0/1A2B3C4", "public.stock", "A-1/DC1")).toBe("erp:snapshot:0/1A2B3C4:public.stock:A-1/DC1");
  });

  it("several commands of one change, and bundle components", () => {
    expect(mappedCommandId("erp:0/10:2", 0, 1)).toBe("erp:0/10:2");
    expect(mappedCommandId("erp:0/10:2", 0, 2)).toBe("erp:0/10:2:0");
    expect(mappedCommandId("erp:0/10:2", 1, 2)).toBe("erp:0/10:2:1");
    expect(bundleComponentCommandId("erp:0/10:2", "KIT.PART-1")).toBe("erp:0/10:2#KIT.PART-1");
  });

  it("a POS line", () => {
    expect(posLineCommandId({ store: "S01", terminal: "T2", id: "9901.a" }, 3)).toBe("pos:S01:T2:9901.a:3");
  });

  it("API reservations: reserve per attempt, release and fulfil", () => {
    expect(reserveCommandId("r_0123456789abcdef0123456789abcdef", 1, 1)).toBe("res:r_0123456789abcdef0123456789abcdef:1:1");
    expect(reserveCommandId("r_0123456789abcdef0123456789abcdef", 2, 3)).toBe("res:r_0123456789abcdef0123456789abcdef:2:3");
    expect(settleCommandId("r_0123456789abcdef0123456789abcdef", 2, "release")).toBe("res:r_0123456789abcdef0123456789abcdef:2:release");
    expect(settleCommandId("r_0123456789abcdef0123456789abcdef", 1, "fulfill")).toBe("res:r_0123456789abcdef0123456789abcdef:1:fulfill");
    expect(RESOLVE_PROBE_COMMAND_ID).toBe("res:resolve");
  });

  it("a hold expiry", () => {
    expect(holdExpiryCommandId("SKU-1", "res:r_0123456789abcdef0123456789abcdef:1:1")).toBe("hold-expiry:a696fb2888c68e4448261837a83228f7be7117c7");
    expect(holdExpiryCommandId("A.B*C", "hold with spaces/ünïcode")).toBe("hold-expiry:1624f1ac623be108fbfa6816668f0a038c143085");
  });
});
