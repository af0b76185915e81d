-- Stripe may send U+0000 inside a string (a description, metadata), which neither text nor jsonb
-- can hold. Such an event is stored with each NUL replaced by U+FFFD in `payload` (and in the id,
-- type and other text columns), and the body exactly as Stripe signed it here.
ALTER TABLE stripe_events ADD COLUMN raw_body bytea;
