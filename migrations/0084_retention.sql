-- Retention: command outcomes older than the idempotency horizon move to an archive (the apply path
-- never reads it; the duplicate lookup and operators do), and the indexes the pruning job walks in
-- bounded batches (oldest first) so that no pruning statement scans a whole table.

create table command_outcomes_archive (
  command_id  text        primary key,
  partition   integer     not null,
  stream_seq  bigint      not null,
  sku         text        not null,
  type        text        not null,
  status      text        not null,
  reason      text,
  detail      jsonb,
  recorded_at timestamptz not null,
  archived_at timestamptz not null default now()
);
create index command_outcomes_archive_recorded_at on command_outcomes_archive (recorded_at);

-- An outcome a reservation line still names (its current reserve attempt) stays until the reservation is pruned.
create index reservation_lines_command on reservation_lines (command_id) where command_id is not null;

-- Answered POS claims, oldest first (a claim without a result is still being published: never pruned).
create index pos_transactions_answered on pos_transactions (recorded_at) where result is not null;

-- Finished reservations (the four final statuses), by when they finished.
create index reservations_finished on reservations (updated_at) where status in ('fulfilled', 'released', 'expired', 'rejected');

-- Closed holds, by when they closed.
create index holds_closed on holds (updated_at) where status <> 'open';
