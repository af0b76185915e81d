-- events::append: events and their webhook deliveries
-- parameters: 10
WITH e AS (SELECT * FROM unnest($6::uuid[], $7::text[], $8::jsonb[], $9::jsonb[],
                                    $10::text[], $5::int4[])
                   WITH ORDINALITY AS e(id, type, payload, metadata, published, schema_version, ord)),
         appended AS (
             INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type,
                                 schema_version, payload, metadata)
             SELECT e.id, $4, $1, ($2::int) + e.ord::int - 1, e.type,
                    e.schema_version, e.payload, e.metadata
             FROM e),
         pub_events AS (SELECT e.id, e.published AS type FROM e),
         deliveries AS (
             INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_type)
             SELECT gen_random_uuid(), ep.id, ev.id, ev.type
             FROM pub_events AS ev
             JOIN webhook_endpoints ep ON ev.type IS NOT NULL AND ep.enabled AND EXISTS (
                 SELECT 1 FROM unnest(ep.event_types) AS p
                 WHERE p = ev.type OR (right(p, 1) = '*' AND starts_with(ev.type, left(p, -1))))
             ON CONFLICT (endpoint_id, event_id) DO NOTHING
             RETURNING 1) SELECT pg_notify($3, '') FROM (SELECT 1 FROM deliveries LIMIT 1) AS any_inserted
