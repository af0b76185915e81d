//! sagad: a durable saga orchestrator daemon on PostgreSQL.

pub mod embedded_pg;
pub mod engine;
pub mod stripe;
