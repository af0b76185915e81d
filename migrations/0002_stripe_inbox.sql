-- The Stripe webhook inbox: every verified event, keyed by Stripe's event id, committed before
-- sagad answers 200. Workers process it later (claim with SKIP LOCKED, lease, retry with backoff).
CREATE TABLE stripe_events (
    id                text        PRIMARY KEY,                -- evt_…
    event_type        text        NOT NULL,
    livemode          boolean     NOT NULL DEFAULT false,
    api_version       text,
    stripe_created    timestamptz,
    -- The PaymentIntent the event is about (data.object.id or data.object.payment_intent).
    payment_intent_id text,
    payload           jsonb       NOT NULL,
    -- pending: due for processing at next_attempt_at; processing: claimed under a lease;
    -- processed: done; ignored: a type sagad does not act on (acknowledged, kept);
    -- unmatched: about a PaymentIntent sagad does not know (kept with the reason);
    -- dead: processing failed past the retry limit (an operator may reprocess it).
    status            text        NOT NULL CHECK (status IN ('pending', 'processing', 'processed', 'ignored', 'unmatched', 'dead')),
    attempts          integer     NOT NULL DEFAULT 0,
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    locked_by         text,
    locked_until      timestamptz,
    saga_id           uuid        REFERENCES sagas (id),
    -- What processing did, or why the event was kept without effect.
    outcome           text,
    last_error        text,
    -- How many times Stripe delivered it (duplicates are acknowledged and counted, not processed).
    deliveries        integer     NOT NULL DEFAULT 1,
    received_at       timestamptz NOT NULL DEFAULT now(),
    processed_at      timestamptz
);

CREATE INDEX stripe_events_due ON stripe_events (next_attempt_at) WHERE status = 'pending';
CREATE INDEX stripe_events_leased ON stripe_events (locked_until) WHERE status = 'processing';
CREATE INDEX stripe_events_listing ON stripe_events (received_at DESC, id DESC);
CREATE INDEX stripe_events_payment_intent ON stripe_events (payment_intent_id) WHERE payment_intent_id IS NOT NULL;
