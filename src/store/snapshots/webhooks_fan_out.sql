-- webhooks::fan_out: webhook deliveries of events appended before
-- parameters: 3
WITH pub_events AS (SELECT * FROM unnest($1::uuid[], $2::text[]) AS e(id, type)), deliveries AS (
             INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_type)
             SELECT gen_random_uuid(), ep.id, ev.id, ev.type
             FROM pub_events AS ev
             JOIN webhook_endpoints ep ON ev.type IS NOT NULL AND ep.enabled AND EXISTS (
                 SELECT 1 FROM unnest(ep.event_types) AS p
                 WHERE p = ev.type OR (right(p, 1) = '*' AND starts_with(ev.type, left(p, -1))))
             ON CONFLICT (endpoint_id, event_id) DO NOTHING
             RETURNING 1) SELECT pg_notify($3, '') FROM (SELECT 1 FROM deliveries LIMIT 1) AS any_inserted
