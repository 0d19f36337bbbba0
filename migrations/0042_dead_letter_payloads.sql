-- Payloads of dead letters too large for a NATS message: the letter in the dead-letter stream
-- carries the key instead of the payload, and says so. Bytes, as received (text may hold a NUL).
create table dead_letter_payloads (
  key        text        primary key,
  origin     text        not null,
  payload    bytea       not null,
  created_at timestamptz not null default now()
);
