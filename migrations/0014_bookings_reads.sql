-- The bookings read API (`GET /v1/bookings`): newest first, keyset-paginated on
-- (created_at, saga_id), filtered by listing, guest, status and stays overlapping a range.
-- Each filter has an index that yields its rows in page order, so a page reads about `limit`
-- rows whatever the table's size; the stay filter uses the GiST index of (listing, stay).
-- `status` changes on most updates of a booking, so indexing it makes those updates non-HOT
-- (one entry per index per change): the price of serving `?status=` from an index.
CREATE INDEX bookings_page ON bookings (created_at DESC, saga_id DESC);
CREATE INDEX bookings_guest_page ON bookings (guest_id, created_at DESC, saga_id DESC);
CREATE INDEX bookings_listing_page ON bookings (listing_id, created_at DESC, saga_id DESC);
CREATE INDEX bookings_status_page ON bookings (status, created_at DESC, saga_id DESC);
CREATE INDEX bookings_listing_stay ON bookings USING gist (listing_id, daterange(check_in, check_out));
-- Replaced by bookings_listing_page (order) and bookings_listing_stay (dates).
DROP INDEX bookings_listing;
