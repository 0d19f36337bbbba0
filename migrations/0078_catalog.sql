-- The catalog channels show: each item's name, status and unit (on the crosswalk's `items` rows),
-- price lists and prices, numbered catalog versions, each channel's current projection of each
-- item, the durable schedule of price changes that take effect later, and the outbox of
-- projections on their way to NATS.

-- The item master's catalog facts, on the item the crosswalk already keeps (null name: no catalog
-- fact has reached the item yet; the projection then shows its SKU).
alter table items
  add column name        text,
  add column description text,
  add column status      text  not null default 'active' check (status in ('active', 'discontinued', 'blocked')),
  -- The unit a price is for (`EA`, `kg`), when it is not the base unit.
  add column price_unit  text,
  add column attributes  jsonb not null default '{}' check (jsonb_typeof(attributes) = 'object');

-- The environment's last catalog version. One row; writers lock it, so versions are handed out in
-- commit order and a reader of versions above N never misses one committed later with a lower number.
create table catalog_head (
  id      boolean primary key default true check (id),
  version bigint  not null default 0
);
insert into catalog_head default values;

-- One row per catalog version: a source transaction that changed the catalog (`source_ref` its
-- commit LSN, or `snapshot:<lsn>`), or a due price change the scheduler published (`schedule:<ids>`).
-- Unique per source and ref: a source transaction sent again after a restart is not a new version.
create table catalog_versions (
  version    bigint      primary key,
  source     text        not null,
  source_ref text        not null,
  source_at  timestamptz,
  facts      integer     not null,
  created_at timestamptz not null default now(),
  unique (source, source_ref)
);

-- Which channel a price list prices, and in which currency.
create table catalog_price_lists (
  price_list text        primary key,
  channel    text        not null,
  currency   text        not null check (currency ~ '^[A-Z]{3}$'),
  defined_by text        not null,
  updated_at timestamptz not null default now()
);

-- Prices as the source keeps them. `amount` is the source's exact decimal (the list's currency may
-- change, and a conversion must not be taken twice); projections carry integer minor units of the
-- list's currency (`toMinorUnits`). Of the prices of one item and list in effect at a moment, the
-- one that started last wins (a promotion over the regular price).
create table catalog_prices (
  sku        text        not null,
  price_list text        not null,
  valid_from timestamptz not null,
  valid_to   timestamptz check (valid_to is null or valid_to > valid_from),
  amount     numeric     not null check (amount >= 0),
  primary key (sku, price_list, valid_from)
);

-- What each channel shows of each item (the CatalogValue JSON), as of the version it last changed
-- at. A payload with `"removed": true` is a tombstone: the item left the catalog (the delta feed
-- reports it; the KV key is deleted).
create table catalog_projections (
  channel text   not null,
  sku     text   not null,
  version bigint not null,
  payload jsonb  not null,
  primary key (channel, sku)
);
create index catalog_projections_delta on catalog_projections (channel, version, sku);

-- The durable scheduler: a price (or the end of one) that takes effect later. The catalog
-- publisher makes one version of every row due by then, and marks them done in that version.
create table catalog_due (
  id           bigserial   primary key,
  due_at       timestamptz not null,
  sku          text        not null,
  scheduled_by bigint      not null,
  done_version bigint
);
create index catalog_due_pending on catalog_due (due_at) where done_version is null;

-- Projections waiting for NATS (the KV bucket and a subject per change), in version order.
create table catalog_outbox (
  id      bigserial primary key,
  version bigint    not null,
  channel text      not null,
  sku     text      not null,
  payload jsonb     not null
);
