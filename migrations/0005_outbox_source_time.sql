-- End-to-end latency: an availability row remembers when the oldest command behind it happened at
-- its source, so the relay can measure source time → availability published.
alter table outbox add column source_at timestamptz, add column source text;
