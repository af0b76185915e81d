-- The Stripe inbox filtered by status, newest first (`GET /v1/stripe/events?status=`, the
-- console's inbox): sagad's generic plans bind the status as a parameter, which the partial
-- `stripe_events_dead` cannot serve, so a `status = dead` page walked the whole inbox newest
-- first. This index leads with the status and ends in the list's order; it also counts the dead
-- events for the overview, so the partial one goes.
CREATE INDEX stripe_events_status_listing ON stripe_events (status, received_at DESC, id DESC);
DROP INDEX stripe_events_dead;
