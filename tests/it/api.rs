//! The start-saga RPC's edges: authentication, validation, idempotency, limits, reads.
