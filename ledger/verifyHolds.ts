import type { ISql } from "postgres";
import { type VerifyProblem, skuProblem } from "./verifyProblem.ts";

/**
 * Checks the holds against the balances: at every SKU and location, `reserved` is the sum of what
 * the open holds still hold, an open hold holds something and a closed one nothing. Null when all
 * agree, else the first disagreement (in SKU, location order).
 */
export async function verifyHolds(sql: ISql): Promise<VerifyProblem | null> {
  const [mismatch] = await sql<Array<{ sku: string; location: string; reserved: string; held: string }>>`
    with reserved as (
      select sku, location, qty from balances where bucket = 'reserved'
    ), held as (
      select sku, location, sum(open_qty) as qty from holds where status = 'open' group by sku, location
    )
    select sku, location, coalesce(r.qty, 0)::text as reserved, coalesce(h.qty, 0)::text as held
      from reserved r full join held h using (sku, location)
     where coalesce(r.qty, 0) <> coalesce(h.qty, 0)
     order by sku, location
     limit 1`;
  if (mismatch) return skuProblem(mismatch.sku, `reserved ${mismatch.location} is ${mismatch.reserved} but its open holds hold ${mismatch.held}`);
  const [bad] = await sql<Array<{ sku: string; hold_id: string; status: string; open_qty: string }>>`
    select sku, hold_id, status, open_qty::text from holds
     where (status = 'open') <> (open_qty > 0)
     order by sku, hold_id
     limit 1`;
  if (bad) return skuProblem(bad.sku, `hold ${bad.hold_id} is ${bad.status} but holds ${bad.open_qty}`);
  return null;
}
