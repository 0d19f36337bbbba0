/**
 * A seeded generator of mixed canonical commands and an independent reference model of their
 * effect: the integration and fault tests compare the real ledger with this model. It is written
 * from the command semantics as the README describes them, sharing no code with actors/.
 */

export interface RawCommand {
  id: string;
  type: string;
  sku: string;
  location: string;
  qty?: number;
  source: { system: string; ref: string };
  occurredAt: string;
  [extra: string]: unknown;
}

export function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export const LOCATIONS = ["DC1", "S01", "S02"] as const;

/** `count` commands over `skus` SKUs: mostly receipts, sales and holds, with every other type mixed in. */
export function generateCommands(count: number, skus: number, seed = 1, prefix = "w"): Array<RawCommand> {
  const r = rng(seed);
  const pick = <T>(xs: ReadonlyArray<T>): T => xs[Math.floor(r() * xs.length)]!;
  const int = (lo: number, hi: number) => lo + Math.floor(r() * (hi - lo + 1));
  const out: Array<RawCommand> = [];
  const openTransfers: Array<{ id: string; sku: string; from: string; to: string; qty: number }> = [];
  const holds: Array<{ id: string; sku: string; location: string }> = [];
  // A release or fulfil names a hold reserved before (mostly at its own location), or now and then one never reserved.
  const holdFor = (sku: string, location: string, i: number) => {
    const h = holds.length > 0 && r() < 0.9 ? holds[Math.floor(r() * holds.length)]! : { id: `${prefix}:h-none-${i}`, sku, location };
    return { sku: h.sku, location: r() < 0.95 ? h.location : location, reservationId: h.id };
  };
  const base = Date.parse("2026-11-26T08:00:00Z");
  for (let i = 0; i < count; i++) {
    const sku = `SKU-${int(0, skus - 1)}`;
    const location = pick(LOCATIONS);
    const common = {
      id: `${prefix}:${i}`,
      sku,
      location,
      source: { system: pick(["erp", "shop", "pos"]), ref: `ref-${i}` },
      occurredAt: new Date(base + i * 1000).toISOString(),
    };
    const roll = r();
    let c: RawCommand;
    if (roll < 0.22) c = { ...common, type: "receive", qty: int(1, 40) };
    else if (roll < 0.42) c = { ...common, type: "sell", qty: int(1, 6) };
    else if (roll < 0.6) {
      c = { ...common, type: "reserve", qty: int(1, 12), reservationId: `${prefix}:h${i}` };
      holds.push({ id: `${prefix}:h${i}`, sku, location });
    } else if (roll < 0.67) c = { ...common, type: "release", qty: int(1, 6), ...holdFor(sku, location, i) };
    else if (roll < 0.74) c = { ...common, type: "fulfill", qty: int(1, 6), ...holdFor(sku, location, i) };
    else if (roll < 0.78) c = { ...common, type: "return", qty: int(1, 3), restockable: r() < 0.7 };
    else if (roll < 0.82) c = { ...common, type: "adjust", qty: pick([-3, -2, -1, 1, 2, 5]), reason: pick(["shrink", "damage", "found"]) };
    else if (roll < 0.85) c = { ...common, type: "count", qty: int(0, 50) };
    else if (roll < 0.88) c = { ...common, type: "set_policy", safetyStock: int(0, 3), reorderPoint: int(0, 10) };
    else if (roll < 0.94) {
      const to = pick(LOCATIONS.filter((l) => l !== location));
      const id = `T-${i}`;
      const qty = int(1, 10);
      openTransfers.push({ id, sku, from: location, to, qty });
      c = { ...common, type: "transfer_out", qty, transferId: id, to };
    } else if (openTransfers.length > 0 && r() < 0.85) {
      const t = openTransfers.splice(Math.floor(r() * openTransfers.length), 1)[0]!;
      const partial = r() < 0.3;
      const qty = partial ? Math.max(1, t.qty - 1) : r() < 0.1 ? t.qty + 5 : t.qty; // sometimes too much: rejected
      c = { ...common, sku: t.sku, location: t.to, type: "transfer_in", qty, transferId: t.id, from: t.from };
    } else c = { ...common, type: "transfer_in", qty: 1, transferId: `T-none-${i}`, from: "DC1" }; // unknown: rejected
    out.push(c);
  }
  return out;
}

export interface Buckets {
  on_hand: number;
  reserved: number;
  in_transit: number;
  damaged: number;
}
export interface ModelLocation extends Buckets {
  safetyStock: number;
  reorderPoint: number;
}

export interface Expectation {
  readonly locations: Map<string, ModelLocation>; // key `${sku}|${location}`
  readonly applied: Set<string>;
  readonly rejected: Map<string, string>; // id → reason
  readonly entries: number;
  readonly entriesBySku: Map<string, number>;
  /** `${sku}|${location}` pairs changed by an applied command (their availability is published). */
  readonly touched: Set<string>;
  /** Holds keyed `${sku}|${holdId}`: where, what is still open, and the status. */
  readonly holds: Map<string, ModelHold>;
}

export interface ModelHold {
  location: string;
  open: number;
  status: "open" | "released" | "fulfilled" | "expired" | "refused";
}

