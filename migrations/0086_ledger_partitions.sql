-- The ledger partitioned by month on recorded_at (the worker's time of applying, UTC months), so
-- that old months can be exported to files and detached (`tally ledger archive`) while the hash
-- chain stays verifiable across the cut (`tally ledger verify --archive`).
--
-- Postgres wants the partition key in every unique constraint of a partitioned table, so the two
-- global guarantees of the entries move to a narrow unpartitioned table, `ledger_entry_keys`,
-- filled by a statement trigger in the inserting statement itself:
--   * ledger_entries_command_leg (command_id, leg): a command's legs are written once, ever — also
--     for a command whose month was archived and detached (the keys are never archived), so a
--     replayed duplicate older than every other horizon is still refused;
--   * ledger_entries_sku_seq (sku, sku_seq): one entry per position of a SKU's chain.
-- The constraints keep their names, so a duplicate is recognised exactly as before.
--
-- The existing entries are copied into the new monthly partitions (txid and entry_id kept, so
-- export and GL cursors stay valid), then the old table is dropped.

-- The old table steps aside, freeing its names.
alter table ledger_entries rename to ledger_entries_0086;
alter sequence ledger_entries_entry_id_seq rename to ledger_entries_0086_entry_id_seq;
alter table ledger_entries_0086
  drop constraint ledger_entries_pkey,
  drop constraint ledger_entries_command_leg,
  drop constraint ledger_entries_sku_seq;
drop index ledger_entries_recorded_at, ledger_entries_sku_entry, ledger_entries_txid;

create table ledger_entries (
  entry_id       bigint generated always as identity,
  command_id     text        not null,
  leg            smallint    not null,
  sku            text        not null,
  location       text        not null,
  bucket         text        not null check (bucket in ('on_hand', 'reserved', 'in_transit', 'damaged')),
  delta          bigint      not null check (delta <> 0),
  balance_after  bigint      not null,
  movement       text        not null,
  source_system  text        not null,
  source_ref     text        not null,
  occurred_at    timestamptz not null,
  recorded_at    timestamptz not null,
  sku_seq        bigint      not null,
  prev_hash      text        not null,
  hash           text        not null,
  txid           xid8        default pg_current_xact_id(),
  value          numeric(38, 0),
  unit_cost      numeric(38, 0),
  valuation_flag text constraint ledger_entries_valuation_flag_check
                      check (valuation_flag in ('no_cost', 'negative_stock', 'currency_mismatch')),
  constraint ledger_entries_pkey primary key (entry_id, recorded_at)
) partition by range (recorded_at);
create index ledger_entries_recorded_at on ledger_entries (recorded_at, entry_id);
create index ledger_entries_sku_entry on ledger_entries (sku, entry_id);
create index ledger_entries_txid on ledger_entries (txid);
-- What the unique constraints' indexes served before: chain walks and lookups by command.
create index ledger_entries_sku_seq_idx on ledger_entries (sku, sku_seq);
create index ledger_entries_command_idx on ledger_entries (command_id, leg);

-- Row triggers are cloned to every partition (present and future); a statement trigger is not, so
-- the TRUNCATE refusal is added to each partition by tally_ledger_month_partition below.
create trigger ledger_entries_append_only
  before update or delete on ledger_entries
  for each row execute function tally_refuse_ledger_change();
create trigger ledger_entries_no_truncate
  before truncate on ledger_entries
  for each statement execute function tally_refuse_ledger_change();

-- The safety net: an entry of a month without a partition is still written (never refused).
create table ledger_entries_default partition of ledger_entries default;
create trigger ledger_entries_no_truncate before truncate on ledger_entries_default
  for each statement execute function tally_refuse_ledger_change();

-- The global keys of every entry ever written (archived months included). Append-only too.
create table ledger_entry_keys (
  command_id text     not null,
  leg        smallint not null,
  sku        text     not null,
  sku_seq    bigint   not null,
  constraint ledger_entries_command_leg primary key (command_id, leg),
  constraint ledger_entries_sku_seq unique (sku, sku_seq)
);
create trigger ledger_entry_keys_append_only before update or delete on ledger_entry_keys
  for each row execute function tally_refuse_ledger_change();
create trigger ledger_entry_keys_no_truncate before truncate on ledger_entry_keys
  for each statement execute function tally_refuse_ledger_change();

-- One statement per inserting statement (not one call per row): a worker's batch is one insert.
create function tally_ledger_entry_keys() returns trigger language plpgsql as $$
begin
  insert into ledger_entry_keys (command_id, leg, sku, sku_seq) select command_id, leg, sku, sku_seq from new_entries;
  return null;
end $$;
create trigger ledger_entries_keys after insert on ledger_entries
  referencing new table as new_entries
  for each statement execute function tally_ledger_entry_keys();

-- Months archived by `tally ledger archive`: their partitions are detached, their files listed here.
create table ledger_archive_months (
  month         text        primary key check (month ~ '^[0-9]{4}-(0[1-9]|1[0-2])$'),
  file          text        not null,
  sha256        text        not null,
  entries       bigint      not null,
  manifest_sha256 text      not null,
  archived_at   timestamptz not null default now()
);
-- Each SKU's chain state at the cut (after its last archived entry): the sequence and hash the
-- live chain continues from, and the running sums and valuation verify resumes with.
create table ledger_archive_heads (
  sku   text   primary key,
  seq   bigint not null,
  hash  text   not null,
  month text   not null,
  state jsonb  not null
);

-- The partition of one UTC month (`ledger_entries_YYYY_MM`), created when missing. SECURITY
-- DEFINER: a worker (runtime role) calls it, but the partition is owned by the owner, as the
-- ledger is (the runtime role, owning nothing, cannot disable its triggers). A month already
-- archived is never created again; a month whose rows went into the default partition is left
-- there (creating it would fail) and returns false.
create function tally_ledger_month_partition(month date) returns boolean
  language plpgsql volatile security definer set search_path from current as $$
declare
  lo timestamptz := (date_trunc('month', month)::timestamp at time zone 'UTC');
  hi timestamptz := ((date_trunc('month', month) + interval '1 month')::timestamp at time zone 'UTC');
  part text := 'ledger_entries_' || to_char(month, 'YYYY_MM');
begin
  if to_regclass(part) is not null then return true; end if;
  if exists (select from ledger_archive_months a where a.month = to_char(tally_ledger_month_partition.month, 'YYYY-MM')) then
    return false;
  end if;
  if exists (select from ledger_entries_default where recorded_at >= lo and recorded_at < hi) then
    return false;
  end if;
  execute format('create table %I partition of ledger_entries for values from (%L) to (%L)', part, lo, hi);
  execute format('create trigger ledger_entries_no_truncate before truncate on %I
                    for each statement execute function tally_refuse_ledger_change()', part);
  return true;
end $$;

-- The current month's partition and the next `months_ahead`; returns how many exist afterwards.
create function tally_ledger_partitions(months_ahead integer default 2) returns integer
  language plpgsql volatile security definer set search_path from current as $$
declare
  m date;
  n integer := 0;
begin
  for m in select generate_series(date_trunc('month', now() at time zone 'UTC'),
                                  date_trunc('month', now() at time zone 'UTC') + make_interval(months => months_ahead),
                                  interval '1 month')::date loop
    if tally_ledger_month_partition(m) then n := n + 1; end if;
  end loop;
  return n;
end $$;

-- Partitions for every month the existing entries fall in, and the next ones.
do $$
declare
  m date;
begin
  for m in select distinct date_trunc('month', recorded_at at time zone 'UTC')::date from ledger_entries_0086 loop
    perform tally_ledger_month_partition(m);
  end loop;
  perform tally_ledger_partitions(2);
end $$;

insert into ledger_entries (entry_id, command_id, leg, sku, location, bucket, delta, balance_after, movement,
                            source_system, source_ref, occurred_at, recorded_at, sku_seq, prev_hash, hash,
                            txid, value, unit_cost, valuation_flag)
overriding system value
select entry_id, command_id, leg, sku, location, bucket, delta, balance_after, movement,
       source_system, source_ref, occurred_at, recorded_at, sku_seq, prev_hash, hash,
       txid, value, unit_cost, valuation_flag
  from ledger_entries_0086 order by entry_id;

-- New entries continue after the copied ones.
do $$
declare
  next_id bigint;
begin
  select greatest(coalesce((select max(entry_id) from ledger_entries_0086), 0),
                  (select last_value from ledger_entries_0086_entry_id_seq)) + 1 into next_id;
  execute format('alter table ledger_entries alter column entry_id restart with %s', next_id);
end $$;

drop table ledger_entries_0086;
