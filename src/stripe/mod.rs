//! Stripe: the API client wrapper and a Stripe-compatible test double.

pub mod client;
pub mod double;
pub mod inbound;
mod transport;
pub mod webhook;

pub use client::{
    AuthorizeRequest, ClientOptions, Error, PaymentIntentInfo, PaymentIntentStatus, RefundInfo,
    StripeClient,
};
