-- Partitions that are not advancing, as the worker holding each one last saw it: the first message
-- not applied (the checkpoint + 1), how many attempts in a row failed, and the last error. The row
-- exists while the partition is stuck and is removed by the first batch that commits after it.
create table stuck_partitions (
  partition  integer     primary key,
  stream_seq bigint      not null,
  attempts   integer     not null,
  error      text        not null,
  since      timestamptz not null,
  updated_at timestamptz not null
);

-- An operator's request (`tally dlq skip`) that the worker dead-letter one message of a partition
-- instead of applying it, and move on. Kept after it is done, as the record of who skipped what.
create table partition_skips (
  partition    integer     not null,
  stream_seq   bigint      not null,
  requested_by text        not null,
  requested_at timestamptz not null default now(),
  done_at      timestamptz,
  primary key (partition, stream_seq)
);
