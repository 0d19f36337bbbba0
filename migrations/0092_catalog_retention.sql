-- Retention of catalog history and of dead-letter payloads: the indexes the pruning job walks in
-- bounded batches (oldest first), so that no pruning statement scans a whole table.

-- A catalog version goes once no channel's version row names it (looked up by version).
create index catalog_channel_versions_version on catalog_channel_versions (version);

-- Catalog versions by when they were recorded.
create index catalog_versions_created_at on catalog_versions (created_at);

-- Scheduled price changes already published (done), by when they were due.
create index catalog_due_done on catalog_due (due_at) where done_version is not null;

-- Prices that end, by when they end (one that ended is never in effect again).
create index catalog_prices_ended on catalog_prices (valid_to) where valid_to is not null;

-- Payloads of dead letters, by when their letter was (last) published.
create index dead_letter_payloads_created_at on dead_letter_payloads (created_at);
