-- Demo ERP: the reference schema Tally's demo source `erp` captures (see cdc/demo/mappings.ts).
-- Idempotent: applying it twice is harmless. Quantities are exact decimals in the row's unit of
-- measure (EA, CASE = items.case_qty EA, KG for variable-weight items); Tally converts them to
-- integral base units (EA, or g for variable-weight items).

-- A trigger function that stamps updated_at on every update.
create or replace function erp_touch_updated_at() returns trigger language plpgsql as $$
begin
  new.updated_at := now();
  return new;
end $$;

-- The item master. Tally keeps its item crosswalk current from this table: every identifier
-- (item_no, barcode, plu, shop_sku) maps to `sku`. Bundles list their components by SKU.
create table if not exists items (
  item_no     text        primary key,
  sku         text        not null unique,
  description text        not null default '',
  kind        text        not null default 'stock'
              check (kind in ('stock', 'non_inventory', 'bundle', 'variable_weight')),
  base_uom    text        not null default 'EA' check (base_uom in ('EA', 'KG')),
  case_qty    integer     check (case_qty is null or case_qty > 0),   -- base units per CASE
  barcode     text        unique,
  plu         text        unique,
  shop_sku    text        unique,
  components  jsonb       not null default '[]'                       -- bundles: [{"sku": "SKU-0001", "qty": 2}]
              check (jsonb_typeof(components) = 'array'),
  updated_at  timestamptz not null default now(),
  constraint items_weight_in_kg check ((kind = 'variable_weight') = (base_uom = 'KG')),
  constraint items_bundle_components check ((kind = 'bundle') = (jsonb_array_length(components) > 0))
);
-- A delete must carry the SKU (not only item_no) and an update may leave components as an
-- unchanged TOAST value: the old row must be complete.
alter table items replica identity full;
create or replace trigger items_touch before update on items
  for each row execute function erp_touch_updated_at();

