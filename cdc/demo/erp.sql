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
