-- The GL poster's resume cursor: the txid horizon (ledger/export.ts's technique) below which every
-- ledger entry has been turned into its journal. One row, updated in the same statement as the
-- journals of each round (a crash loses or repeats nothing); a round holds the advisory lock
-- 7402117073, so only one poster posts at a time however many worker processes run one.
create table gl_cursor (
  id         smallint    primary key check (id = 1),
  -- Null: from the first entry that has a txid (entries older than migration 0020 predate
  -- valuation and post nothing).
  horizon    xid8,
  updated_at timestamptz not null default now()
);
insert into gl_cursor (id) values (1);
