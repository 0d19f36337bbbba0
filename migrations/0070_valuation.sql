-- Valuation (moving weighted average cost per SKU and location), in integer minor units.
-- numeric(38,0), not bigint: a quantity may be up to 1e12 and a unit cost up to 1e12 minor units,
-- so a value may pass bigint's 9.2e18; numeric holds the exact integer.
-- Entries from before valuation keep these columns null (their hash does not cover them).
alter table ledger_entries
  add column value          numeric(38, 0),
  add column unit_cost      numeric(38, 0),
  add column valuation_flag text check (valuation_flag in ('no_cost', 'negative_stock'));

-- On the on_hand row of each (sku, location): the exact total value of on_hand, and the last known
-- unit cost (what a sale out of empty stock is valued at). Null on other buckets.
alter table balances
  add column value          numeric(38, 0),
  add column last_unit_cost numeric(38, 0);
