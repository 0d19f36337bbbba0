-- Reconciliation runs of the cdc role (scheduled, and after a re-snapshot): when, at which source
-- position, what drifted and what was done about it. The dashboard and `tally source resnapshot`
-- read the last run per source; the history is bounded (the cdc role keeps the last 1000 per source).

create table reconcile_runs (
  run_id        bigserial primary key,
  source        text not null,
  -- `schedule` (reconcileEvery) or `resnapshot` (after `tally source resnapshot`: applies per systemOfRecord).
  trigger       text not null check (trigger in ('schedule', 'resnapshot')),
  started_at    timestamptz not null,
  finished_at   timestamptz not null default now(),
  -- The source's WAL position the comparison is at (null when the run failed before reading it).
  at_lsn        text,
  tolerance     integer not null check (tolerance >= 0),
  -- The pairs above the tolerance, before anything was applied: count and Σ|diff| in base units.
  drift_pairs   integer not null default 0,
  drift_units   numeric(38,0) not null default 0,
  -- [{sku, location, ledger, source, diff[, inFlight]}], as `tally reconcile --format json` reports it.
  drift         jsonb not null default '[]',
  -- Reconciliation counts recorded (where the ERP wins), and the pairs where Tally wins: written
  -- back through the source's correction hook, or left to write back when none is wired.
  applied       integer not null default 0,
  corrected     jsonb not null default '[]',
  to_write_back jsonb not null default '[]',
  error         text
);

create index reconcile_runs_source on reconcile_runs (source, run_id desc);

-- Set when a re-snapshot (which no longer overwrites on-hand) has been placed in the stream: the
-- cdc role then reconciles the source, applying per systemOfRecord, and clears it.
alter table cdc_sources add column reconcile_requested_at timestamptz;
