//! Stripe webhook signatures, exactly as Stripe specifies them
//! (<https://docs.stripe.com/webhooks#verify-manually>): the `Stripe-Signature` header carries
//! `t=<unix seconds>` and one or more `v1=<hex HMAC-SHA256(secret, "{t}.{raw body}")>` entries.
//! A request is genuine when any `v1` matches any configured endpoint secret (several during a
//! rotation) and `t` is within the tolerance of our clock. `v0` and unknown schemes are ignored.

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Stripe's default tolerance between the signed timestamp and our clock.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// Why a webhook request was refused. The messages are short and safe to return to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing Stripe-Signature header")]
    MissingHeader,
    #[error("malformed Stripe-Signature header: {0}")]
    Malformed(&'static str),
    #[error("no v1 signature in Stripe-Signature header")]
    NoV1Signature,
    #[error("timestamp outside the tolerance")]
    TimestampOutsideTolerance,
    #[error("no signature matches")]
    NoMatch,
}

/// Checks signatures against the configured endpoint secrets.
#[derive(Clone)]
pub struct Verifier {
    secrets: Vec<Vec<u8>>,
    tolerance: Duration,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secrets.
        f.debug_struct("Verifier")
            .field("secrets", &self.secrets.len())
            .field("tolerance", &self.tolerance)
            .finish()
    }
}

impl Verifier {
    /// `secrets` are the endpoint secrets (`whsec_…`) exactly as the Stripe dashboard shows them:
    /// Stripe uses the whole string, prefix included, as the HMAC key. Blank entries are dropped.
    pub fn new<S: AsRef<str>>(secrets: &[S], tolerance: Duration) -> Self {
        Self {
            secrets: secrets
                .iter()
                .map(|s| s.as_ref().trim())
                .filter(|s| !s.is_empty())
                .map(|s| s.as_bytes().to_vec())
                .collect(),
            tolerance,
        }
    }

    pub fn has_secrets(&self) -> bool {
        !self.secrets.is_empty()
    }

    /// Verifies `header` for `body` at `now` (unix seconds); returns the signed timestamp.
    pub fn verify(
        &self,
        header: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<i64, SignatureError> {
        let header = header.ok_or(SignatureError::MissingHeader)?;
        let parsed = parse_header(header)?;
        let skew = now.abs_diff(parsed.timestamp);
        if skew > self.tolerance.as_secs() {
            return Err(SignatureError::TimestampOutsideTolerance);
        }
        for secret in &self.secrets {
            for sig in &parsed.v1 {
                // `verify_slice` compares in constant time.
                if mac(secret, parsed.timestamp, body)
                    .verify_slice(sig)
                    .is_ok()
                {
                    return Ok(parsed.timestamp);
                }
            }
        }
        Err(SignatureError::NoMatch)
    }
}

struct Parsed {
    timestamp: i64,
    v1: Vec<Vec<u8>>,
}

fn parse_header(header: &str) -> Result<Parsed, SignatureError> {
    let mut timestamp = None;
    let mut v1 = Vec::new();
    for item in header.split(',') {
        let Some((key, value)) = item.trim().split_once('=') else {
            return Err(SignatureError::Malformed("expected key=value pairs"));
        };
        match key.trim() {
            "t" => {
                if timestamp.is_some() {
                    return Err(SignatureError::Malformed("more than one timestamp"));
                }
                let t = value
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| SignatureError::Malformed("timestamp is not an integer"))?;
                timestamp = Some(t);
            }
            // A v1 entry that is not hex cannot match; keep looking at the others.
            "v1" => {
                if let Ok(sig) = hex::decode(value.trim()) {
                    v1.push(sig);
                }
            }
            // v0 (test-mode legacy) and unknown schemes are ignored, as Stripe's libraries do.
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed("no timestamp"))?;
    if v1.is_empty() {
        return Err(SignatureError::NoV1Signature);
    }
    Ok(Parsed { timestamp, v1 })
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length; the error case cannot happen.
    let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any size"),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The hex `v1` signature of `body` at `timestamp`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    hex::encode(
        mac(secret.as_bytes(), timestamp, body)
            .finalize()
            .into_bytes(),
    )
}

/// A `Stripe-Signature` header value: `t=…` and one `v1=…` per secret (as Stripe sends during a
/// secret rotation).
pub fn header_value<S: AsRef<str>>(secrets: &[S], timestamp: i64, body: &[u8]) -> String {
    let mut out = format!("t={timestamp}");
    for s in secrets {
        out.push_str(",v1=");
        out.push_str(&sign(s.as_ref(), timestamp, body));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    fn verifier(secrets: &[&str]) -> Verifier {
        Verifier::new(secrets, DEFAULT_TOLERANCE)
    }

    #[test]
    fn round_trip_and_rotation() {
        let body = br#"{"id":"evt_1"}"#;
        let h = header_value(&["whsec_old"], NOW, body);
        assert_eq!(
            verifier(&["whsec_new", "whsec_old"]).verify(Some(&h), body, NOW),
            Ok(NOW)
        );
        assert_eq!(
            verifier(&["whsec_new"]).verify(Some(&h), body, NOW),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn refusals() {
        let v = verifier(&["whsec_x"]);
        let body = b"{}";
        let sig = sign("whsec_x", NOW, body);
        assert_eq!(
            v.verify(None, body, NOW),
            Err(SignatureError::MissingHeader)
        );
        assert_eq!(
            v.verify(Some("garbage"), body, NOW),
            Err(SignatureError::Malformed("expected key=value pairs"))
        );
        assert_eq!(
            v.verify(Some(&format!("v1={sig}")), body, NOW),
            Err(SignatureError::Malformed("no timestamp"))
        );
        assert_eq!(
            v.verify(Some(&format!("t={NOW},v0={sig}")), body, NOW),
            Err(SignatureError::NoV1Signature)
        );
        let ok = format!("t={NOW},v0=abc,v1=zz,scheme2=1,v1={sig}");
        assert_eq!(v.verify(Some(&ok), body, NOW), Ok(NOW));
        assert_eq!(v.verify(Some(&ok), body, NOW + 300), Ok(NOW));
        assert_eq!(
            v.verify(Some(&ok), body, NOW + 301),
            Err(SignatureError::TimestampOutsideTolerance)
        );
        assert_eq!(
            v.verify(Some(&ok), body, NOW - 301),
            Err(SignatureError::TimestampOutsideTolerance)
        );
        assert_eq!(
            v.verify(Some(&ok), b"{ }", NOW),
            Err(SignatureError::NoMatch)
        );
    }
}
