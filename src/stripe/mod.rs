//! Stripe: the client sagad calls Stripe's API with. Stripe's webhooks to sagad are
//! `crate::inbound::stripe`; the Stripe test double is its own crate (`crates/stripe-double`).

pub mod client;
mod transport;

pub use client::{
    AuthorizeRequest, ClientOptions, Error, PaymentIntentInfo, PaymentIntentStatus, RefundInfo,
    StripeClient,
};
