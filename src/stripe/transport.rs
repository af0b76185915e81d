//! The HTTP transport behind async-stripe's request types: reqwest, with a connection pool.
//!
//! async-stripe's own hyper client is built with `pool_max_idle_per_host(0)`: every Stripe call
//! opens a new TCP connection, and against api.stripe.com a new TLS session, before a byte of the
//! request is sent. This transport keeps connections alive between calls. Everything else is as
//! async-stripe does it: the same URL, headers and form body, the request strategy (sagad uses
//! one attempt, with its own idempotency key for effects), Stripe's error body turned into
//! `StripeError::Stripe`, and the `Stripe-Should-Retry` hint passed to the strategy.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use stripe::StripeError;
use stripe_client_core::{CustomizedStripeRequest, Outcome, RequestStrategy, StripeMethod};

/// How long an idle pooled connection is kept: below the idle timeouts of Stripe's edge and of
/// common proxies, so a kept connection is rarely found closed.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Clone)]
pub struct Transport {
    http: reqwest::Client,
    /// Ends in `/`; requests go to `{base}v1{path}`.
    base: String,
    authorization: HeaderValue,
    timeout: Duration,
}

impl Transport {
    pub fn new(secret_key: &str, base: String, timeout: Duration) -> Result<Self, String> {
        let mut authorization = HeaderValue::from_str(&format!("Bearer {secret_key}"))
            .map_err(|_| "the Stripe secret key is not a valid header value".to_owned())?;
        authorization.set_sensitive(true);
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .tcp_nodelay(true)
            .user_agent(concat!(
                "Stripe/v1 RustBindings/1.0.0-rc.10 sagad/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            http,
            base,
            authorization,
            timeout,
        })
    }
}

fn method(m: StripeMethod) -> reqwest::Method {
    match m {
        StripeMethod::Get => reqwest::Method::GET,
        StripeMethod::Post => reqwest::Method::POST,
        StripeMethod::Delete => reqwest::Method::DELETE,
    }
}

fn transport_error(e: reqwest::Error) -> StripeError {
    if e.is_timeout() {
        StripeError::Timeout
    } else {
        // The chain says what happened (refused, reset, closed mid-body …).
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
        StripeError::ClientError(msg)
    }
}

/// Stripe's error body (`{"error": {…}}`) as async-stripe reports it.
fn api_error(status: u16, body: &[u8]) -> StripeError {
    let Ok(text) = std::str::from_utf8(body) else {
        return StripeError::JSONDeserialize("response was not valid UTF-8".into());
    };
    miniserde::json::from_str::<stripe_shared::Error>(text)
        .map(|e| StripeError::Stripe(e.error, status))
        .unwrap_or_else(|_| {
            StripeError::JSONDeserialize(format!(
                "error deserializing Stripe error (HTTP {status})"
            ))
        })
}

/// The form body with its `metadata[…]` pairs in key order, every other pair where it was.
/// async-stripe takes metadata as a `HashMap`, whose iteration order differs from one map to
/// the next: without this, the retry of a request under the same idempotency key could send
/// Stripe other bytes than the first attempt did.
fn canonical_form(body: &str) -> String {
    let is_metadata = |p: &&str| p.starts_with("metadata%5B") || p.starts_with("metadata[");
    let pairs: Vec<&str> = body.split('&').collect();
    let mut metadata: Vec<&str> = pairs.iter().copied().filter(is_metadata).collect();
    if metadata.len() < 2 {
        return body.to_owned();
    }
    metadata.sort_unstable();
    let mut sorted = metadata.into_iter();
    pairs
        .iter()
        .map(|p| {
            if is_metadata(p) {
                sorted.next().unwrap_or(p)
            } else {
                p
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

impl stripe_client_core::StripeClient for Transport {
    type Err = StripeError;

    async fn execute(&self, req: CustomizedStripeRequest) -> Result<Bytes, StripeError> {
        let (req, config) = req.into_pieces();
        let strategy = config.request_strategy.unwrap_or(RequestStrategy::Once);
        let timeout = config.timeout.unwrap_or(self.timeout);
        let mut url = format!("{}v1{}", self.base, req.path);
        if let Some(query) = &req.query {
            url.push('?');
            url.push_str(query);
        }
        let key = strategy.get_key();
        let body = req.body.as_deref().map(canonical_form);
        let mut tries = 0;
        let mut last_status: Option<u16> = None;
        let mut last_retry_hint: Option<bool> = None;
        let mut last_error = StripeError::ClientError("invalid request strategy".into());
        loop {
            match strategy.test(last_status, last_retry_hint, tries) {
                Outcome::Stop => return Err(last_error),
                Outcome::Continue(Some(backoff)) => tokio::time::sleep(backoff).await,
                Outcome::Continue(None) => {}
            }
            tries += 1;
            let mut request = self
                .http
                .request(method(req.method), &url)
                .header(AUTHORIZATION, self.authorization.clone())
                .header("stripe-version", stripe_client_core::VERSION.as_str())
                .timeout(timeout);
            if let Some(key) = &key {
                request = request.header("idempotency-key", key.as_str());
            }
            if let Some(body) = &body {
                request = request
                    .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(body.clone());
            }
            let response = match request.send().await {
                Ok(r) => r,
                Err(e) => {
                    last_error = transport_error(e);
                    continue;
                }
            };
            let status = response.status();
            let retry_hint = response
                .headers()
                .get("stripe-should-retry")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            let body = match response.bytes().await {
                Ok(b) => b,
                Err(e) => {
                    last_error = transport_error(e);
                    continue;
                }
            };
            if status.is_success() {
                return Ok(body);
            }
            last_error = api_error(status.as_u16(), &body);
            last_status = Some(status.as_u16());
            last_retry_hint = retry_hint;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_pairs_are_put_in_key_order_and_nothing_else_moves() {
        let a = "amount=5&metadata%5Bz%5D=1&metadata%5Ba%5D=2&metadata%5Bm%5D=3&confirm=true";
        let b = "amount=5&metadata%5Bm%5D=3&metadata%5Bz%5D=1&metadata%5Ba%5D=2&confirm=true";
        let want = "amount=5&metadata%5Ba%5D=2&metadata%5Bm%5D=3&metadata%5Bz%5D=1&confirm=true";
        assert_eq!(canonical_form(a), want);
        assert_eq!(canonical_form(b), want);
        assert_eq!(canonical_form("b=1&a=2"), "b=1&a=2");
    }

    #[test]
    fn stripe_error_bodies_become_api_errors() {
        let body = br#"{"error": {"type": "card_error", "code": "card_declined", "decline_code": "insufficient_funds", "message": "Your card has insufficient funds."}}"#;
        match api_error(402, body) {
            StripeError::Stripe(e, 402) => {
                assert_eq!(e.code.as_ref().map(|c| c.as_str()), Some("card_declined"));
                assert_eq!(e.decline_code.as_deref(), Some("insufficient_funds"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            api_error(502, b"<html>bad gateway</html>"),
            StripeError::JSONDeserialize(m) if m.contains("502")
        ));
    }
}
