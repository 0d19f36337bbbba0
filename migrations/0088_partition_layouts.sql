-- Partition layouts after the environment's first (`TALLY_PARTITIONS`, generation 0): one row per
-- `tally partitions resize`. `draining`: the commands stream takes only the new layout's subjects
-- since `cut_seq` (its last sequence before the cut), and the old layout's partitions are still
-- being applied; `active`: the old layout was drained and workers apply the new one.
create table partition_layouts (
  generation          integer     primary key check (generation >= 1),
  partitions          integer     not null check (partitions between 1 and 1024),
  previous_partitions integer     not null check (previous_partitions between 1 and 1024),
  state               text        not null check (state in ('draining', 'active')),
  cut_seq             bigint      not null check (cut_seq >= 0),
  started_at          timestamptz not null default now(),
  switched_at         timestamptz
);

-- At most one resize drains at a time.
create unique index partition_layouts_one_draining on partition_layouts (state) where state = 'draining';
