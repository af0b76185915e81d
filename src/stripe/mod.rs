//! Stripe: the API client wrapper, inbound webhook signatures and the inbox that processes them.
//! The Stripe test double is its own crate (`crates/stripe-double`).

pub mod client;
mod transport;

pub use client::{
    AuthorizeRequest, ClientOptions, Error, PaymentIntentInfo, PaymentIntentStatus, RefundInfo,
    StripeClient,
};
