-- A dependency's breaker transitions are recorded as the events of its own aggregate
-- (`aggregate_type` 'dependency'): DependencyCircuitOpened, DependencyProbeFailed and
-- DependencyCircuitClosed, appended in the transaction that changes the breaker's row, which
-- numbers them (`event_version`, as `webhook_endpoints` does).
ALTER TABLE dependency_breakers
    ADD COLUMN aggregate_id  uuid    NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    ADD COLUMN event_version integer NOT NULL DEFAULT 0 CHECK (event_version >= 0);
