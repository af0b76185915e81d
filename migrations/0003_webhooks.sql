-- Outgoing webhooks: endpoints integrators subscribe, their signing secrets, and a transactional
-- outbox of deliveries (one row per published event and matching endpoint) with every attempt.

CREATE TABLE webhook_endpoints (
    id              uuid        PRIMARY KEY,
    url             text        NOT NULL,
    description     text        NOT NULL DEFAULT '',
    -- Exact public type names (`booking.confirmed`), prefixes (`booking.*`) or `*`.
    event_types     text[]      NOT NULL CHECK (cardinality(event_types) > 0),
    enabled         boolean     NOT NULL DEFAULT true,
    -- Most delivery attempts per second to this endpoint (NULL: no limit).
    rate_limit      integer     CHECK (rate_limit IS NULL OR rate_limit > 0),
    disabled_reason text,
    disabled_at     timestamptz,
    -- Set at the first failed attempt after a success; cleared by a success.
    failing_since   timestamptz,
    -- Version of the last event appended for this endpoint (aggregate type `webhook_endpoint`).
    event_version   integer     NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
-- The fan-out joins appended events against this: with no enabled endpoint it is an empty scan.
CREATE INDEX webhook_endpoints_enabled ON webhook_endpoints (id) WHERE enabled;

-- Signing secrets: the current one (expires_at NULL) and, during a rotation, the previous one
-- until it expires. Every live secret signs every attempt.
CREATE TABLE webhook_secrets (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id uuid        NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    secret      text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz
);
CREATE INDEX webhook_secrets_endpoint ON webhook_secrets (endpoint_id);
CREATE UNIQUE INDEX webhook_secrets_current ON webhook_secrets (endpoint_id) WHERE expires_at IS NULL;

-- The outbox: inserted in the transaction that appends the event.
CREATE TABLE webhook_deliveries (
    id              uuid        PRIMARY KEY,
    endpoint_id     uuid        NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id        uuid        NOT NULL REFERENCES events (event_id),
    -- Public event type (`booking.confirmed`).
    event_type      text        NOT NULL,
    -- pending: waiting for next_attempt_at; delivering: leased by a worker;
    -- delivered: a 2xx arrived; dead: the retry schedule is exhausted (redeliverable).
    status          text        NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivering', 'delivered', 'dead')),
    -- Attempts ever made (numbers the attempt log) and attempts in the current schedule
    -- (reset by a redelivery).
    attempts        integer     NOT NULL DEFAULT 0,
    schedule_pos    integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    locked_by       text,
    locked_until    timestamptz,
    last_status     integer,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    dead_at         timestamptz,
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_leased ON webhook_deliveries (locked_until) WHERE status = 'delivering';
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, created_at DESC, id DESC);
CREATE INDEX webhook_deliveries_dead ON webhook_deliveries (endpoint_id, dead_at) WHERE status = 'dead';

-- One row per HTTP attempt.
CREATE TABLE webhook_attempts (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id   uuid        NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt       integer     NOT NULL,
    attempted_at  timestamptz NOT NULL,
    -- NULL when no response arrived (timeout, connection error, refused address).
    status_code   integer,
    latency_ms    integer     NOT NULL,
    -- First 4 KiB of the response body.
    response_body text,
    error         text,
    UNIQUE (delivery_id, attempt)
);
