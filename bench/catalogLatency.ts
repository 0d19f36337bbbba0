/**
 * The catalog flow's latency, next to availability's: during the load the probe changes one demo
 * item's prices in the ERP at a time (every list of the item in one transaction, as a seasonal
 * price change is) and times, per channel, from the ERP's commit (acknowledged to the probe) to the
 * catalog projection carrying the new price arriving on `tally.<env>.catalog.<channel>.<sku>`
 * (published by the catalog publisher with the KV value).
 */
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import type { Sql } from "postgres";
import type { Topology } from "../src/wire/index.ts";

/** Per channel: samples and percentiles (ms), and changes whose publication was not seen. */
export type CatalogLatency = Record<string, { samples: number; p50: number | null; p99: number | null; unseen: number }>;

interface Pending {
  readonly at: number;
  readonly amount: string;
}

export interface CatalogProbe {
  /** Stops changing prices (the end of the load window). */
  halt(): Promise<void>;
  /** Stops changing prices, waits up to `graceMs` for the last publications, and reports. */
  stop(graceMs?: number): Promise<CatalogLatency>;
}

/** Starts changing a demo item's prices every `everyMs` (the 20 demo items in turn). */
export function startCatalogProbe(nc: NatsConnection, t: Topology, erp: Sql, everyMs = 500): CatalogProbe {
  const pending = new Map<string, Pending>();
  const samples = new Map<string, Array<number>>();
  const unseen = new Map<string, number>();
  const sub: Subscription = nc.subscribe(t.catalogSubjects(), {
    callback: (_err, m) => {
      const now = Date.now();
      let v: { channel?: string; sku?: string; price?: { amount?: number | string } | null };
      try {
        v = m.json();
      } catch {
        return;
      }
      const key = `${v.channel}\u0000${v.sku}`;
      const p = pending.get(key);
      if (!p || v.price?.amount === undefined || String(v.price.amount) !== p.amount) return;
      pending.delete(key);
      const list = samples.get(v.channel!) ?? [];
      list.push(now - p.at);
      samples.set(v.channel!, list);
    },
  });
  let n = 0;
  let busy: Promise<void> = Promise.resolve();
  const change = async () => {
    const itemNo = String(100001 + (n++ % 20));
    const rows = await erp<Array<{ sku: string; channel: string; minor: string }>>`
      update item_prices p set amount = p.amount + 0.01
        from items i, price_lists l
       where p.item_no = i.item_no and l.price_list = p.price_list and p.item_no = ${itemNo}
         and p.valid_to is null and p.valid_from <= now()
      returning i.sku, l.channel, (p.amount * 100)::bigint::text as minor`;
    const at = Date.now();
    for (const r of rows) {
      const key = `${r.channel}\u0000${r.sku}`;
      if (pending.has(key)) unseen.set(r.channel, (unseen.get(r.channel) ?? 0) + 1);
      pending.set(key, { at, amount: r.minor });
    }
  };
  const timer = setInterval(() => {
    busy = busy.then(change).catch(() => {}); // a failed change (ERP busy) is just not sampled
  }, everyMs);
  const halt = async () => {
    clearInterval(timer);
    await busy;
  };
  return {
    halt,
    async stop(graceMs = 5000) {
      await halt();
      const until = Date.now() + graceMs;
      while (pending.size > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
      sub.unsubscribe();
      for (const key of pending.keys()) {
        const channel = key.split("\u0000")[0]!;
        unseen.set(channel, (unseen.get(channel) ?? 0) + 1);
      }
      const channels = new Set([...samples.keys(), ...unseen.keys()]);
      return Object.fromEntries(
        [...channels].sort().map((c) => {
          const s = (samples.get(c) ?? []).sort((a, b) => a - b);
          const pct = (q: number) => (s.length === 0 ? null : s[Math.min(s.length - 1, Math.floor(q * s.length))]!);
          return [c, { samples: s.length, p50: pct(0.5), p99: pct(0.99), unseen: unseen.get(c) ?? 0 }];
        }),
      );
    },
  };
}
