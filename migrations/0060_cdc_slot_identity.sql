-- What the CDC reader needs to tell its own replication slot from a new one of the same name, to
-- stop a source whose slot was lost, and to say what it is waiting for.

alter table cdc_sources
  -- The highest LSN the reader has confirmed, or is about to confirm, to the source's slot: written
  -- before each standby status update. Tally's own slot is never confirmed past it, so a slot found
  -- past it was created anew (or advanced by someone else), and what was committed in between never
  -- reached the reader. Null on a row from before this column: the slot found there is adopted.
  add column slot_bound_lsn      text,
  add column slot_bound_at       timestamptz,
  -- Set when the reader stops capturing the source because its slot was lost, replaced or
  -- invalidated (a gap it cannot fill). Cleared when an operator's `tally source resnapshot`
  -- has created a new slot and snapshot.
  add column halted_at           timestamptz,
  add column halted_reason       text check (halted_reason in ('slot_lost', 'slot_replaced', 'slot_invalidated')),
  add column halted_detail       jsonb,
  -- The relation id pgoutput last sent per captured table: a new id means the table was re-created.
  add column relation_ids        jsonb not null default '{}',
  -- While a snapshot's slot creation waits for transactions running on the source server: which.
  add column snapshot_waiting_for jsonb;
