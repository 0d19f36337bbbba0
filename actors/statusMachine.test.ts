import { initialTransition, transition } from "xstate";
import { describe, expect, it } from "vitest";
import type { StockStatus } from "./state.ts";
import { hysteresisBand, nextStatus, statusMachine, type StockLevels } from "./statusMachine.ts";

/** Levels with no reservations or safety stock: available = on hand. */
const plain = (onHand: number, reorderPoint = 10): StockLevels => ({ onHand: BigInt(onHand), available: BigInt(onHand), reorderPoint });
/** Levels from plain numbers. */
const levels = (onHand: number, available: number, reorderPoint: number): StockLevels => ({
  onHand: BigInt(onHand),
  available: BigInt(available),
  reorderPoint,
});

/** Feeds levels one after another, as successive commands would. */
const walk = (start: StockStatus, steps: ReadonlyArray<StockLevels>) => {
  let status = start;
  return steps.map((levels) => {
    const next = nextStatus(status, levels);
    status = next.status;
    return { status: next.status, notifications: next.notifications.map((n) => n.type) };
  });
};

describe("hysteresisBand", () => {
  it("is 10% of the reorder point, rounded up, at least 1", () => {
    expect(hysteresisBand(0)).toBe(1);
    expect(hysteresisBand(5)).toBe(1);
    expect(hysteresisBand(10)).toBe(1);
    expect(hysteresisBand(11)).toBe(2);
    expect(hysteresisBand(100)).toBe(10);
    expect(hysteresisBand(101)).toBe(11);
  });
});

describe("statusMachine", () => {
  it("starts new: never stocked", () => {
    const [snapshot, actions] = initialTransition(statusMachine);
    expect(snapshot.value).toBe("new");
    expect(actions).toEqual([]);
  });

  it("is driven through xstate's pure transition()", () => {
    const [snapshot] = initialTransition(statusMachine);
    const [first, silent] = transition(statusMachine, snapshot, { type: "levels", ...plain(5) });
    expect(first.value).toBe("low");
    expect(silent).toEqual([]);
    const [out] = transition(statusMachine, first, { type: "levels", ...plain(0) });
    const [next, actions] = transition(statusMachine, out, { type: "levels", ...plain(5) });
    expect(next.value).toBe("low");
    expect(actions.map((a) => a.type === "notify" && a.params.kind)).toEqual(["back_in_stock", "low_stock"]);
  });

  it("a location's first stock is not back in stock: new → in_stock or low notifies nothing", () => {
    expect(nextStatus("new", plain(0))).toEqual({ status: "new", notifications: [] });
    expect(nextStatus("new", plain(50))).toEqual({ status: "in_stock", notifications: [] });
    expect(nextStatus("new", plain(3))).toEqual({ status: "low", notifications: [] });
    expect(nextStatus("new", levels(-1, -1, 0))).toEqual({
      status: "negative",
      notifications: [{ type: "negative_stock", onHand: -1n }],
    });
  });
});

describe("nextStatus", () => {
  it("stays put, silently, when the levels keep the same status", () => {
    expect(nextStatus("in_stock", plain(50))).toEqual({ status: "in_stock", notifications: [] });
    expect(nextStatus("low", plain(4))).toEqual({ status: "low", notifications: [] });
    expect(nextStatus("out", plain(0))).toEqual({ status: "out", notifications: [] });
    expect(nextStatus("negative", plain(-3))).toEqual({ status: "negative", notifications: [] });
  });

  it("in_stock → low raises low_stock with the replenishment request", () => {
    expect(nextStatus("in_stock", plain(7))).toEqual({
      status: "low",
      notifications: [
        {
          type: "low_stock",
          available: 7n,
          reorderPoint: 10,
          replenishmentRequested: { reorderPoint: 10, shortfall: 3n },
        },
      ],
    });
  });

  it("asks for at least one unit when available sits exactly on the reorder point", () => {
    const [notification] = nextStatus("in_stock", plain(10)).notifications;
    expect(notification).toMatchObject({ type: "low_stock", replenishmentRequested: { shortfall: 1n } });
  });

  it("in_stock or low → out raises out_of_stock", () => {
    expect(nextStatus("in_stock", plain(0))).toEqual({ status: "out", notifications: [{ type: "out_of_stock" }] });
    expect(nextStatus("low", plain(0))).toEqual({ status: "out", notifications: [{ type: "out_of_stock" }] });
  });

  it("counts reservations and safety stock: on hand but nothing available is out", () => {
    expect(nextStatus("in_stock", levels(5, -1, 0)).status).toBe("out");
  });

  it("anything → negative raises negative_stock with the on-hand figure", () => {
    for (const from of ["in_stock", "low", "out"] as const) {
      expect(nextStatus(from, plain(-2))).toEqual({
        status: "negative",
        notifications: [{ type: "negative_stock", onHand: -2n }],
      });
    }
  });

  it("out → in_stock raises back_in_stock; out → low raises back_in_stock and low_stock", () => {
    expect(nextStatus("out", plain(20))).toEqual({
      status: "in_stock",
      notifications: [{ type: "back_in_stock", available: 20n }],
    });
    expect(nextStatus("out", plain(3)).notifications.map((n) => n.type)).toEqual(["back_in_stock", "low_stock"]);
  });

  it("negative is left only once on hand is back to zero or more", () => {
    expect(nextStatus("negative", levels(-1, -1, 0)).status).toBe("negative");
    expect(nextStatus("negative", plain(0))).toEqual({ status: "out", notifications: [{ type: "out_of_stock" }] });
    expect(nextStatus("negative", plain(4)).notifications.map((n) => n.type)).toEqual(["back_in_stock", "low_stock"]);
    expect(nextStatus("negative", plain(40))).toEqual({
      status: "in_stock",
      notifications: [{ type: "back_in_stock", available: 40n }],
    });
  });

  it("low → in_stock needs the reorder point plus the band, and says nothing", () => {
    // reorder point 20: band 2, so 21 stays low and 22 is in stock.
    expect(walk("in_stock", [plain(20, 20), plain(21, 20), plain(22, 20)])).toEqual([
      { status: "low", notifications: ["low_stock"] },
      { status: "low", notifications: [] },
      { status: "in_stock", notifications: [] },
    ]);
  });

  it("a SKU hovering around its reorder point raises one low_stock, not one per sale", () => {
    // reorder point 100: band 10, so anything below 110 stays low.
    const levels = [101, 100, 99, 100, 105, 109, 100, 98].map((n) => plain(n, 100));
    const notifications = walk("in_stock", levels).flatMap((step) => step.notifications);
    expect(notifications).toEqual(["low_stock"]);
  });

  it("a reorder point of zero goes straight from in_stock to out", () => {
    expect(walk("in_stock", [plain(1, 0), plain(0, 0), plain(1, 0)])).toEqual([
      { status: "in_stock", notifications: [] },
      { status: "out", notifications: ["out_of_stock"] },
      { status: "in_stock", notifications: ["back_in_stock"] },
    ]);
  });
});
