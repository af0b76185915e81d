-- When the current step's run of retryable failures began: a step's `give_up_after` counts from
-- here. NULL while the step is not being retried. Not indexed, so setting it keeps updates HOT.
ALTER TABLE sagas ADD COLUMN retrying_since timestamptz;
