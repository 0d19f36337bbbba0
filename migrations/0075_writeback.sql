-- Write-back to a source's ERP (cdc/writeBack.ts): how far each source's writer has sent the
-- ledger's movements and the GL journal, with the txid-horizon technique of the ledger export.
-- Every row with txid below `horizon` has been sent. While a window [horizon, upper) is being sent,
-- `upper` is its end (the xmin of a snapshot: every transaction below it has ended, so the window's
-- rows are final) and `after_entry` the last entry sent in it, in entry order. The journal has the
-- same three, keyed by journal_id within its window. Null horizon: nothing sent yet (from the start).
create table writeback_positions (
  source                text        primary key,
  horizon               xid8,
  upper                 xid8,
  after_entry           bigint      not null default 0,
  journal_horizon       xid8,
  journal_upper         xid8,
  journal_after         text        not null default '',
  updated_at            timestamptz not null default now()
);
