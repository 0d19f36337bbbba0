-- The transaction that wrote each entry: the resume cursor of the incremental export.
--
-- An export reads in one REPEATABLE READ snapshot and returns the entries whose writing transaction
-- is below that snapshot's xmin (every transaction below it has ended, so every such entry that will
-- ever exist is visible), and hands back that xmin as the cursor. The next export starts there: no
-- entry is skipped (a transaction still open then gets an id at or above the cursor) or repeated.
-- recorded_at cannot do this: it is taken before commit, so a row can commit into a window already read.
--
-- Added without a default first, then given one: no table rewrite. Entries written before this
-- migration keep txid null; the first export (without a cursor) includes them.
alter table ledger_entries add column txid xid8;
alter table ledger_entries alter column txid set default pg_current_xact_id();
create index ledger_entries_txid on ledger_entries (txid);
