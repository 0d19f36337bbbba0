-- The GL journal: balanced journals of debit and credit lines in integer minor units, posted from
-- the ledger's movements (inventory side) and from POS transactions' money (revenue, tax, tenders,
-- gift cards). Append-only, like the ledger.

-- Closed accounting periods (calendar months). A journal whose business date falls in a closed
-- period posts on the first day of the next open one (keeping its business date).
create table gl_periods (
  period    text        primary key check (period ~ '^[0-9]{4}-(0[1-9]|1[0-2])$'),
  closed_at timestamptz not null default now(),
  closed_by text        not null
);

-- One journal per command (inventory side; journal_id = the command id) or per POS transaction's
-- money (journal_id = 'money:' || the transaction's key). `txid` is the resume cursor of readers
-- that follow the journal (export, write-back), as on ledger_entries.
create table gl_journals (
  journal_id    text        primary key,
  kind          text        not null check (kind in ('inventory', 'pos_money', 'reconciliation')),
  business_date date        not null,
  posted_on     date        not null check (posted_on >= business_date),
  period        text        not null check (period = to_char(posted_on, 'YYYY-MM')),
  currency      text        not null check (currency ~ '^[A-Z]{3}$'),
  -- The command behind the journal (null for a POS transaction's money journal).
  command_id    text,
  movement      text        not null,
  source_system text        not null,
  source_ref    text        not null,
  recorded_at   timestamptz not null default now(),
  txid          xid8        not null default pg_current_xact_id()
);
create index gl_journals_posted_on on gl_journals (posted_on, journal_id);
create index gl_journals_txid on gl_journals (txid);

-- Lines: exactly one of debit and credit is positive. `leg` ties a line to the ledger entry behind
-- it (ledger_entries (command_id, leg) of its journal's command); null for money lines.
create table gl_lines (
  journal_id  text          not null references gl_journals (journal_id),
  line        smallint      not null check (line >= 1),
  account     text          not null,
  cost_center text          not null,
  debit       numeric(38, 0) not null default 0 check (debit >= 0),
  credit      numeric(38, 0) not null default 0 check (credit >= 0),
  sku         text,
  qty         bigint,
  unit        text,
  leg         smallint,
  memo        text,
  primary key (journal_id, line),
  check ((debit > 0) <> (credit > 0))
);
create index gl_lines_account on gl_lines (account);

-- Append-only: the same refusal as ledger_entries.
create trigger gl_journals_append_only before update or delete on gl_journals
  for each row execute function tally_refuse_ledger_change();
create trigger gl_journals_no_truncate before truncate on gl_journals
  for each statement execute function tally_refuse_ledger_change();
create trigger gl_lines_append_only before update or delete on gl_lines
  for each row execute function tally_refuse_ledger_change();
create trigger gl_lines_no_truncate before truncate on gl_lines
  for each statement execute function tally_refuse_ledger_change();

-- Every journal balances: checked once per inserting statement over the lines it inserted, so a
-- journal's lines must be inserted by one statement (which every poster does).
create function tally_gl_check_balanced() returns trigger language plpgsql as $$
declare
  bad record;
begin
  select l.journal_id, sum(l.debit) as debit, sum(l.credit) as credit into bad
    from new_lines l group by l.journal_id having sum(l.debit) <> sum(l.credit) limit 1;
  if found then
    raise exception 'GL journal % does not balance: debit % <> credit %', bad.journal_id, bad.debit, bad.credit
      using errcode = 'check_violation';
  end if;
  return null;
end $$;
create trigger gl_lines_balanced after insert on gl_lines
  referencing new table as new_lines
  for each statement execute function tally_gl_check_balanced();

-- The date a journal with business date `d` posts on: `d` itself when its month is open, else the
-- first day of the first open month after it. Takes the periods lock in share mode for the rest
-- of the transaction, so a `tally gl close` (which takes it exclusively) waits for in-flight
-- postings and no posting lands in a period after it closed.
create function tally_gl_posting_date(d date) returns date language plpgsql volatile as $$
declare
  candidate date := d;
begin
  perform pg_advisory_xact_lock_shared(7402117072);
  while exists (select 1 from gl_periods where period = to_char(candidate, 'YYYY-MM')) loop
    candidate := (date_trunc('month', candidate) + interval '1 month')::date;
  end loop;
  return candidate;
end $$;

-- Closes a period (idempotent): waits for in-flight postings, then records it closed.
create function tally_gl_close_period(p text, by_whom text) returns boolean language plpgsql volatile as $$
begin
  perform pg_advisory_xact_lock(7402117072);
  insert into gl_periods (period, closed_by) values (p, by_whom) on conflict (period) do nothing;
  return found;
end $$;
