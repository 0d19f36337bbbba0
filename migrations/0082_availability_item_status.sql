-- Availability and the catalog agree: a blocked item (and a discontinued one, on channels that do
-- not sell remaining stock) shows availability 0. The outbox relay applies the rule as it publishes
-- (src/channels/itemStatus.ts); when an item's status changes no stock moves, so nothing would be
-- published: this queue makes the relay publish the item's availability again in every channel.

create table availability_restate (
  sku       text        primary key,
  queued_at timestamptz not null default now()
);

-- The relay looks up the status of the SKUs it publishes; most items are active.
create index items_not_active on items (sku) where status <> 'active';

create function tally_item_status_restate() returns trigger language plpgsql as $$
begin
  insert into availability_restate (sku) values (new.sku) on conflict (sku) do update set queued_at = now();
  perform pg_notify('tally_outbox', '');
  return null;
end $$;

create trigger items_status_restate after update of status on items
  for each row when (old.status is distinct from new.status) execute function tally_item_status_restate();
