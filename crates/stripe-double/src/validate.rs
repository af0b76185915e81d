//! Parameter checks with Stripe's error codes, and small helpers for ids and amounts.

use rand::Rng;

use super::form::Params;
use super::render::ApiError;

pub fn new_id(prefix: &str) -> String {
    let suffix: String = rand::rng()
        .sample_iter(&rand::distr::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    format!("{prefix}_{suffix}")
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

pub fn check_known(params: &Params, allowed: &[&str]) -> Result<(), ApiError> {
    match params.names().find(|n| !allowed.contains(n)) {
        Some(unknown) => Err(ApiError::unknown_param(unknown)),
        None => Ok(()),
    }
}

pub fn int_param(params: &Params, name: &str) -> Result<Option<i64>, ApiError> {
    match params.get(name) {
        None => Ok(None),
        Some(_) => match params.str(name).and_then(|s| s.parse::<i64>().ok()) {
            Some(v) => Ok(Some(v)),
            None => Err(ApiError::invalid_param(
                "parameter_invalid_integer",
                name,
                format!(
                    "Invalid integer: {}",
                    params.str(name).unwrap_or("(nested value)")
                ),
            )),
        },
    }
}

pub fn bool_param(params: &Params, name: &str) -> Result<Option<bool>, ApiError> {
    match params.get(name) {
        None => Ok(None),
        Some(_) => match params.str(name) {
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            other => Err(ApiError::invalid_param(
                "parameter_invalid_boolean",
                name,
                format!("Invalid boolean: {}", other.unwrap_or("(nested value)")),
            )),
        },
    }
}

pub fn enum_param(
    params: &Params,
    name: &str,
    allowed: &[&str],
) -> Result<Option<String>, ApiError> {
    match params.get(name) {
        None => Ok(None),
        Some(_) => match params.str(name) {
            Some(v) if allowed.contains(&v) => Ok(Some(v.to_owned())),
            other => Err(ApiError::invalid_param(
                "parameter_invalid_string",
                name,
                format!(
                    "Invalid {name}: {}; must be one of {}",
                    other.unwrap_or("(nested value)"),
                    allowed.join(", ")
                ),
            )),
        },
    }
}

pub fn format_amount(amount: i64, currency: &str) -> String {
    format!("{}.{:02} {currency}", amount / 100, amount % 100)
}
