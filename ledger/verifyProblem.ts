/** One thing `tally ledger verify` found wrong, named by SKU and, where there is one, entry and command. */
export interface VerifyProblem {
  readonly sku: string;
  readonly entryId: number | null;
  readonly commandId: string | null;
  readonly message: string;
}