/** Applies unique commands in order, as the README's command types say, and counts the legs each writes. */
export function expectationOf(commands: ReadonlyArray<RawCommand>): Expectation {
  const locations = new Map<string, ModelLocation>();
  const transfers = new Map<string, { sku: string; from: string; to: string; shipped: number; received: number }>();
  const applied = new Set<string>();
  const rejected = new Map<string, string>();
  const entriesBySku = new Map<string, number>();
  const touched = new Set<string>();
  const holds = new Map<string, ModelHold>();
  let entries = 0;
  const seen = new Set<string>();
  const at = (sku: string, loc: string): ModelLocation => {
    const key = `${sku}|${loc}`;
    let l = locations.get(key);
    if (!l) locations.set(key, (l = { on_hand: 0, reserved: 0, in_transit: 0, damaged: 0, safetyStock: 0, reorderPoint: 0 }));
    return l;
  };
  for (const c of commands) {
    if (seen.has(c.id)) continue;
    seen.add(c.id);
    const l = at(c.sku, c.location);
    const q = c.qty ?? 0;
    let legs = 0;
    let reject: string | null = null;
    switch (c.type) {
      case "receive":
        l.on_hand += q;
        legs = 1;
        break;
      case "sell":
        l.on_hand -= q;
        legs = 1;
        break;
      case "return":
        if (c.restockable === false) l.damaged += q;
        else l.on_hand += q;
        legs = 1;
        break;
      // A hold is one order line: a reserve opens it (or records it refused); a release or fulfil acts
      // on it alone and never beyond what it has open; a fulfil is a fact, so what the hold does not
      // cover still leaves on hand (a third leg).
      case "reserve": {
        const key = `${c.sku}|${c.reservationId as string}`;
        if (holds.has(key)) reject = "hold_exists";
        else if (l.on_hand - l.reserved - l.safetyStock < q) {
          reject = "insufficient_stock";
          holds.set(key, { location: c.location, open: 0, status: "refused" });
        } else {
          l.reserved += q;
          holds.set(key, { location: c.location, open: q, status: "open" });
          legs = 1;
        }
        break;
      }
      case "release": {
        const h = holds.get(`${c.sku}|${c.reservationId as string}`);
        if (!h || h.status === "refused") reject = "unknown_hold";
        else if (h.status !== "open") reject = "hold_closed";
        else if (h.location !== c.location) reject = "hold_elsewhere";
        else {
          const taken = c.expired === true ? h.open : Math.min(q, h.open);
          l.reserved -= taken;
          h.open -= taken;
          if (h.open === 0) h.status = c.expired === true ? "expired" : "released";
          legs = 1;
        }
        break;
      }
      case "fulfill": {
        const h = holds.get(`${c.sku}|${c.reservationId as string}`);
        const covered = h && h.status === "open" && h.location === c.location ? Math.min(q, h.open) : 0;
        if (covered > 0) {
          l.reserved -= covered;
          l.on_hand -= covered;
          h!.open -= covered;
          if (h!.open === 0) h!.status = "fulfilled";
          legs += 2;
        }
        if (q > covered) {
          l.on_hand -= q - covered;
          legs += 1;
        }
        break;
      }
      case "adjust":
        l.on_hand += q;
        legs = 1;
        break;
      case "count":
        legs = l.on_hand === q ? 0 : 1;
        l.on_hand = q;
        break;
      case "set_policy":
        l.safetyStock = c.safetyStock as number;
        l.reorderPoint = c.reorderPoint as number;
        break;
      case "transfer_out": {
        const key = `${c.sku}|${c.transferId as string}`;
        const t = transfers.get(key);
        if (t && (t.from !== c.location || t.to !== c.to)) reject = "transfer_mismatch";
        else {
          l.on_hand -= q;
          at(c.sku, c.to as string).in_transit += q;
          if (t) t.shipped += q;
          else transfers.set(key, { sku: c.sku, from: c.location, to: c.to as string, shipped: q, received: 0 });
          legs = 2;
        }
        break;
      }
      case "transfer_in": {
        const key = `${c.sku}|${c.transferId as string}`;
        const t = transfers.get(key);
        if (!t) reject = "unknown_transfer";
        else if (t.to !== c.location || t.from !== c.from) reject = "transfer_mismatch";
        else if (q > t.shipped - t.received) reject = "exceeds_in_transit";
        else {
          l.in_transit -= q;
          l.on_hand += q;
          t.received += q;
          if (t.received === t.shipped) transfers.delete(key);
          legs = 2;
        }
        break;
      }
      default:
        throw new Error(`model: unknown type ${c.type}`);
    }
    if (reject) rejected.set(c.id, reject);
    else {
      applied.add(c.id);
      if (legs > 0 || c.type === "set_policy") touched.add(`${c.sku}|${c.location}`);
      if (c.type === "transfer_out") touched.add(`${c.sku}|${c.to as string}`);
      entries += legs;
      entriesBySku.set(c.sku, (entriesBySku.get(c.sku) ?? 0) + legs);
    }
  }
  return { locations, applied, rejected, entries, entriesBySku, touched, holds };
}

/** What a channel may sell: per location max(0, on_hand − reserved − safety), summed, less the buffer. */
export function expectedAvailable(e: Expectation, sku: string, channelLocations: ReadonlyArray<string>, buffer: number): number {
  let sellable = 0;
  for (const loc of channelLocations) {
    const l = e.locations.get(`${sku}|${loc}`);
    if (l) sellable += Math.max(0, l.on_hand - l.reserved - l.safetyStock);
  }
  return Math.max(0, sellable - buffer);
}
