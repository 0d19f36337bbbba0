/**
 * The polling-sync baseline: the bench's own web-order stream replayed against channels that know
 * availability only as of their last poll (a scheduled batch integration refreshing every N
 * seconds), next to Tally's real-time view (availability published a measured p99 after the
 * source change). Every other stock change (store sales, receipts, other channels' holds) comes
 * from the ledger the bench wrote, in time order.
 *
 * A channel accepts an order when its view shows the quantity; between polls it only subtracts its
 * own orders. An accepted order that the true stock cannot cover at that moment is oversold.
 */

export interface OrderEvent {
  readonly at: number;
  readonly sku: string;
  readonly qty: number;
}

/** A change of available-to-promise at the fulfilment location, not caused by this channel. */
export interface StockEvent {
  readonly at: number;
  readonly sku: string;
  readonly delta: number;
}

export type ChannelModel = { readonly name: string; readonly periodMs: number } | { readonly name: string; readonly lagMs: number };

export interface BaselineResult {
  readonly name: string;
  readonly orders: number;
  readonly accepted: number;
  readonly oversoldUnits: number;
  readonly oversoldPer10k: number;
}

export function pollingBaseline(
  orders: ReadonlyArray<OrderEvent>,
  stock: ReadonlyArray<StockEvent>,
  channels: ReadonlyArray<ChannelModel>,
): Array<BaselineResult> {
  const sortedOrders = [...orders].sort((a, b) => a.at - b.at);
  const sortedStock = [...stock].sort((a, b) => a.at - b.at);
  const start = sortedOrders[0]?.at ?? 0;
  return channels.map((ch) => {
    const other = new Map<string, number>(); // true: every other change up to the order
    const seen = new Map<string, number>(); // the channel's view of the other changes (as of its poll, or lag ago)
    const own = new Map<string, number>(); // this channel's accepted orders (it always knows its own)
    let i = 0;
    let j = 0;
    let accepted = 0;
    let oversold = 0;
    for (const o of sortedOrders) {
      while (i < sortedStock.length && sortedStock[i]!.at <= o.at) {
        const e = sortedStock[i++]!;
        other.set(e.sku, (other.get(e.sku) ?? 0) + e.delta);
      }
      const viewAt = "periodMs" in ch ? start + Math.floor((o.at - start) / ch.periodMs) * ch.periodMs : o.at - ch.lagMs;
      while (j < sortedStock.length && sortedStock[j]!.at <= viewAt) {
        const e = sortedStock[j++]!;
        seen.set(e.sku, (seen.get(e.sku) ?? 0) + e.delta);
      }
      const mine = own.get(o.sku) ?? 0;
      if ((seen.get(o.sku) ?? 0) - mine < o.qty) continue;
      accepted++;
      const have = (other.get(o.sku) ?? 0) - mine;
      if (have < o.qty) oversold += o.qty - Math.max(0, have);
      own.set(o.sku, mine + o.qty);
    }
    return {
      name: ch.name,
      orders: sortedOrders.length,
      accepted,
      oversoldUnits: oversold,
      oversoldPer10k: sortedOrders.length === 0 ? 0 : Math.round((oversold / sortedOrders.length) * 100_000) / 10,
    };
  });
}
