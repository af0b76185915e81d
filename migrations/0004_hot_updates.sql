-- Leave room in each page so that an update touching no indexed column stays on the row's page
-- (a HOT update: no new entry in any index). A saga's row is updated once per step, and a step
-- that goes straight on to the next one changes no indexed column (see `store::sagas::record`);
-- the bookings projection likewise changes mostly unindexed columns. Applies to pages filled
-- from now on.
ALTER TABLE sagas SET (fillfactor = 70);
ALTER TABLE bookings SET (fillfactor = 80);
