-- Circuit breakers, one row per outside dependency, shared by every sagad process.
--
-- Calls are counted over a sliding window made of two buckets: the current one (`window_start`,
-- `calls`, `failures`) and the one before it (`prev_calls`, `prev_failures`), weighted by how much
-- of it still overlaps the window. Only retryable failures (5xx, 429, timeouts, connection errors)
-- count as failures; a business refusal is an answer, so it counts as a call that went through.
CREATE TABLE dependency_breakers (
    dependency            text        PRIMARY KEY CHECK (dependency IN ('stripe', 'notify')),
    state                 text        NOT NULL DEFAULT 'closed' CHECK (state IN ('closed', 'open', 'half_open')),
    window_start          timestamptz NOT NULL DEFAULT now(),
    calls                 integer     NOT NULL DEFAULT 0 CHECK (calls >= 0),
    failures              integer     NOT NULL DEFAULT 0 CHECK (failures >= 0 AND failures <= calls),
    prev_calls            integer     NOT NULL DEFAULT 0 CHECK (prev_calls >= 0),
    prev_failures         integer     NOT NULL DEFAULT 0 CHECK (prev_failures >= 0 AND prev_failures <= prev_calls),
    -- Connection failures in a row, over every process, since the last call that got an answer.
    connection_failures   integer     NOT NULL DEFAULT 0 CHECK (connection_failures >= 0),
    -- Times it opened since it last closed: the half-open delay doubles with each.
    opens                 integer     NOT NULL DEFAULT 0 CHECK (opens >= 0),
    opened_at             timestamptz,
    -- When an open breaker lets one probe through.
    probe_at              timestamptz,
    -- The probe in flight (half_open): its process and until when it holds the slot.
    probe_by              text,
    probe_until           timestamptz,
    changed_at            timestamptz NOT NULL DEFAULT now(),
    CHECK ((state = 'closed') = (probe_at IS NULL)),
    CHECK ((state = 'half_open') = (probe_until IS NOT NULL))
);
-- A dependency's row is made (closed) the first time its breaker counts a call.

-- A saga paused while the breaker of a dependency its next action needs is open: why it waits
-- (`dependency:<name>`) and since when (NULL once woken; the reason stays until its next outcome).
ALTER TABLE sagas ADD COLUMN wait_reason text, ADD COLUMN paused_since timestamptz;
CREATE INDEX sagas_paused ON sagas (wait_reason, created_at) WHERE paused_since IS NOT NULL;
