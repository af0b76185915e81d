-- The global feed's position (`store::feed`): the id of the transaction that appended each event,
-- taken from the column's default in the appending statement itself (no statement more per
-- append). A reader orders by (tx, seq) and reads only transactions below the oldest one still
-- running (`pg_snapshot_xmin(pg_current_snapshot())`), so an event whose transaction commits late
-- is never skipped: its position is not yet readable while that transaction runs.
--
-- Events appended before this migration all get the migration's own transaction id, which keeps
-- their `seq` order and places them before every later event.
ALTER TABLE events ADD COLUMN tx xid8 NOT NULL DEFAULT pg_current_xact_id();

CREATE INDEX events_feed ON events (tx, seq);
