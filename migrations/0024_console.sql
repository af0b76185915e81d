-- The operator console (`/console`): its sign-in sessions, and the indexes its pages read by.

-- One row per signed-in browser. The cookie carries a random session id; only its SHA-256 is
-- stored, so a copy of this table signs nobody in. `token_hash` is the SHA-256 of the API token
-- that signed in: the session ends when that token is no longer configured. `csrf` is the token
-- every form of the session carries.
CREATE TABLE console_sessions (
    id_hash    bytea       PRIMARY KEY,
    token_name text        NOT NULL,
    token_hash bytea       NOT NULL,
    csrf       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);

-- A saga's page lists the outgoing deliveries its events caused.
CREATE INDEX webhook_deliveries_event ON webhook_deliveries (event_id);
-- The overview's completions per minute over the last hour.
CREATE INDEX sagas_finished ON sagas (finished_at) WHERE finished_at IS NOT NULL;
-- The overview's count of dead Stripe events (pending and processing ones have their indexes).
CREATE INDEX stripe_events_dead ON stripe_events (received_at) WHERE status = 'dead';
