-- inventory::hold: a hold
-- parameters: 7
INSERT INTO inventory_claims (id, saga_id, booking_id, listing_id, stay, kind, status, expires_at)
         SELECT $2::uuid, $1, $3::uuid, $4::text, daterange($5::date, $6::date, '[)'),
                'hold', 'active', $7::timestamptz 
         ON CONFLICT DO NOTHING
         RETURNING id, expires_at