-- Stock policy per item and location (no cascade: remove an item's policies before the item).
create table if not exists item_locations (
  item_no       text    not null references items (item_no),
  location      text    not null,
  safety_stock  integer not null default 0 check (safety_stock >= 0),
  reorder_point integer not null default 0 check (reorder_point >= 0),
  primary key (item_no, location)
);

-- Goods receipts (supplier → DC or store). Immutable: a mistake is corrected by an adjustment.
create table if not exists goods_receipts (
  receipt_id  bigserial      primary key,
  item_no     text           not null references items (item_no),
  location    text           not null,
  qty         numeric(12, 3) not null check (qty > 0),
  uom         text           not null default 'EA' check (uom in ('EA', 'CASE', 'KG')),
  received_at timestamptz    not null default now()
);
-- What one stock unit of the item cost (each, or gram for a variable-weight item), in units of
-- `currency` (an ISO 4217 code); both optional (a receipt without a cost is valued at the average).
alter table goods_receipts
  add column if not exists unit_cost numeric(12, 4) check (unit_cost >= 0),
  add column if not exists currency  text check (currency ~ '^[A-Z]{3}$');

-- Manual stock corrections: qty is signed (negative = shrink, damage; positive = found).
create table if not exists stock_adjustments (
  adjustment_id bigserial      primary key,
  item_no       text           not null references items (item_no),
  location      text           not null,
  qty           numeric(12, 3) not null check (qty <> 0),
  uom           text           not null default 'EA' check (uom in ('EA', 'CASE', 'KG')),
  reason        text           not null check (reason <> ''),
  adjusted_at   timestamptz    not null default now()
);

-- Physical counts: counted_qty is the on-hand found; Tally records the difference.
create table if not exists stock_counts (
  count_id    bigserial      primary key,
  item_no     text           not null references items (item_no),
  location    text           not null,
  counted_qty numeric(12, 3) not null check (counted_qty >= 0),
  uom         text           not null default 'EA' check (uom in ('EA', 'CASE', 'KG')),
  counted_at  timestamptz    not null default now()
);

-- Transfers between locations: inserted as 'shipped' (transfer_out at the origin), then
-- updated to 'received' (transfer_in at the destination). The mapping compares old and new
-- status, so the old row must be complete.
create table if not exists transfers (
  transfer_id   text        primary key,
  item_no       text        not null references items (item_no),
  from_location text        not null,
  to_location   text        not null,
  qty           integer     not null check (qty > 0),          -- base units (EA; g for variable weight)
  status        text        not null default 'shipped' check (status in ('shipped', 'received')),
  shipped_at    timestamptz not null default now(),
  received_at   timestamptz,
  constraint transfers_distinct_locations check (from_location <> to_location)
);
alter table transfers replica identity full;
-- Stamps received_at when a transfer is received without one.
create or replace function erp_stamp_received_at() returns trigger language plpgsql as $$
begin
  if new.status = 'received' and new.received_at is null then
    new.received_at := now();
  end if;
  return new;
end $$;
create or replace trigger transfers_stamp_received before insert or update on transfers
  for each row execute function erp_stamp_received_at();

-- Opening balances: read once, inside the replication slot's exported snapshot, as counts.
-- Not streamed (in a real ERP it is derived from the movements above).
create table if not exists stock_on_hand (
  item_no  text           not null references items (item_no),
  location text           not null,
  qty      numeric(12, 3) not null check (qty >= 0),
  uom      text           not null default 'EA' check (uom in ('EA', 'CASE', 'KG')),
  primary key (item_no, location)
);

-- The catalog: each item's status (channels sell active items only) and free-form attributes.
alter table items
  add column if not exists status     text  not null default 'active' check (status in ('active', 'discontinued', 'blocked')),
  add column if not exists attributes jsonb not null default '{}' check (jsonb_typeof(attributes) = 'object');

-- Price lists: each prices one Tally channel (`web`, `store_s01` …) in one currency.
create table if not exists price_lists (
  price_list text primary key,
  channel    text not null,
  currency   text not null check (currency ~ '^[A-Z]{3}$')
);

-- Prices per item and list, from `valid_from` (a price starting later is published when it starts)
-- until `valid_to` (null: open-ended). A promotion is a price with a window over the regular one:
-- of the prices in effect, the one that started last wins.
create table if not exists item_prices (
  item_no    text           not null references items (item_no) on delete cascade,
  price_list text           not null references price_lists (price_list),
  amount     numeric(12, 2) not null check (amount >= 0),
  valid_from timestamptz    not null default now(),
  valid_to   timestamptz,
  primary key (item_no, price_list, valid_from),
  constraint item_prices_window check (valid_to is null or valid_to > valid_from)
);
-- A delete or a moved window must carry the whole old row.
alter table item_prices replica identity full;
-- A real ERP allows negative stock (a sale booked before its receipt); the on-hand below is kept
-- current by the triggers that follow, so it may dip below zero for a moment.
alter table stock_on_hand drop constraint if exists stock_on_hand_qty_check;

-- Where an adjustment came from: null = entered in the ERP; 'tally' = imported from Tally's
-- write-back (inbound_movements below). The demo mapping skips 'tally' rows, so what Tally wrote
-- never comes back to it as a new movement.
alter table stock_adjustments add column if not exists origin text;

-- ---------------------------------------------------------------------------------------------
-- On hand, kept current from the movements, as a real ERP's is: every receipt, adjustment, count
-- and transfer books its effect on stock_on_hand in the same transaction. Quantities are kept in
-- the item's stock unit (base_uom: EA, or KG for variable-weight items).
-- ---------------------------------------------------------------------------------------------

-- A quantity in `uom` → the item's stock unit (a CASE is case_qty stock units).
create or replace function erp_stock_qty(p_item text, p_qty numeric, p_uom text) returns numeric language sql stable as $$
  select case when p_uom = 'CASE' then p_qty * coalesce(i.case_qty, 1) else p_qty end from items i where i.item_no = p_item
$$;

-- Adds `delta` (stock units) to the on-hand of an item at a location (or, with `absolute`, sets it).
create or replace function erp_book_stock(p_item text, p_location text, p_qty numeric, absolute boolean default false)
returns void language plpgsql as $$
declare
  unit text := (select base_uom from items where item_no = p_item);
begin
  insert into stock_on_hand as s (item_no, location, qty, uom) values (p_item, p_location, p_qty, unit)
  on conflict (item_no, location) do update
    set qty = case when absolute then excluded.qty else erp_stock_qty(s.item_no, s.qty, s.uom) + excluded.qty end,
        uom = excluded.uom;
end $$;

-- Receipts and adjustments are booked once per statement, summed per (item, location), as an ERP's
-- posting run does: a bulk load of a million receipt lines is one update per item and location,
-- not a million updates of the same few rows. The rows are locked in (item, location) order: two
-- postings of the same hot items in different orders would deadlock, and each deadlock costs
-- deadlock_timeout (1 s) before one of them fails.
create or replace function erp_book_receipts() returns trigger language plpgsql as $$
begin
  insert into stock_on_hand as s (item_no, location, qty, uom)
  select n.item_no, n.location, sum(erp_stock_qty(n.item_no, n.qty, n.uom)), min(i.base_uom)
    from new_rows n join items i on i.item_no = n.item_no
   group by n.item_no, n.location
   order by n.item_no, n.location
  on conflict (item_no, location) do update
    set qty = erp_stock_qty(s.item_no, s.qty, s.uom) + excluded.qty,
        uom = excluded.uom;
  return null;
end $$;
drop trigger if exists goods_receipts_book on goods_receipts;
create trigger goods_receipts_book after insert on goods_receipts
  referencing new table as new_rows for each statement execute function erp_book_receipts();
drop trigger if exists stock_adjustments_book on stock_adjustments;
create trigger stock_adjustments_book after insert on stock_adjustments
  referencing new table as new_rows for each statement execute function erp_book_receipts();

create or replace function erp_book_count() returns trigger language plpgsql as $$
begin
  perform erp_book_stock(new.item_no, new.location, erp_stock_qty(new.item_no, new.counted_qty, new.uom), true);
  return null;
end $$;
create or replace trigger stock_counts_book after insert on stock_counts
  for each row execute function erp_book_count();

-- Transfers count base units (EA; g for a variable-weight item, whose stock unit is KG): out of the
-- origin when shipped, into the destination when received.
create or replace function erp_book_transfer() returns trigger language plpgsql as $$
declare
  stock_qty numeric := new.qty / (case when (select base_uom from items where item_no = new.item_no) = 'KG' then 1000 else 1 end);
begin
  if tg_op = 'INSERT' then
    perform erp_book_stock(new.item_no, new.from_location, -stock_qty);
  end if;
  if new.status = 'received' and (tg_op = 'INSERT' or old.status <> 'received') then
    perform erp_book_stock(new.item_no, new.to_location, stock_qty);
  end if;
  return null;
end $$;
create or replace trigger transfers_book after insert or update on transfers
  for each row execute function erp_book_transfer();

-- ---------------------------------------------------------------------------------------------
-- The inbound interface: what Tally's write-back inserts (see the README, "Write-back to the ERP").
-- Keyed by Tally's (command_id, leg) / (journal_id, line), so a re-sent row is inserted only once.
-- Not captured by CDC.
-- ---------------------------------------------------------------------------------------------

-- Movements that did not come from this ERP (POS sales and returns, shop shipments, counts,
-- adjustments, transfers): the signed change to on-hand in the item's stock unit.
create table if not exists inbound_movements (
  command_id    text           not null,
  leg           smallint       not null,
  item_no       text           not null,
  location      text           not null,
  qty           numeric(14, 3) not null check (qty <> 0),
  uom           text           not null check (uom in ('EA', 'KG')),
  movement      text           not null,
  -- Integer minor units of `currency` (null when Tally had no value for the movement).
  unit_cost     numeric(38, 0),
  value         numeric(38, 0),
  currency      text           check (currency ~ '^[A-Z]{3}$'),
  occurred_at   timestamptz    not null,
  -- Where the movement came from in Tally (pos, shop, api…) and its reference there.
  source_system text           not null,
  source_ref    text           not null,
  received_at   timestamptz    not null default now(),
  primary key (command_id, leg)
);

-- The import job: an inbound movement is booked as an adjustment marked origin 'tally' (which the
-- on-hand trigger above applies, and the demo mapping does not capture). Once per statement, in the
-- order the rows came (the ledger's, per SKU): the adjustments are then booked by one statement,
-- locking the on-hand rows in (item, location) order as every receipt does. Booked row by row, a
-- write-back batch locked them in its own order, and receipts posted meanwhile deadlocked with it.
create or replace function erp_import_movement() returns trigger language plpgsql as $$
begin
  insert into stock_adjustments (item_no, location, qty, uom, reason, origin, adjusted_at)
  select n.item_no, n.location, n.qty, n.uom, 'tally ' || n.movement || ' ' || n.command_id, 'tally', n.occurred_at from new_rows n;
  return null;
end $$;
drop trigger if exists inbound_movements_import on inbound_movements;
create trigger inbound_movements_import after insert on inbound_movements
  referencing new table as new_rows for each statement execute function erp_import_movement();

-- GL journal lines from Tally. Amounts are integer minor units of `currency` (numeric(38,0), exact
-- for every currency's number of decimals); exactly one of debit and credit is positive.
create table if not exists inbound_journal (
  journal_id    text           not null,
  line          smallint       not null,
  account       text           not null,
  cost_center   text           not null,
  debit         numeric(38, 0) not null default 0 check (debit >= 0),
  credit        numeric(38, 0) not null default 0 check (credit >= 0),
  currency      text           not null check (currency ~ '^[A-Z]{3}$'),
  posted_on     date           not null,
  business_date date           not null,
  sku           text,
  item_no       text,
  qty           bigint,
  unit          text,
  command_id    text,
  movement      text           not null,
  received_at   timestamptz    not null default now(),
  primary key (journal_id, line)
);

-- Replenishment requests from Tally (a location's available fell to its reorder point or below):
-- purchase-requisition suggestions for a buyer to approve. `qty` is the shortfall in the item's
-- stock unit. Keyed by the request (the command that caused it, the SKU and the location).
create table if not exists inbound_requisitions (
  requisition_id text           primary key,
  item_no        text           not null,
  location       text           not null,
  qty            numeric(14, 3) not null check (qty > 0),
  uom            text           not null check (uom in ('EA', 'KG')),
  available      numeric(14, 3) not null,
  reorder_point  numeric(14, 3) not null,
  command_id     text           not null,
  requested_at   timestamptz    not null,
  status         text           not null default 'suggested' check (status in ('suggested', 'approved', 'rejected')),
  received_at    timestamptz    not null default now()
);
