-- inventory::convert_to_booking: a hold turned into a booking
-- parameters: 1
UPDATE inventory_claims SET kind = 'booking', expires_at = NULL
         WHERE saga_id = $1 AND status = 'active' AND (kind = 'booking' OR expires_at > now())
         RETURNING id
