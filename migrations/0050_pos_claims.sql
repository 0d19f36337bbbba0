-- A POS transaction is claimed before anything of it is published: the first post inserts its row with the
-- payload hash and no result yet, so a racing post with other content is refused (409) instead of mixing its
-- lines with the winner's. The result is filled in once JetStream has acknowledged every command.
alter table pos_transactions alter column result drop not null;
