-- The NATS JetStream relay (`src/relay`, `store::relay`): one row, the feed position up to which
-- every event has been published and acknowledged by JetStream, so that a crash or an outage of
-- NATS resumes there. The relay creates the row the first time it runs (no row: nothing relayed
-- yet, the relay starts at the beginning of the feed).
--
-- Only one process relays at a time: it holds a session advisory lock on a connection of its own
-- and runs every statement of the relay on that connection, so a process that lost the lock (its
-- connection ended) can no longer move the position. The position only moves forward.
CREATE TABLE relay_position (
    id             boolean PRIMARY KEY DEFAULT true CHECK (id),
    tx             xid8 NOT NULL,
    seq            bigint NOT NULL,
    -- The process relaying (its worker id), and since when.
    holder         text NOT NULL,
    held_since     timestamptz NOT NULL DEFAULT now(),
    moved_at       timestamptz NOT NULL DEFAULT now(),
    -- The last failure to publish or to reach NATS; cleared by the next publish that succeeds.
    last_error     text,
    last_error_at  timestamptz
);
