//! What peers send to sagad: Stripe's webhooks (signature check, the inbox and its processing).
//! Outgoing webhooks to integrators are `crate::outbound`.

pub mod stripe;
