-- Stock status `new`: a location that never had stock. Its first stock is not a crossing back into
-- stock, so it raises no `back_in_stock`. Locations recorded `out` that never saw an on-hand
-- movement (a policy set ahead of the first receipt) are `new`.
update sku_locations s set status = 'new'
 where s.status = 'out'
   and not exists (select from ledger_entries e where e.sku = s.sku and e.location = s.location and e.bucket = 'on_hand');
