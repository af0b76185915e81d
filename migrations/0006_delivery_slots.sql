-- The per-endpoint in-flight cap, enforced by the database across processes. A claim gives each
-- delivery it leases one of its endpoint's slots 1..cap that no leased delivery holds; two
-- processes claiming at once from snapshots that do not see each other pick the same slot, and
-- the second one's claim fails on this index instead of going past the cap (it claims again).
-- A delivery keeps its last slot number after its lease ends: the index covers leased ones only.
ALTER TABLE webhook_deliveries ADD COLUMN slot integer;
CREATE UNIQUE INDEX webhook_deliveries_slot ON webhook_deliveries (endpoint_id, slot)
    WHERE status = 'delivering';
