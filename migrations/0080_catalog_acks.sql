-- Which catalog version each channel runs: the highest version it acknowledged having applied
-- (`POST /v1/channels/:channel/catalog-ack`, or the NATS subject `tally.<env>.catalog-ack.<channel>`).
-- An acknowledgement never moves a channel back: a late or repeated one of a lower version changes
-- nothing. How long a channel has been behind is not stored: it is the age of the oldest catalog
-- version above its acknowledged one (`catalog_versions.created_at`).
create table catalog_acks (
  channel       text        primary key,
  acked_version bigint      not null check (acked_version >= 0),
  acked_at      timestamptz not null default now(),
  acked_by      text        not null
);

-- The catalog versions that changed a channel's catalog (recorded with its projections): a channel
-- is behind when one of them lies above its acknowledged version, and has been since the oldest such.
create table catalog_channel_versions (
  channel text   not null,
  version bigint not null,
  primary key (channel, version)
);
