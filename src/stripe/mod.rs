//! Stripe: the API client wrapper and a Stripe-compatible test double.

pub mod client;
pub mod double;
