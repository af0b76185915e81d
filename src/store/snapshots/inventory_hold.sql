-- inventory::hold: a hold
-- parameters: 6
INSERT INTO inventory_claims (id, saga_id, listing_id, stay, kind, status, expires_at)
         SELECT $2::uuid, $1, $3::text, daterange($4::date, $5::date, '[)'),
                'hold', 'active', $6::timestamptz 
         ON CONFLICT DO NOTHING
         RETURNING id, expires_at
