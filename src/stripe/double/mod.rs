//! Stripe test double.
