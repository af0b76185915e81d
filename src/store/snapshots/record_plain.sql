-- progress::record: step outcomes under a fence
-- parameters: 51
WITH t AS (
                 UPDATE sagas SET status = CASE WHEN (cancel_requested AND $6 IN ('waiting', 'completed')) THEN 'running' ELSE $6 END,
                        current_step = $7, attempt = $8, context = $9,
                        next_run_at = CASE WHEN (cancel_requested AND $6 IN ('waiting', 'completed')) THEN now() WHEN $11::float8 IS NOT NULL THEN next_run_at ELSE $10 END,
                        locked_by = CASE WHEN (cancel_requested AND $6 IN ('waiting', 'completed')) OR $11::float8 IS NULL THEN NULL ELSE locked_by END,
                        locked_until = CASE WHEN (cancel_requested AND $6 IN ('waiting', 'completed')) OR $11::float8 IS NULL THEN NULL
                                            WHEN locked_until >= now() + $50::float8 * interval '1 millisecond' THEN locked_until
                                            ELSE now() + $11::float8 * interval '1 millisecond' END,
                        wait_key = CASE WHEN NOT (cancel_requested AND $6 IN ('waiting', 'completed')) THEN $12 END,
                        wait_deadline = CASE WHEN NOT (cancel_requested AND $6 IN ('waiting', 'completed')) THEN $13 END,
                        failure_step = COALESCE($14, failure_step), failure_reason = COALESCE($15, failure_reason),
                        retrying_since = CASE WHEN NOT (cancel_requested AND $6 IN ('waiting', 'completed')) THEN $16::timestamptz END,
                        wait_reason = $17::text,
                        paused_since = CASE WHEN $18::bool THEN now() END,
                        finished_at = CASE WHEN NOT (cancel_requested AND $6 IN ('waiting', 'completed')) AND $6 IN ('completed', 'compensated', 'stuck') THEN now() END,
                        event_version = event_version + $19, updated_at = now()
                 WHERE id = $1 AND (status, current_step, attempt, locked_by) IS NOT DISTINCT FROM ($2, $3, $4, $5)
                 RETURNING event_version - $19 + 1 AS first_version, cancel_requested, (cancel_requested AND $6 IN ('waiting', 'completed')) AS requeued),
             e AS (SELECT * FROM unnest($22::uuid[], $23::text[], $24::jsonb[], $25::jsonb[],
                                    $26::text[], $21::int4[])
                   WITH ORDINALITY AS e(id, type, payload, metadata, published, schema_version, ord)),
         appended AS (
             INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type,
                                 schema_version, payload, metadata)
             SELECT e.id, $20, $1, (t.first_version) + e.ord::int - 1, e.type,
                    e.schema_version, e.payload, e.metadata
             FROM e, t),
         pub_events AS (SELECT e.id, e.published AS type FROM e, t),
         deliveries AS (
             INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_type)
             SELECT gen_random_uuid(), ep.id, ev.id, ev.type
             FROM pub_events AS ev
             JOIN webhook_endpoints ep ON ev.type IS NOT NULL AND ep.enabled AND EXISTS (
                 SELECT 1 FROM unnest(ep.event_types) AS p
                 WHERE p = ev.type OR (right(p, 1) = '*' AND starts_with(ev.type, left(p, -1))))
             ON CONFLICT (endpoint_id, event_id) DO NOTHING
             RETURNING 1),
             booking AS (UPDATE bookings SET
        status = CASE WHEN $28::bool THEN
                      CASE WHEN cancel_reason IS NOT NULL THEN 'cancelled' ELSE 'failed' END
                      WHEN $36::bool AND COALESCE($27::text, status) = 'needs_attention' THEN 'confirmed'
                 ELSE COALESCE($27::text, status) END,
        payment_intent_id = COALESCE($29::text, payment_intent_id),
        confirmation_code = COALESCE($30::text, confirmation_code),
        cancel_reason = COALESCE($31::text, cancel_reason, $32::text),
        check_in = COALESCE($33::date, check_in),
        check_out = COALESCE($34::date, check_out),
        amount = COALESCE($35::int8, amount),
        cancellation = COALESCE($38::jsonb, cancellation),
        updated_at = now()
    WHERE saga_id = $1 AND (NOT $37::bool OR status = 'needs_attention') AND $39::bool AND EXISTS (SELECT 1 FROM t) RETURNING 1),
             step AS (
             INSERT INTO saga_steps (saga_id, step_index, phase, step_name, status, attempts, last_error, finished_at)
             SELECT $1, x.i, x.phase, x.name, x.status, x.attempts, x.error,
                    CASE WHEN x.status IN ('succeeded', 'failed', 'skipped') THEN now() END
             FROM t, unnest($40::int[], $41::text[], $42::text[], $43::text[],
                                 $44::int[], $45::text[])
                     AS x(i, phase, name, status, attempts, error)
             ON CONFLICT (saga_id, step_index, phase) DO UPDATE
             SET status = EXCLUDED.status, attempts = EXCLUDED.attempts,
                 last_error = COALESCE(EXCLUDED.last_error, saga_steps.last_error),
                 finished_at = EXCLUDED.finished_at
             RETURNING 1),
             held AS (UPDATE inventory_claims SET expires_at = $51::timestamptz
         FROM t
         WHERE $51::timestamptz IS NOT NULL AND saga_id = $1 AND status = 'active'
           AND kind = 'hold' AND expires_at > now() AND expires_at < $51::timestamptz
         RETURNING 1)
             SELECT t.first_version, t.cancel_requested,
                    t.requeued,
                    (SELECT count(*) FROM (
                         SELECT pg_notify(CASE WHEN t.requeued THEN $49 ELSE $46::text END,
                                          CASE WHEN t.requeued THEN '' ELSE $47::text END)
                         WHERE t.requeued OR $46::text IS NOT NULL) n) AS notified,
                    (SELECT count(*) FROM (SELECT pg_notify($48, '') FROM (SELECT 1 FROM deliveries LIMIT 1) AS any_inserted) w) AS woke_deliveries
             FROM t
