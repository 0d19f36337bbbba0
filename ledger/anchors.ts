import type { Sql } from "postgres";

/**
 * A SKU's chain head as it was at `at`, kept outside the database (a NATS stream, a file): an
 * entry rewritten later — even with the whole chain recomputed so that it verifies — no longer
 * has this hash at this sequence.
 */
export interface Anchor {
  readonly sku: string;
  readonly seq: number;
  readonly hash: string;
  /** ISO time the head was read. */
  readonly at: string;
}

/** An anchor the ledger no longer matches. */
export interface AnchorProblem {
  readonly sku: string;
  readonly seq: number;
  readonly message: string;
}

export interface AnchorReport {
  readonly ok: boolean;
  /** Anchors compared (after dropping repeats of the same SKU and sequence). */
  readonly anchors: number;
  readonly skus: number;
  readonly problems: ReadonlyArray<AnchorProblem>;
}

/** The head of every SKU's chain changed after `since` (all of them without it), in SKU order. */
export async function chainHeads(sql: Sql, since?: Date): Promise<{ heads: Array<Anchor>; readAt: Date }> {
  const [{ now }] = await sql<[{ now: Date }]>`select clock_timestamp() as now`;
  const rows = await sql<Array<{ sku: string; seq: number; last_hash: string }>>`
    select sku, seq, last_hash from sku_heads
     where seq > 0 and (${since ?? null}::timestamptz is null or updated_at > ${since ?? null}::timestamptz)
     order by sku`;
  const at = now.toISOString();
  return { heads: rows.map((r) => ({ sku: r.sku, seq: r.seq, hash: r.last_hash, at })), readAt: now };
}

/**
 * Checks every anchor against the entry at its SKU and sequence: the hash must be the same, and the
 * entry must still exist. Anchors are compared in pages of 5,000; problems name the SKU.
 */
export async function checkAnchors(sql: Sql, anchors: Iterable<Anchor>, maxProblems = 100): Promise<AnchorReport> {
  const unique = new Map<string, Anchor>();
  for (const a of anchors) {
    const key = `${a.sku}\u0000${a.seq}`;
    const prior = unique.get(key);
    // Two anchors of one sequence with different hashes: the ledger can match at most one.
    if (prior && prior.hash !== a.hash) unique.set(`${key}\u0000${a.hash}`, a);
    else unique.set(key, a);
  }
  const list = [...unique.values()];
  const problems: Array<AnchorProblem> = [];
  for (let i = 0; i < list.length && problems.length < maxProblems; i += 5000) {
    const page = list.slice(i, i + 5000);
    const found = await sql<Array<{ sku: string; seq: number; hash: string }>>`
      select e.sku, e.sku_seq as seq, e.hash
        from unnest(${page.map((a) => a.sku)}::text[], ${page.map((a) => a.seq)}::bigint[]) as a(sku, seq)
        join ledger_entries e on e.sku = a.sku and e.sku_seq = a.seq`;
    const hashes = new Map(found.map((f) => [`${f.sku}\u0000${f.seq}`, f.hash]));
    for (const a of page) {
      const hash = hashes.get(`${a.sku}\u0000${a.seq}`);
      if (hash === undefined)
        problems.push({
          sku: a.sku,
          seq: a.seq,
          message: `sequence ${a.seq} was anchored at ${a.at} but is no longer in the ledger (entries removed)`,
        });
      else if (hash !== a.hash)
        problems.push({
          sku: a.sku,
          seq: a.seq,
          message: `sequence ${a.seq} was anchored at ${a.at} with hash ${a.hash.slice(0, 16)}… but the ledger now has ${hash.slice(0, 16)}… (the chain was rewritten)`,
        });
      if (problems.length >= maxProblems) break;
    }
  }
  return { ok: problems.length === 0, anchors: list.length, skus: new Set(list.map((a) => a.sku)).size, problems };
}
