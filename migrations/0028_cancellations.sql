-- Cancellations with an actor, a reason and a refund decided by the listing's policy.
-- sagas.cancellation: the cancellation as requested (`POST /v1/sagas/{id}/cancel`): who, why, and
-- the share of the price it refunds, decided when it was requested. Set once, with
-- cancel_requested, so concurrent requests make one cancellation; the compensations that record
-- the cancellation and refund the payment read it.
ALTER TABLE sagas ADD COLUMN cancellation jsonb
    CHECK (cancellation IS NULL OR jsonb_typeof(cancellation) = 'object');
-- bookings.cancellation: who cancelled the booking and its refund (amount and rule), folded from
-- its BookingCancelled event (schema version 2); NULL while not cancelled, and for bookings
-- cancelled by events of schema version 1, which read with `refund` null.
ALTER TABLE bookings ADD COLUMN cancellation jsonb
    CHECK (cancellation IS NULL OR jsonb_typeof(cancellation) = 'object');
