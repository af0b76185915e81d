-- bookings::apply: the projection update of a run of events
-- parameters: 13
UPDATE bookings SET
        status = CASE WHEN $3::bool THEN
                      CASE WHEN cancel_reason IS NOT NULL THEN 'cancelled' ELSE 'failed' END
                      WHEN $11::bool AND COALESCE($2::text, status) = 'needs_attention' THEN 'confirmed'
                 ELSE COALESCE($2::text, status) END,
        payment_intent_id = COALESCE($4::text, payment_intent_id),
        confirmation_code = COALESCE($5::text, confirmation_code),
        cancel_reason = COALESCE($6::text, cancel_reason, $7::text),
        check_in = COALESCE($8::date, check_in),
        check_out = COALESCE($9::date, check_out),
        amount = COALESCE($10::int8, amount),
        cancellation = COALESCE($13::jsonb, cancellation),
        updated_at = now()
    WHERE saga_id = $1 AND (NOT $12::bool OR status = 'needs_attention')
