import type { Sql } from "postgres";
import type { ValuationMethod } from "./valuation.ts";

/** The config's valuation method is not the one the ledger was valued by. */
export class ValuationMethodMismatch extends Error {
  override readonly name = "ValuationMethodMismatch";
}

/**
 * Records `method` as the ledger's valuation method when none is recorded yet (the first worker
 * start; `tally_meta`, through the one function migration 0071 gives the runtime role), and refuses
 * a config that names another: every value in the ledger was computed by the recorded method, and
 * `tally ledger verify` replays them by it, so a company's method is fixed for its ledger's life.
 */
export async function recordValuationMethod(sql: Sql, method: ValuationMethod): Promise<void> {
  const [row] = await sql<Array<{ recorded: string }>>`select tally_valuation_method(${method}) as recorded`;
  const recorded = row?.recorded;
  if (recorded !== method)
    throw new ValuationMethodMismatch(
      `finance.method is "${method}" in tally.config.ts but this ledger is valued by "${recorded}" (recorded at its first start); ` +
        `a ledger's valuation method cannot change (its values and \`tally ledger verify\` depend on it): set finance.method to "${recorded}", or start a new ledger`,
    );
}
