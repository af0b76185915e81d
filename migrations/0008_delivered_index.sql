-- no-transaction
-- The cleaner that prunes delivered webhook deliveries past the retention walks them oldest
-- first (`store::webhooks::prune_delivered`). Pending deliveries are not in this index, so the
-- fan-out that inserts them does not maintain it.
--
-- Built CONCURRENTLY, so that inserts and updates of webhook_deliveries go on while it is built;
-- that cannot run inside a transaction, hence the first line, and the file holds this one
-- statement only. Should the build be interrupted, PostgreSQL leaves an invalid index of this
-- name behind and the next start fails with "already exists": drop it
-- (`DROP INDEX CONCURRENTLY webhook_deliveries_delivered;`) and start again.
CREATE INDEX CONCURRENTLY webhook_deliveries_delivered
    ON webhook_deliveries (delivered_at) WHERE status = 'delivered';
