#![recursion_limit = "256"]
//! sagad: a durable saga orchestrator daemon on PostgreSQL.
//!
//! The booking API starts a saga over HTTP; sagad persists it and steps it through hold inventory →
//! authorize payment → capture → confirm booking → notify, and compensates the completed steps in
//! reverse when a step fails for good. See `README.md` for the architecture.

pub mod breaker;
pub mod cli;
pub mod clock;
pub mod config;
pub mod console;
pub mod db;
pub mod domain;
pub mod embedded_pg;
pub mod engine;
pub mod events;
pub mod http;
pub mod inbound;
pub mod maintenance;
pub mod outbound;
pub mod policies;
pub mod projections;
pub mod queue;
pub mod relay;
pub mod server;
pub mod shutdown;
pub mod signing;
pub mod store;
pub mod stripe;
pub mod telemetry;
mod text_enum;
pub mod upcast;
