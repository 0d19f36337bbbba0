-- The channel API: POS idempotency records, reservations (durable holds with expiry), a ledger index for paging.

-- Every POS transaction accepted, keyed by what the POS calls it: a resend gets `result` back and publishes nothing.
create table pos_transactions (
  store          text        not null,
  terminal       text        not null,
  transaction_id text        not null,
  payload_hash   text        not null,  -- sha256 of the transaction's canonical JSON: same key, other content → conflict
  result         jsonb       not null,
  recorded_at    timestamptz not null default now(),
  primary key (store, terminal, transaction_id)
);

-- A checkout hold of one or more lines; the durable timer of its expiry (a sweeper releases due holds).
create table reservations (
  id              text        primary key,
  principal       text        not null,   -- the API token that made it: Idempotency-Key is scoped to it
  idempotency_key text        not null,
  request_hash    text        not null,
  channel         text,
  status          text        not null check (status in ('pending', 'held', 'committed', 'fulfilled', 'released', 'expired', 'rejected')),
  ttl_seconds     integer     not null,
  expires_at      timestamptz,
  -- While a process decides a pending reservation it holds this claim; a stale claim lets the sweeper finish the job.
  claimed_until   timestamptz,
  response_status integer,
  response_body   jsonb,
  created_at      timestamptz not null default now(),
  updated_at      timestamptz not null default now(),
  constraint reservations_idempotency unique (principal, idempotency_key)
);
create index reservations_due on reservations (expires_at) where status = 'held';
create index reservations_pending on reservations (claimed_until) where status = 'pending';

-- One line of a reservation: the SKU's actor decides each `reserve` command; at most one attempt is undecided.
create table reservation_lines (
  reservation_id text    not null references reservations (id),
  line           integer not null,
  sku            text    not null,
  qty            bigint  not null check (qty > 0),
  fixed_location text,            -- the location asked for; null: pick one of the channel's
  location       text,            -- the location of the current attempt
  command_id     text,            -- the current attempt's reserve command
  tried          text[]  not null default '{}',
  state          text    not null check (state in ('pending', 'held', 'rejected', 'released', 'fulfilled')),
  available      bigint,          -- what was available when rejected
  primary key (reservation_id, line)
);

-- Ledger paging by SKU in entry order (GET /v1/ledger/entries?sku=…).
create index ledger_entries_sku_entry on ledger_entries (sku, entry_id);
