-- An endpoint's `rate_limit` (attempts per second), counted in the database so that it holds over
-- every process: one row per endpoint and second with an attempt, its count raised only while
-- below the limit (`INSERT … ON CONFLICT DO UPDATE … WHERE`, which re-checks the latest count
-- under the row's lock). Rows older than a minute are pruned.
CREATE TABLE webhook_rate_windows (
    endpoint_id  uuid        NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    window_start timestamptz NOT NULL,
    admitted     integer     NOT NULL CHECK (admitted >= 1),
    PRIMARY KEY (endpoint_id, window_start)
);
