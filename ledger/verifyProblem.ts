/** One thing `tally ledger verify` found wrong, named by SKU and, where there is one, entry and command. */
export interface VerifyProblem {
  readonly sku: string;
  readonly entryId: number | null;
  readonly commandId: string | null;
  readonly message: string;
}

/** A problem with a SKU as a whole (a balance, a head, a hold), not with one entry. */
export const skuProblem = (sku: string, message: string): VerifyProblem => ({ sku, entryId: null, commandId: null, message });
