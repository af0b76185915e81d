-- Indexes for the operator console's lists on large tables. sagad's connections run generic
-- plans (`plan_cache_mode = force_generic_plan`), so a filter bound as a parameter
-- (`status = $1`) cannot use a partial index whose predicate names a value (`WHERE status =
-- 'dead'`): these lead with the filtered columns and end in the lists' order.

-- The overview's (and the /metrics gauges') sagas by name and status: an index-only scan instead
-- of reading every saga row.
CREATE INDEX sagas_name_status ON sagas (saga_name, status);
-- An endpoint's deliveries filtered by status (its dead letters), newest first.
CREATE INDEX webhook_deliveries_endpoint_status
    ON webhook_deliveries (endpoint_id, status, created_at DESC, id DESC);
