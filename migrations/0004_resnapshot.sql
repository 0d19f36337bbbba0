-- `tally source resnapshot`: a request the running CDC reader picks up (it snapshots again through a
-- temporary slot while streaming on, and places the new counts exactly at the snapshot's position).
alter table cdc_sources add column resnapshot_requested_at timestamptz;
