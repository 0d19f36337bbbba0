-- Two fewer indexes on ledger_entries: each entry the worker writes updated six indexes (and the two
-- of ledger_entry_keys); two of them served no read the others do not serve as well.
--
--   * ledger_entries_command_idx (command_id, leg): no read looks an entry up by its command. The
--     duplicate check (`knownCommandIds`) reads ledger_entry_keys, whose primary key
--     ledger_entries_command_leg is the same (command_id, leg), unique, and kept for archived months too.
--     A command's entries are found through it: ledger_entry_keys gives their (sku, sku_seq), which
--     ledger_entries_sku_seq_idx serves (`join ledger_entries e using (sku, sku_seq)`).
--   * ledger_entries_sku_entry (sku, entry_id): within one SKU, entry order and chain order agree (a
--     SKU's entries are written by the one partition that owns it, each batch after the one before
--     it commits, so a later sku_seq always gets a later entry_id; `tally ledger verify` checks it).
--     (sku, sku_seq) serves the chain walks (verify, archive) and the anchor lookups, and now also the
--     entries API filtered by SKU, which pages in sku_seq order from its cursor's entry.
drop index ledger_entries_command_idx;
drop index ledger_entries_sku_entry;

-- Balances and SKU heads are updated in place by every batch (`on conflict do update`), and no update
-- changes an indexed column: with room left on the row's page the new version is a heap-only tuple
-- (HOT), which adds no index entry. A full page (the default fillfactor of 100) sends every update
-- to another page and through the primary key again.
alter table balances set (fillfactor = 80);
alter table sku_heads set (fillfactor = 80);
