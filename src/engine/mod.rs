//! The saga engine: definitions, retry policy, runner and compensation.

pub mod definition;
pub mod retry;
