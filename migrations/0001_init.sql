-- sagad schema: sagas, their steps, the append-only event store, projections and inventory.

CREATE EXTENSION IF NOT EXISTS btree_gist;

-- Every saga definition version ever started, so a running saga finishes on its own version.
CREATE TABLE saga_definitions (
    name        text        NOT NULL,
    version     integer     NOT NULL CHECK (version >= 1),
    fingerprint text        NOT NULL,
    definition  jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

CREATE TABLE sagas (
    id                  uuid        PRIMARY KEY,
    saga_name           text        NOT NULL,
    saga_version        integer     NOT NULL,
    -- running: forward steps; compensating: undoing completed steps in reverse;
    -- waiting: parked until an outside event or a deadline; completed / compensated: terminal;
    -- stuck: compensation exhausted its retries, parked for an operator.
    status              text        NOT NULL CHECK (status IN ('running', 'compensating', 'waiting', 'completed', 'compensated', 'stuck')),
    -- Index of the step being run (forward) or undone (compensating).
    current_step        integer     NOT NULL DEFAULT 0,
    -- Attempts made of the current step in the current phase; every claim increments it, so
    -- (status, current_step, attempt) fences a stale worker out of committing an outcome.
    attempt             integer     NOT NULL DEFAULT 0,
    input               jsonb       NOT NULL,
    -- Outputs of completed steps, keyed by step name (payment_intent_id, hold_id, …).
    context             jsonb       NOT NULL DEFAULT '{}'::jsonb,
    next_run_at         timestamptz,
    locked_by           text,
    locked_until        timestamptz,
    wait_key            text,
    wait_deadline       timestamptz,
    failure_step        text,
    failure_reason      text,
    cancel_requested    boolean     NOT NULL DEFAULT false,
    -- Version of the last event appended for this saga (the event store's aggregate version).
    event_version       integer     NOT NULL DEFAULT 0,
    idempotency_key     text        UNIQUE,
    request_fingerprint text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz,
    FOREIGN KEY (saga_name, saga_version) REFERENCES saga_definitions (name, version)
);

-- The work queue: what a worker claims next.
CREATE INDEX sagas_due ON sagas (next_run_at) WHERE status IN ('running', 'compensating') AND locked_until IS NULL;
-- The rescuer: leases that ran out.
CREATE INDEX sagas_leased ON sagas (locked_until) WHERE locked_until IS NOT NULL;
-- Parked sagas whose deadline passes.
CREATE INDEX sagas_waiting ON sagas (wait_deadline) WHERE status = 'waiting';
CREATE UNIQUE INDEX sagas_wait_key ON sagas (wait_key) WHERE status = 'waiting';
-- Listing with keyset pagination (newest first).
CREATE INDEX sagas_listing ON sagas (created_at DESC, id DESC);
CREATE INDEX sagas_status_listing ON sagas (status, created_at DESC, id DESC);

-- One row per step and phase: what the API shows about each step.
CREATE TABLE saga_steps (
    saga_id     uuid        NOT NULL REFERENCES sagas (id),
    step_index  integer     NOT NULL,
    phase       text        NOT NULL CHECK (phase IN ('forward', 'compensation')),
    step_name   text        NOT NULL,
    status      text        NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'waiting', 'skipped')),
    attempts    integer     NOT NULL DEFAULT 0,
    last_error  text,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    PRIMARY KEY (saga_id, step_index, phase)
);

-- The append-only event store.
CREATE TABLE events (
    seq            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id       uuid        NOT NULL UNIQUE,
    aggregate_type text        NOT NULL,
    aggregate_id   uuid        NOT NULL,
    version        integer     NOT NULL CHECK (version >= 1),
    event_type     text        NOT NULL,
    schema_version integer     NOT NULL DEFAULT 1,
    payload        jsonb       NOT NULL,
    metadata       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    -- Optimistic concurrency: two writers cannot both append version N.
    UNIQUE (aggregate_id, version)
);

CREATE FUNCTION events_are_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the event store is append-only: % on events is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER events_no_update_delete BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_are_immutable();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_are_immutable();

-- Inventory: holds and bookings on (listing, [check_in, check_out)). The exclusion constraint is
-- what makes double-booking impossible, whatever the application code does.
CREATE TABLE inventory_claims (
    id          uuid        PRIMARY KEY,
    saga_id     uuid        NOT NULL UNIQUE REFERENCES sagas (id),
    listing_id  text        NOT NULL,
    stay        daterange   NOT NULL CHECK (NOT isempty(stay)),
    kind        text        NOT NULL CHECK (kind IN ('hold', 'booking')),
    status      text        NOT NULL CHECK (status IN ('active', 'released', 'expired')),
    expires_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    released_at timestamptz,
    CHECK (kind = 'booking' OR expires_at IS NOT NULL),
    CONSTRAINT inventory_no_overlap EXCLUDE USING gist (listing_id WITH =, stay WITH &&) WHERE (status = 'active')
);
CREATE INDEX inventory_hold_expiry ON inventory_claims (expires_at) WHERE status = 'active' AND kind = 'hold';

-- The bookings projection: the booking as the API and operators read it.
CREATE TABLE bookings (
    saga_id           uuid        PRIMARY KEY REFERENCES sagas (id),
    listing_id        text        NOT NULL,
    guest_id          text        NOT NULL,
    check_in          date        NOT NULL,
    check_out         date        NOT NULL,
    amount            bigint      NOT NULL,
    currency          text        NOT NULL,
    status            text        NOT NULL,
    payment_intent_id text,
    confirmation_code text        UNIQUE,
    cancel_reason     text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX bookings_listing ON bookings (listing_id, check_in);
CREATE UNIQUE INDEX bookings_payment_intent ON bookings (payment_intent_id) WHERE payment_intent_id IS NOT NULL;
