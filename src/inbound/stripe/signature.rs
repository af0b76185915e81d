//! Stripe webhook signatures, exactly as Stripe specifies them
//! (<https://docs.stripe.com/webhooks#verify-manually>): the `Stripe-Signature` header carries
//! `t=<unix seconds>` and one or more `v1=<hex HMAC-SHA256(secret, "{t}.{raw body}")>` entries.
//! A request is genuine when any `v1` matches any configured endpoint secret (several during a
//! rotation) and `t` is within the tolerance of our clock. `v0` and unknown schemes are ignored.
//!
//! The check costs one HMAC per configured secret whatever the header holds: the header's size
//! and its `v1` entries are capped, the timestamp is checked before anything else, and each
//! secret's expected MAC is computed once and compared (in constant time) with every entry.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Longest `Stripe-Signature` header read. Stripe sends `t=`, one `v1=` per live secret (two
/// during a rotation) and in test mode a `v0=`: about 75 bytes each.
pub const MAX_HEADER_LEN: usize = 1024;
/// Most `v1=` entries a header may carry.
pub const MAX_SIGNATURES: usize = 8;

/// Why a webhook request was refused. The messages are short and safe to return to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing Stripe-Signature header")]
    MissingHeader,
    #[error("malformed Stripe-Signature header: {0}")]
    Malformed(&'static str),
    #[error("Stripe-Signature header longer than {MAX_HEADER_LEN} bytes")]
    HeaderTooLong,
    #[error("more than {MAX_SIGNATURES} v1 signatures in Stripe-Signature header")]
    TooManySignatures,
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
    /// HMACs computed so far (shared by clones), to check what one request can cost.
    hmacs: Arc<AtomicU64>,
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
            hmacs: Arc::default(),
        }
    }

    pub fn has_secrets(&self) -> bool {
        !self.secrets.is_empty()
    }

    /// HMACs this verifier (and its clones) computed so far.
    pub fn hmac_computations(&self) -> u64 {
        self.hmacs.load(Ordering::Relaxed)
    }

    /// Verifies `header` for `body` at `now` (unix seconds); returns the signed timestamp.
    pub fn verify(
        &self,
        header: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<i64, SignatureError> {
        let signed = self.check_header(header, now)?;
        self.check_body(&signed, body)
    }

    /// The header's part of the check, before the body is even read: its size, its entries and
    /// its timestamp. No HMAC is computed.
    pub fn check_header(&self, header: Option<&str>, now: i64) -> Result<Signed, SignatureError> {
        let header = header.ok_or(SignatureError::MissingHeader)?;
        if header.len() > MAX_HEADER_LEN {
            return Err(SignatureError::HeaderTooLong);
        }
        let signed = parse_header(header)?;
        let skew = now.abs_diff(signed.timestamp);
        if skew > self.tolerance.as_secs() {
            return Err(SignatureError::TimestampOutsideTolerance);
        }
        Ok(signed)
    }

    /// The body's part: one HMAC per secret, compared with every `v1` entry in constant time.
    pub fn check_body(&self, signed: &Signed, body: &[u8]) -> Result<i64, SignatureError> {
        let mut matched = false;
        for secret in &self.secrets {
            self.hmacs.fetch_add(1, Ordering::Relaxed);
            let expected = mac(secret, signed.timestamp, body).finalize().into_bytes();
            for sig in &signed.v1 {
                matched |= constant_time_eq(&expected, sig);
            }
        }
        if matched {
            Ok(signed.timestamp)
        } else {
            Err(SignatureError::NoMatch)
        }
    }
}

/// A `Stripe-Signature` header that passed [`Verifier::check_header`].
#[derive(Debug, Clone)]
pub struct Signed {
    timestamp: i64,
    v1: Vec<[u8; 32]>,
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn parse_header(header: &str) -> Result<Signed, SignatureError> {
    let mut timestamp = None;
    let mut v1 = Vec::new();
    let mut entries = 0;
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
            // A v1 entry that is not 32 bytes of hex cannot match; keep looking at the others.
            "v1" => {
                entries += 1;
                if entries > MAX_SIGNATURES {
                    return Err(SignatureError::TooManySignatures);
                }
                let mut sig = [0u8; 32];
                if hex::decode_to_slice(value.trim(), &mut sig).is_ok() {
                    v1.push(sig);
                }
            }
            // v0 (test-mode legacy) and unknown schemes are ignored, as Stripe's libraries do.
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed("no timestamp"))?;
    if entries == 0 {
        return Err(SignatureError::NoV1Signature);
    }
    Ok(Signed { timestamp, v1 })
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
        Verifier::new(secrets, Duration::from_secs(300))
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

    #[test]
    fn a_flood_of_entries_costs_one_hmac_per_secret_at_most() {
        let v = verifier(&["whsec_a", "whsec_b"]);
        let body = vec![b'x'; 255 * 1024];
        let bogus = format!(",v1={}", "ab".repeat(32));

        // 6,000 entries: refused by the caps before any HMAC.
        let flood = format!("t={NOW}{}", bogus.repeat(6000));
        assert_eq!(
            v.verify(Some(&flood), &body, NOW),
            Err(SignatureError::HeaderTooLong)
        );
        let dense = format!("t={NOW}{}", ",v1=0".repeat(MAX_SIGNATURES + 1));
        assert!(dense.len() <= MAX_HEADER_LEN);
        assert_eq!(
            v.verify(Some(&dense), &body, NOW),
            Err(SignatureError::TooManySignatures)
        );
        // A stale timestamp is refused before any HMAC too.
        let stale = format!("t={}{}", NOW - 3600, bogus.repeat(MAX_SIGNATURES));
        assert_eq!(
            v.verify(Some(&stale), &body, NOW),
            Err(SignatureError::TimestampOutsideTolerance)
        );
        assert_eq!(v.hmac_computations(), 0);

        // As many entries as allowed: one HMAC per secret, not per entry.
        let full = format!("t={NOW}{}", bogus.repeat(MAX_SIGNATURES));
        assert_eq!(
            v.verify(Some(&full), &body, NOW),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(v.hmac_computations(), 2);

        // The genuine entry last among bogus ones still verifies, at the same cost.
        let genuine = format!(
            "t={NOW}{},v1={}",
            bogus.repeat(MAX_SIGNATURES - 1),
            sign("whsec_b", NOW, &body)
        );
        assert_eq!(v.verify(Some(&genuine), &body, NOW), Ok(NOW));
        assert_eq!(v.hmac_computations(), 4);
    }
}
