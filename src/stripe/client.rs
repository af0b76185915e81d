//! Stripe client.
