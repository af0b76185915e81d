//! Stripe: the API client wrapper and a Stripe-compatible test double.

pub mod client;
pub mod double;

pub use client::{
    AuthorizeRequest, ClientOptions, Error, PaymentIntentInfo, PaymentIntentStatus, RefundInfo,
    StripeClient,
};
