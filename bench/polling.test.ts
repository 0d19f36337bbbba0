import { describe, expect, it } from "vitest";
import { pollingBaseline, type OrderEvent, type StockEvent } from "./polling.ts";

describe("the polling-sync baseline model", () => {
  // 10 units at t=0; the stores sell all 10 at t=5.5 s; web orders of 1 unit every second from t=1 s to t=20 s.
  const stock: Array<StockEvent> = [
    { at: 0, sku: "A", delta: 10 },
    { at: 5_500, sku: "A", delta: -10 },
  ];
  const orders: Array<OrderEvent> = Array.from({ length: 20 }, (_, i) => ({ at: 1_000 + i * 1000, sku: "A", qty: 1 }));

  it("a channel polling every 60 s sells what the stores already sold; a real-time view does not", () => {
    const [tally, poll60] = pollingBaseline(orders, stock, [
      { name: "Tally", lagMs: 50 },
      { name: "poll 60 s", periodMs: 60_000 },
    ]);
    // Real time: orders at 1..5 s take 5 units while they exist; after the stores' sale nothing is shown — nothing oversold.
    expect(tally).toMatchObject({ orders: 20, accepted: 5, oversoldUnits: 0, oversoldPer10k: 0 });
    // Polled at t=1 s (10 units), it keeps accepting until its own orders use the 10 it saw: 5 of them after the stock was gone.
    expect(poll60).toMatchObject({ orders: 20, accepted: 10, oversoldUnits: 5, oversoldPer10k: 2500 });
  });

  it("a view that is late by more than the gap between a sale and an order oversells too", () => {
    const [late] = pollingBaseline(orders, stock, [{ name: "late 3 s", lagMs: 3_000 }]);
    // Orders at 1 and 2 s see nothing yet (the receipt is not 3 s old); orders at 6, 7 and 8 s still see
    // the stock as of 3, 4 and 5 s: three units that were gone.
    expect(late).toMatchObject({ accepted: 6, oversoldUnits: 3 });
  });
});
