-- Host blocks: a listing's dates taken by its host (`POST /v1/listings/{id}/blocks`), under the
-- same exclusion constraint as holds and bookings (`inventory_no_overlap`), so a block and a
-- booking can never both hold a night, whoever commits first. A block belongs to no saga; it is
-- its own aggregate in the event store (`listing_block`, its id).
ALTER TABLE inventory_claims ALTER COLUMN saga_id DROP NOT NULL;
ALTER TABLE inventory_claims ADD COLUMN reason text;
ALTER TABLE inventory_claims ADD COLUMN created_by text;
ALTER TABLE inventory_claims DROP CONSTRAINT inventory_claims_kind_check;
ALTER TABLE inventory_claims ADD CONSTRAINT inventory_claims_kind_check
    CHECK (kind IN ('hold', 'booking', 'block'));
-- Was (kind = 'booking' OR expires_at IS NOT NULL): only holds expire.
ALTER TABLE inventory_claims DROP CONSTRAINT inventory_claims_check;
ALTER TABLE inventory_claims ADD CONSTRAINT inventory_claims_hold_expires
    CHECK (kind <> 'hold' OR expires_at IS NOT NULL);
-- A hold or booking has its saga; a block has none, and a reason and an author instead.
ALTER TABLE inventory_claims ADD CONSTRAINT inventory_claims_owner
    CHECK (CASE WHEN kind = 'block' THEN saga_id IS NULL AND reason IS NOT NULL AND created_by IS NOT NULL
                ELSE saga_id IS NOT NULL END);
