-- progress::start: a new saga, the hold it places and the steps it runs ahead
-- parameters: 40
WITH claim AS (INSERT INTO inventory_claims (id, saga_id, booking_id, listing_id, stay, kind, status, expires_at)
         SELECT $29::uuid, $1, $30::uuid, $31::text, daterange($32::date, $33::date, '[)'),
                'hold', 'active', $34::timestamptz WHERE NOT EXISTS (SELECT 1 FROM sagas WHERE idempotency_key = $5)
         ON CONFLICT DO NOTHING
         RETURNING id, expires_at),
         s AS (
             INSERT INTO sagas (id, saga_name, saga_version, status, input, next_run_at, idempotency_key,
                                request_fingerprint, locked_by, locked_until, attempt,
                                current_step, context, event_version)
             SELECT $1, $2, $3, 'running', $4, now(), $5, $6, $7,
                    now() + $8::float8 * interval '1 millisecond', CASE WHEN $7::text IS NULL THEN 0 ELSE 1 END,
                    CASE WHEN EXISTS (SELECT 1 FROM claim) THEN $25::int ELSE 0 END, CASE WHEN EXISTS (SELECT 1 FROM claim) THEN $26::jsonb ELSE '{}'::jsonb END, CASE WHEN EXISTS (SELECT 1 FROM claim) THEN $27::int ELSE 1 END
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
                $24::text, CASE WHEN EXISTS (SELECT 1 FROM claim) THEN $28::text ELSE 'requested' END FROM s WHERE $19::text IS NOT NULL RETURNING 1), step AS (
             INSERT INTO saga_steps (saga_id, step_index, phase, step_name, status, attempts, last_error, finished_at)
             SELECT $1, x.i, x.phase, x.name, x.status, x.attempts, x.error,
                    CASE WHEN x.status IN ('succeeded', 'failed', 'skipped') THEN now() END
             FROM (SELECT 1 FROM s WHERE EXISTS (SELECT 1 FROM claim)) AS ran, unnest($35::int[], $36::text[], $37::text[], $38::text[],
                                 $39::int[], $40::text[])
                     AS x(i, phase, name, status, attempts, error)
             ON CONFLICT (saga_id, step_index, phase) DO UPDATE
             SET status = EXCLUDED.status, attempts = EXCLUDED.attempts,
                 last_error = COALESCE(EXCLUDED.last_error, saga_steps.last_error),
                 finished_at = EXCLUDED.finished_at
             RETURNING 1)
         SELECT s.*,
                (SELECT count(*) FROM (SELECT pg_notify($9, '') WHERE $10::bool) n) AS notified,
                (SELECT count(*) FROM (SELECT pg_notify($11, '') FROM (SELECT 1 FROM deliveries LIMIT 1) AS any_inserted) w) AS woke_deliveries
         FROM s
