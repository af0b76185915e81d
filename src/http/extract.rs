//! The extractors every route uses, so that every refusal answers the JSON error body: one JSON
//! body reader (strict: a duplicate key or a NUL character is refused, never silently resolved),
//! query strings and path segments.

use std::fmt::Write as _;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use chrono::{DateTime, Datelike, Utc};
use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::{ApiError, BODY_LIMIT};
use crate::domain::FieldError;

/// A JSON request body: the parsed document (`raw`, for fingerprints) and the typed request.
///
/// Refusals: an unreadable body or one over [`BODY_LIMIT`] → 413; not JSON, or a key twice in
/// one object → 400 `malformed_json`; a NUL character in any string or key → 422 naming the field
/// (PostgreSQL cannot store it); a document of the wrong shape → 422.
pub struct JsonBody<T> {
    pub raw: Value,
    pub value: T,
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let body = buffered(req, state).await?;
        parse(&body)
    }
}

/// The request's body, buffered: over [`BODY_LIMIT`] → 413, unreadable → 400.
async fn buffered<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|e| match e {
        BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)) => {
            ApiError::PayloadTooLarge(BODY_LIMIT)
        }
        other => ApiError::BadRequest(other.body_text()),
    })
}

/// A JSON body that may be left out: an empty body (or `null`) is `None`, any other is read as
/// [`JsonBody`] reads it, with the same refusals.
pub struct MaybeJsonBody<T>(pub Option<T>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for MaybeJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let body = buffered(req, state).await?;
        if body.is_empty() {
            return Ok(Self(None));
        }
        parse::<Option<T>>(&body).map(|b| Self(b.value))
    }
}

/// Parses and checks a JSON body (see [`JsonBody`]).
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<JsonBody<T>, ApiError> {
    let raw = strict_from_slice(body).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    let mut errors = Vec::new();
    find_nul(&raw, &mut String::new(), &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let value = T::deserialize(&raw).map_err(|e| {
        ApiError::Validation(vec![FieldError {
            field: "body".into(),
            message: e.to_string(),
        }])
    })?;
    Ok(JsonBody { raw, value })
}

/// `serde_json::from_slice` into a [`Value`], refusing an object that holds a key twice (serde
/// would keep the last one: `"amount":-1,"amount":100` must not pass as 100).
pub fn strict_from_slice(body: &[u8]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = Strict { path: "" }.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// Builds a [`Value`], knowing where in the document it is (for the duplicate-key message).
struct Strict<'p> {
    path: &'p str,
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number that is not finite"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        let mut path = String::new();
        loop {
            path.clear();
            let _ = write!(path, "{}[{}]", self.path, out.len());
            match seq.next_element_seed(Strict { path: &path })? {
                Some(v) => out.push(v),
                None => return Ok(Value::Array(out)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = join(self.path, &key);
            if out.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "duplicate key `{}`",
                    path.escape_debug()
                )));
            }
            let value = map.next_value_seed(Strict { path: &path })?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Every string or key holding U+0000, by its path (`description`, `event_types[2]`).
fn find_nul(v: &Value, path: &mut String, errors: &mut Vec<FieldError>) {
    let refuse = |field: String| FieldError {
        field,
        message: "must not contain the NUL character (\\u0000)".into(),
    };
    match v {
        Value::String(s) if s.contains('\0') => errors.push(refuse(path.clone())),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                let _ = write!(path, "[{i}]");
                find_nul(item, path, errors);
                path.truncate(len);
            }
        }
        Value::Object(fields) => {
            for (key, item) in fields {
                let child = join(path, key);
                if key.contains('\0') {
                    errors.push(refuse(child.escape_debug().to_string()));
                    continue;
                }
                let mut child = child;
                find_nul(item, &mut child, errors);
            }
        }
        _ => {}
    }
}

/// A query string, deserialized; a NUL character anywhere, or a value of the wrong type, is a 400
/// with the JSON error body.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            if key.contains('\0') || value.contains('\0') {
                return Err(ApiError::BadRequest(format!(
                    "query parameter `{}` must not contain the NUL character (%00)",
                    key.escape_debug()
                )));
            }
        }
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(v)| ApiQuery(v))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

/// One path segment (an id), as text; the handler parses it and says what it expected.
pub struct ApiPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ApiPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(s)| ApiPath(s))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

/// Two path segments (a parent's id and a child's), as text; the handler parses them.
pub struct ApiPath2(pub String, pub String);

impl<S: Send + Sync> FromRequestParts<S> for ApiPath2 {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map(|Path((a, b))| ApiPath2(a, b))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

/// Whether PostgreSQL (and RFC 3339) can hold this time: years 1 to 9999.
pub fn storable_time(t: &DateTime<Utc>) -> bool {
    (1..=9999).contains(&t.year())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Doc {
        #[allow(dead_code)]
        a: Value,
    }

    fn refusal<T: DeserializeOwned>(body: &str) -> ApiError {
        match parse::<T>(body.as_bytes()) {
            Ok(_) => panic!("{body} was accepted"),
            Err(e) => e,
        }
    }

    #[test]
    fn duplicate_keys_are_refused_with_their_path() {
        let e = refusal::<Doc>(r#"{"a": {"input": {"amount": -1, "amount": 100}}}"#);
        assert!(matches!(e, ApiError::MalformedJson(_)), "{e:?}");
        assert!(
            e.to_string().contains("duplicate key `a.input.amount`"),
            "{e}"
        );
        let e = refusal::<Doc>(r#"{"a": [{"x": 1}, {"x": 2, "x": 3}]}"#);
        assert!(e.to_string().contains("`a[1].x`"), "{e}");
        // The same key in different objects is fine.
        assert!(parse::<Doc>(br#"{"a": [{"x": 1}, {"x": 2}]}"#).is_ok());
    }

    #[test]
    fn nul_characters_are_refused_by_field() {
        let e = refusal::<Doc>(r#"{"a": {"description": "x\u0000y", "list": ["ok", "\u0000"]}}"#);
        let ApiError::Validation(fields) = e else {
            panic!("{e:?}")
        };
        let names: Vec<&str> = fields.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(names, ["a.description", "a.list[1]"]);
        let e = refusal::<Doc>(r#"{"a": {"k\u0000": 1}}"#);
        assert!(matches!(e, ApiError::Validation(_)), "{e:?}");
    }

    #[test]
    fn the_parsed_document_is_serde_json_s() {
        let body = br#"{"a": [1, -2, 3.5, "s", null, true, {"b": {}}]}"#;
        let ours = parse::<Doc>(body).map(|j| j.raw).ok();
        let theirs: Value = serde_json::from_slice(body).unwrap_or_default();
        assert_eq!(ours, Some(theirs));
        assert!(strict_from_slice(b"{} x").is_err());
    }

    #[test]
    fn storable_times_are_years_1_to_9999() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc));
        assert!(t("2026-01-01T00:00:00Z").is_ok_and(|t| storable_time(&t)));
        assert!(t("9999-12-31T23:59:59Z").is_ok_and(|t| storable_time(&t)));
        let far: DateTime<Utc> = "-5000-01-01T00:00:00Z".parse().unwrap_or_default();
        assert!(!storable_time(&far));
    }
}
