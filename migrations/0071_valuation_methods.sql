-- Valuation, part two: FIFO layers, transfers carrying the origin's cost, values on damaged and
-- in_transit, receipts in another currency, and the company's valuation method recorded once.

-- A receipt in a currency other than the company's is applied but valued as one without cost.
-- NOT VALID then VALIDATE: the check of existing rows does not block appends meanwhile.
alter table ledger_entries drop constraint ledger_entries_valuation_flag_check;
alter table ledger_entries add constraint ledger_entries_valuation_flag_check
  check (valuation_flag in ('no_cost', 'negative_stock', 'currency_mismatch')) not valid;
alter table ledger_entries validate constraint ledger_entries_valuation_flag_check;

-- FIFO: the receipt layers of on_hand, oldest first, as [[qty, value], ...] (decimal strings, exact),
-- on the on_hand row itself so that a batch writes them in the statement that writes the balance.
-- `value` (and `last_unit_cost` for damaged) are now kept on the damaged and in_transit rows too.
alter table balances add column cost_layers jsonb;

-- What an open transfer carried out of its origin, and what its receipts have taken of it so far;
-- null for a transfer shipped before transfers were valued.
alter table transfers
  add column shipped_value  numeric(38, 0),
  add column received_value numeric(38, 0);

-- The valuation method is the company's for the ledger's life: verify replays every value by it.
-- A ledger with values from before this migration was valued at moving average.
insert into tally_meta (key, value)
select 'valuation_method', 'moving_average' where exists (select from ledger_entries where value is not null)
on conflict (key) do nothing;

-- Records `wanted` as the method if none is yet (the first worker start), and returns the recorded
-- one. SECURITY DEFINER: the runtime role may only read tally_meta, and this is its one write there.
create function tally_valuation_method(wanted text) returns text
  language plpgsql volatile security definer set search_path from current as $$
declare
  recorded text;
begin
  if wanted not in ('moving_average', 'fifo') then
    raise exception 'unknown valuation method %', wanted;
  end if;
  insert into tally_meta (key, value) values ('valuation_method', wanted) on conflict (key) do nothing;
  select value into recorded from tally_meta where key = 'valuation_method';
  return recorded;
end $$;
