-- progress::start: a new saga with its first event
-- parameters: 24
WITH 
         s AS (
             INSERT INTO sagas (id, saga_name, saga_version, status, input, next_run_at, idempotency_key,
                                request_fingerprint, locked_by, locked_until, attempt,
                                current_step, context, event_version)
             SELECT $1, $2, $3, 'running', $4, now(), $5, $6, $7,
                    now() + $8::float8 * interval '1 millisecond', CASE WHEN $7::text IS NULL THEN 0 ELSE 1 END,
                    0, '{}'::jsonb, 1
             ON CONFLICT (idempotency_key) DO NOTHING
             RETURNING id, saga_name, saga_version, status, current_step, attempt, input, context, next_run_at, locked_by, locked_until, wait_key, wait_deadline, failure_step, failure_reason, retrying_since, wait_reason, paused_since, cancel_requested, event_version, idempotency_key, request_fingerprint, created_at, updated_at, finished_at, cancellation),
         e AS (SELECT * FROM unnest($14::uuid[], $15::text[], $16::jsonb[], $17::jsonb[],
                                    $18::text[], $13::int4[])
                   WITH ORDINALITY AS e(id, type, payload, metadata, published, schema_version, ord)),
         appended AS (
             INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type,
                                 schema_version, payload, metadata)
             SELECT e.id, $12, $1, (1) + e.ord::int - 1, e.type,
                    e.schema_version, e.payload, e.metadata
             FROM e, s WHERE e.ord <= s.event_version),
         pub_events AS (SELECT e.id, e.published AS type FROM e, s WHERE e.ord <= s.event_version),
         deliveries AS (
             INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_type)
             SELECT gen_random_uuid(), ep.id, ev.id, ev.type
             FROM pub_events AS ev
             JOIN webhook_endpoints ep ON ev.type IS NOT NULL AND ep.enabled AND EXISTS (
                 SELECT 1 FROM unnest(ep.event_types) AS p
                 WHERE p = ev.type OR (right(p, 1) = '*' AND starts_with(ev.type, left(p, -1))))
             ON CONFLICT (endpoint_id, event_id) DO NOTHING
             RETURNING 1),
         booking AS (INSERT INTO bookings (saga_id, listing_id, guest_id, check_in, check_out, amount, currency, status)
         SELECT $1, $19::text, $20::text, $21::date, $22::date, $23::int8,
                $24::text, 'requested' FROM s WHERE $19::text IS NOT NULL RETURNING 1)
         SELECT s.*,
                (SELECT count(*) FROM (SELECT pg_notify($9, '') WHERE $10::bool) n) AS notified,
                (SELECT count(*) FROM (SELECT pg_notify($11, '') FROM (SELECT 1 FROM deliveries LIMIT 1) AS any_inserted) w) AS woke_deliveries
         FROM s
