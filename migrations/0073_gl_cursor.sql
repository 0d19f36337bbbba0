-- The GL poster's resume cursor: the txid horizon (ledger/export.ts's technique) below which every
-- ledger entry has been turned into its journal. One row; the poster locks it for the span of a
-- round, so only one poster posts at a time however many worker processes run one, and updates it
-- in the same transaction as the journals it wrote (a crash loses or repeats nothing).
create table gl_cursor (
  id         smallint    primary key check (id = 1),
  -- Null: from the first entry that has a txid (entries older than migration 0020 predate
  -- valuation and post nothing).
  horizon    xid8,
  updated_at timestamptz not null default now()
);
insert into gl_cursor (id) values (1);
