import type { Sql } from "postgres";
import { loadHolds, loadSkus, type HoldRow, type StoredSku } from "../ledger/index.ts";
import { actorFromStored, holdIdOf, withStoredHolds, type LiveSku } from "./batch.ts";
import type { Command } from "../src/contract/index.ts";

/**
 * The live SKU actors of one worker: activated on demand from the ledger tables, passivated
 * least-recently-used first beyond `capacity`, so memory stays flat however large the catalog.
 * Only committed state is ever stored here.
 */
export class SkuStateCache {
  readonly #actors = new Map<string, LiveSku>();
  activations = 0;
  passivations = 0;

  constructor(readonly capacity: number) {}

  get size(): number {
    return this.#actors.size;
  }

  /**
   * The actors of these commands' SKUs, each with the holds the commands name, loading the ones not
   * in memory (and their open holds) with one round of queries. A live actor keeps only its open
   * holds, so a named hold it does not have (closed, refused, or never seen) is looked up in the
   * same round.
   */
  async activateFor(sql: Sql, commands: ReadonlyArray<Command>): Promise<Map<string, LiveSku>> {
    const out = new Map<string, LiveSku>();
    const missing: Array<string> = [];
    const missingSet = new Set<string>();
    const named: Array<{ sku: string; holdId: string }> = [];
    const seen = new Set<string>();
    for (const command of commands) {
      if (!out.has(command.sku) && !missingSet.has(command.sku)) {
        const actor = this.#actors.get(command.sku);
        if (actor) {
          // Refresh recency: Map iteration order is insertion order.
          this.#actors.delete(command.sku);
          this.#actors.set(command.sku, actor);
          out.set(command.sku, actor);
        } else {
          missing.push(command.sku);
          missingSet.add(command.sku);
        }
      }
      const holdId = holdIdOf(command);
      if (holdId === null) continue;
      const key = `${command.sku}\u0000${holdId}`;
      if (seen.has(key) || this.#actors.get(command.sku)?.state.holds[holdId] !== undefined) continue;
      seen.add(key);
      named.push({ sku: command.sku, holdId });
    }
    const [stored, holds] = await Promise.all([
      missing.length > 0 ? loadSkus(sql, missing) : Promise.resolve(new Map<string, StoredSku>()),
      loadHolds(sql, missing, named),
    ]);
    for (const sku of missing) {
      out.set(sku, actorFromStored(sku, stored.get(sku)));
      this.activations++;
    }
    const bySku = new Map<string, Array<HoldRow>>();
    for (const h of holds) {
      let list = bySku.get(h.sku);
      if (!list) bySku.set(h.sku, (list = []));
      list.push(h);
    }
    for (const [sku, rows] of bySku) out.set(sku, withStoredHolds(out.get(sku)!, rows));
    return out;
  }

  /** Keeps the post-commit state of these actors and passivates the least recently used beyond capacity. */
  commit(actors: ReadonlyMap<string, LiveSku>): void {
    for (const [sku, actor] of actors) {
      this.#actors.delete(sku);
      this.#actors.set(sku, actor);
    }
    while (this.#actors.size > this.capacity) {
      const oldest = this.#actors.keys().next().value as string;
      this.#actors.delete(oldest);
      this.passivations++;
    }
  }

  /** Forgets every actor for which `predicate` holds (a partition lost, or a batch whose commit is in doubt). */
  evict(predicate: (sku: string) => boolean): void {
    for (const sku of [...this.#actors.keys()]) if (predicate(sku)) this.#actors.delete(sku);
  }
}
