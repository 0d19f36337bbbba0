-- The ledger database: append-only entries, derived balances, per-SKU heads, partition checkpoints, outbox.

create table tally_meta (
  key   text primary key,
  value text not null
);

-- One row per leg. Never updated or deleted (see the trigger below).
create table ledger_entries (
  entry_id      bigint generated always as identity primary key,
  command_id    text        not null,
  leg           smallint    not null,
  sku           text        not null,
  location      text        not null,
  bucket        text        not null check (bucket in ('on_hand', 'reserved', 'in_transit', 'damaged')),
  delta         bigint      not null check (delta <> 0),
  balance_after bigint      not null,
  movement      text        not null,
  source_system text        not null,
  source_ref    text        not null,
  occurred_at   timestamptz not null,
  recorded_at   timestamptz not null,
  sku_seq       bigint      not null,
  prev_hash     text        not null,
  hash          text        not null,
  constraint ledger_entries_command_leg unique (command_id, leg),
  constraint ledger_entries_sku_seq unique (sku, sku_seq)
);
create index ledger_entries_recorded_at on ledger_entries (recorded_at, entry_id);

create function tally_refuse_ledger_change() returns trigger language plpgsql as $$
begin
  raise exception 'ledger_entries is append-only: % refused', tg_op
    using errcode = 'restrict_violation';
end $$;

create trigger ledger_entries_append_only
  before update or delete on ledger_entries
  for each row execute function tally_refuse_ledger_change();
create trigger ledger_entries_no_truncate
  before truncate on ledger_entries
  for each statement execute function tally_refuse_ledger_change();

-- Current quantity per (sku, location, bucket): the sum of that key's entries.
create table balances (
  sku        text        not null,
  location   text        not null,
  bucket     text        not null,
  qty        bigint      not null,
  updated_at timestamptz not null,
  primary key (sku, location, bucket)
);

-- The head of each SKU's hash chain, and a version bumped by every applied command.
create table sku_heads (
  sku        text        primary key,
  seq        bigint      not null,
  last_hash  text        not null,
  version    bigint      not null,
  updated_at timestamptz not null
);

-- Policy (from the ERP item master) and stock status per SKU and location.
create table sku_locations (
  sku           text   not null,
  location      text   not null,
  safety_stock  bigint not null default 0,
  reorder_point bigint not null default 0,
  status        text   not null default 'out',
  primary key (sku, location)
);

-- Open transfers, keyed by transfer id; settled ones are removed.
create table transfers (
  sku           text   not null,
  transfer_id   text   not null,
  from_location text   not null,
  to_location   text   not null,
  shipped       bigint not null,
  received      bigint not null,
  primary key (sku, transfer_id)
);

-- Every command seen by a worker, applied or rejected: the idempotency record.
create table command_outcomes (
  command_id  text        primary key,
  partition   integer     not null,
  stream_seq  bigint      not null,
  sku         text        not null,
  type        text        not null,
  status      text        not null check (status in ('applied', 'rejected')),
  reason      text,
  detail      jsonb,
  recorded_at timestamptz not null
);
create index command_outcomes_recorded_at on command_outcomes (recorded_at);

-- The last applied stream sequence per partition, and the lease epoch that may write it (fencing).
create table partition_checkpoints (
  partition   integer     primary key,
  last_seq    bigint      not null default 0,
  lease_epoch bigint      not null default 0,
  updated_at  timestamptz not null default now()
);

-- Projections and events to publish after commit; the relay deletes a row once NATS has it.
create table outbox (
  id         bigint generated always as identity primary key,
  kind       text        not null check (kind in ('availability', 'event')),
  subject    text        not null,
  kv_key     text,
  payload    jsonb       not null,
  created_at timestamptz not null default now()
);
