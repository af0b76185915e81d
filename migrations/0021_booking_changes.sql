-- Date and price changes (`sagas/booking_change.toml`): a change saga holds the new nights for an
-- existing booking before that booking gives up its old ones. Each claim now names the booking it
-- serves (`booking_id`: a booking's own saga for its hold and booking, the booking being changed
-- for a change's hold, the block itself for a block), and the exclusion constraint lets claims of
-- one booking overlap each other, never anyone else's: a change from nights 1–3 to 2–5 holds 2–5
-- while the booking still has 1–3.
ALTER TABLE inventory_claims ADD COLUMN booking_id uuid;
UPDATE inventory_claims SET booking_id = COALESCE(saga_id, id);
ALTER TABLE inventory_claims ALTER COLUMN booking_id SET NOT NULL;
ALTER TABLE inventory_claims DROP CONSTRAINT inventory_no_overlap;
ALTER TABLE inventory_claims ADD CONSTRAINT inventory_no_overlap
    EXCLUDE USING gist (listing_id WITH =, stay WITH &&, booking_id WITH <>) WHERE (status = 'active');

-- At most one change of a booking under way: a change saga's input names the booking it changes
-- (`change.booking_id`); a second one is refused (409) until the first has ended. A stuck change
-- counts as under way: what it holds must be settled first.
CREATE UNIQUE INDEX sagas_one_change_per_booking ON sagas ((input #>> '{change,booking_id}'))
    WHERE input ? 'change' AND status IN ('running', 'compensating', 'waiting', 'stuck');
