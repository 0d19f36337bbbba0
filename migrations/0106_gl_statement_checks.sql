-- The GL insert's checks, once per statement instead of once per line (insertJournals writes ~2,000
-- journals, ~6,000 lines, per poster round; the per-line work was most of the statement's cost).
--
-- gl_lines' foreign key to gl_journals ran its check once per inserted line: a query through SPI
-- that also locks the journal row (FOR KEY SHARE, a WAL record and a dirtied page per journal). What
-- it guarded is kept by the statement-level trigger that already read every inserted line for the
-- balance: each journal the statement's lines name must exist, checked with one probe of
-- gl_journals' primary key per journal instead of one query per line. The key's other half (no
-- journal deleted or its id changed while lines name it) is the append-only triggers' already:
-- gl_journals refuses every update, delete and truncate. A journal inserted by a transaction that
-- has not committed is not visible to the check, as it was not to the foreign key's.
alter table gl_lines drop constraint gl_lines_journal_id_fkey;

-- Every journal balances and exists: checked once per inserting statement over the lines it
-- inserted, so a journal's lines must be inserted by one statement (which every poster does), after
-- or with its journal row (insertJournals: one statement, journals first).
create or replace function tally_gl_check_balanced() returns trigger language plpgsql as $$
declare
  bad record;
begin
  -- One sum per journal (of debit − credit), not a sum of each: numeric aggregation is most of this
  -- query's cost. The existence probe is a scalar subquery per journal (one index probe each): as a
  -- join or an anti-join the planner could hash the whole of gl_journals for a few lines.
  select g.journal_id, g.known into bad
    from (select l.journal_id, sum(l.debit - l.credit) as imbalance,
                 (select true from gl_journals j where j.journal_id = l.journal_id) as known
            from new_lines l
           group by l.journal_id) g
   where g.imbalance <> 0 or g.known is null
   limit 1;
  if not found then
    return null;
  elsif bad.known is null then
    raise exception 'GL lines of journal % have no journal in gl_journals', bad.journal_id
      using errcode = 'foreign_key_violation';
  end if;
  select l.journal_id, sum(l.debit) as debit, sum(l.credit) as credit into bad
    from new_lines l where l.journal_id = bad.journal_id group by l.journal_id;
  raise exception 'GL journal % does not balance: debit % <> credit %', bad.journal_id, bad.debit, bad.credit
    using errcode = 'check_violation';
end $$;
