-- The item crosswalk (kept current from the ERP item master by CDC) and per-source CDC state.

create table items (
  sku        text        primary key,
  kind       text        not null check (kind in ('stock', 'non_inventory', 'bundle')),
  base_unit  text        not null,
  units      jsonb       not null default '{}',   -- unit → integral base units per unit: {"CASE": 12}, {"kg": 1000}
  components jsonb       not null default '[]',   -- bundles: [{"sku": …, "qty": …}]
  defined_by text        not null,                -- the source whose item master defined it
  updated_at timestamptz not null default now()
);

create table item_identifiers (
  system     text not null,  -- erp_item, shop_sku, barcode, plu …
  identifier text not null,
  sku        text not null references items (sku) on delete cascade,
  uom        text,           -- a unit the identifier implies (e.g. a case barcode)
  primary key (system, identifier)
);
create index item_identifiers_sku on item_identifiers (sku);

create table cdc_sources (
  source            text        primary key,
  slot              text        not null,
  publication       text        not null,
  -- The slot's consistent point and when its snapshot was fully published (null: not yet, redo it).
  snapshot_lsn      text,
  snapshot_done_at  timestamptz,
  snapshot_rows     bigint      not null default 0,
  confirmed_lsn     text,
  last_event_at     timestamptz,
  last_heartbeat_at timestamptz,
  changes           bigint      not null default 0,
  commands          bigint      not null default 0,
  skipped           bigint      not null default 0,
  dead_letters      bigint      not null default 0,
  updated_at        timestamptz not null default now()
);
