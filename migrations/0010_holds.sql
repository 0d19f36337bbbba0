-- Holds: every reserve names the order line or checkout line it holds units for. A location's
-- `reserved` balance is always the sum of `open_qty` over its open holds (`tally ledger verify`
-- checks it). Written in the same statement as the ledger entries and balances of a batch.
create table holds (
  sku        text        not null,
  hold_id    text        not null,
  location   text        not null,
  channel    text,
  qty        bigint      not null check (qty > 0),       -- what the reserve asked for
  open_qty   bigint      not null check (open_qty >= 0), -- what the hold still holds
  status     text        not null check (status in ('open', 'released', 'fulfilled', 'expired', 'refused')),
  expires_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null,
  primary key (sku, hold_id),
  constraint holds_open_qty check ((status = 'open') = (open_qty > 0))
);
-- Activation loads a SKU's open holds; the expiry sweeper looks for open holds past their time.
create index holds_open on holds (sku) where status = 'open';
create index holds_due on holds (expires_at) where status = 'open' and expires_at is not null;

-- A ledger from before per-line holds: its reserved units become one legacy hold per SKU and
-- location (hold id `legacy:<location>`), which releases and fulfilments naming a hold the ledger
-- has never seen draw on until it is empty.
insert into holds (sku, hold_id, location, channel, qty, open_qty, status, updated_at)
select sku, 'legacy:' || location, location, null, qty, qty, 'open', now()
  from balances
 where bucket = 'reserved' and qty > 0;
