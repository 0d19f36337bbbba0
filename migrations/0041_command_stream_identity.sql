-- Which commands stream the partition checkpoints belong to: JetStream's creation time of the
-- stream. A stream re-created under the same name (a wiped store) restarts its sequences at 1,
-- below the checkpoints; the worker notices the different creation time instead of skipping.
create table command_stream_identity (
  stream     text        primary key,
  created    text        not null,
  adopted_at timestamptz not null default now()
);

-- Every time the checkpoints were moved to a new commands stream: what they were, for the record.
create table command_stream_resets (
  id          bigint generated always as identity primary key,
  stream      text        not null,
  old_created text,
  new_created text        not null,
  checkpoints jsonb       not null,
  at          timestamptz not null default now()
);
