-- Bundle availability. A bundle (an item of kind 'bundle' with `components`) has no ledger of its own:
-- the outbox relay derives its availability per channel from its components' whenever one of them
-- changes, or its definition does. Three tables serve that:
--   bundle_components    the reverse index, component → the bundles containing it (kept by a trigger on items);
--   bundle_changes       bundles whose definition changed and that the relay has not derived since;
--   bundle_availability  what the relay last published per bundle and channel (its figure and sequence),
--                        so an unchanged figure publishes nothing and readers can order what it publishes.

create table bundle_components (
  component text    not null,
  bundle    text    not null,
  qty       integer not null check (qty > 0),  -- of the component per bundle (repeated components summed)
  -- Only well-formed components are indexed (a bad ERP row must not stop the crosswalk); the relay derives
  -- from items.components itself and shows 0 for a bundle with a malformed one.
  primary key (component, bundle)
);
create index bundle_components_bundle on bundle_components (bundle);

create table bundle_changes (
  bundle     text        primary key,
  changed_at timestamptz not null default now()
);

create table bundle_availability (
  bundle     text        not null,
  channel    text        not null,
  seq        bigint      not null,  -- bumped by every publication of this bundle in this channel
  figure     jsonb       not null,  -- {available, onHand, status, components} as published; {"withdrawn": true} once no longer a bundle
  updated_at timestamptz not null default now(),
  primary key (bundle, channel)
);

-- Keeps the reverse index in step with the item master, and queues a definition change for the relay
-- (waking it as a new outbox row would). An upsert that leaves kind and components as they were is no change.
create function tally_bundle_index() returns trigger language plpgsql as $$
declare
  was_bundle boolean := tg_op <> 'INSERT' and old.kind = 'bundle';
  is_bundle  boolean := tg_op <> 'DELETE' and new.kind = 'bundle';
  sku        text    := case when tg_op = 'DELETE' then old.sku else new.sku end;
begin
  if tg_op = 'UPDATE' and old.kind = new.kind and old.components = new.components then
    return null;
  end if;
  if not (was_bundle or is_bundle) then
    return null;
  end if;
  delete from bundle_components where bundle = sku;
  if is_bundle then
    insert into bundle_components (component, bundle, qty)
    select c ->> 'sku', new.sku, sum((c ->> 'qty')::integer)
      from jsonb_array_elements(case when jsonb_typeof(new.components) = 'array' then new.components else '[]' end) as c
     where c ->> 'sku' is not null and c ->> 'qty' ~ '^[1-9][0-9]{0,8}$'
     group by c ->> 'sku';
  end if;
  insert into bundle_changes (bundle) values (sku) on conflict (bundle) do update set changed_at = now();
  perform pg_notify('tally_outbox', '');
  return null;
end $$;

create trigger items_bundle_index after insert or update or delete on items
  for each row execute function tally_bundle_index();

-- Bundles defined before this migration: indexed, and derived by the relay's next round.
insert into bundle_components (component, bundle, qty)
select c ->> 'sku', i.sku, sum((c ->> 'qty')::integer)
  from items i cross join jsonb_array_elements(case when jsonb_typeof(i.components) = 'array' then i.components else '[]' end) as c
 where i.kind = 'bundle' and c ->> 'sku' is not null and c ->> 'qty' ~ '^[1-9][0-9]{0,8}$'
 group by c ->> 'sku', i.sku;
insert into bundle_changes (bundle) select sku from items where kind = 'bundle';
