-- Demo e-commerce shop: the reference schema Tally's demo source `shop` captures (see
-- cdc/demo/mappings.ts). Idempotent: applying it twice is harmless. Items are named by the
-- shop's own code (shop_sku), which the ERP item master maps to the canonical SKU.

create or replace function shop_touch_updated_at() returns trigger language plpgsql as $$
begin
  new.updated_at := now();
  return new;
end $$;

-- Order headers. No stock effect of their own: not captured by Tally.
create table if not exists orders (
  order_id   text        primary key,
  channel    text        not null default 'web',
  status     text        not null default 'open',
  created_at timestamptz not null default now()
);

-- Order lines: inserted 'placed' (a reservation at the fulfilment location), then 'cancelled'
-- (release) or 'shipped' (fulfil). The mapping compares old and new status: the old row must be
-- complete.
create table if not exists order_lines (
  order_id   text        not null references orders (order_id),
  line_no    integer     not null check (line_no > 0),
  shop_sku   text        not null,
  location   text        not null default 'DC1',   -- fulfilment location
  qty        integer     not null check (qty > 0),
  status     text        not null default 'placed'
             check (status in ('placed', 'cancelled', 'shipped', 'returned')),
  updated_at timestamptz not null default now(),
  primary key (order_id, line_no)
);
alter table order_lines replica identity full;
create or replace trigger order_lines_touch before update on order_lines
  for each row execute function shop_touch_updated_at();

-- Customer returns, received at `location`; restockable goods go back on hand, others to damaged.
create table if not exists returns (
  return_id   bigserial   primary key,
  order_id    text        not null,
  line_no     integer     not null,
  shop_sku    text        not null,
  location    text        not null,
  qty         integer     not null check (qty > 0),
  restockable boolean     not null default true,
  returned_at timestamptz not null default now(),
  foreign key (order_id, line_no) references order_lines (order_id, line_no)
);
