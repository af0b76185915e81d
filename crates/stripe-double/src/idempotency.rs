//! Stripe's idempotent requests: a key replays the first result, byte for byte.

use std::collections::HashMap;

use axum::http::StatusCode;
use bytes::Bytes;

use super::render::ApiError;

/// A response saved under an idempotency key.
#[derive(Debug, Clone)]
pub struct StoredResponse {
    pub status: StatusCode,
    pub body: Bytes,
    pub request_id: String,
}

#[derive(Debug)]
struct Entry {
    endpoint: String,
    params: Vec<(String, String)>,
    response: StoredResponse,
}

/// Saved results, keyed by (API key, idempotency key): keys of different API keys never collide.
#[derive(Debug, Default)]
pub struct IdempotencyStore {
    entries: HashMap<(String, String), Entry>,
}

pub enum Lookup {
    /// First use of the key.
    Miss,
    /// Same endpoint and parameters: replay this.
    Replay(StoredResponse),
    /// The key was used for another request: Stripe's 400 `idempotency_error`.
    Conflict(ApiError),
}

impl IdempotencyStore {
    pub fn lookup(
        &self,
        api_key: &str,
        key: &str,
        endpoint: &str,
        params: &[(String, String)],
    ) -> Lookup {
        let Some(entry) = self.entries.get(&(api_key.to_owned(), key.to_owned())) else {
            return Lookup::Miss;
        };
        if entry.endpoint != endpoint {
            return Lookup::Conflict(ApiError::idempotency(
                StatusCode::BAD_REQUEST,
                format!(
                    "Keys for idempotent requests can only be used for the same endpoint they were \
                     first used for ('{}' vs '{endpoint}'). Try using a key other than '{key}' if you \
                     meant to execute a different request.",
                    entry.endpoint
                ),
            ));
        }
        if entry.params != params {
            return Lookup::Conflict(ApiError::idempotency(
                StatusCode::BAD_REQUEST,
                format!(
                    "Keys for idempotent requests can only be used with the same parameters they \
                     were first used with. Try using a key other than '{key}' if you meant to \
                     execute a different request."
                ),
            ));
        }
        Lookup::Replay(entry.response.clone())
    }

    pub fn store(
        &mut self,
        api_key: &str,
        key: &str,
        endpoint: &str,
        params: &[(String, String)],
        response: StoredResponse,
    ) {
        self.entries.insert(
            (api_key.to_owned(), key.to_owned()),
            Entry {
                endpoint: endpoint.to_owned(),
                params: params.to_vec(),
                response,
            },
        );
    }
}
