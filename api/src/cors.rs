//! CORS for browser clients: which origins' pages may call the api (`CORS_ALLOWED_ORIGINS`),
//! checked once as the api builds, and the `tower-http` layer that answers preflights and
//! adds the headers. No origin configured: no layer, no CORS header on any answer.
//!
//! Only exact origins: a wildcard would let every page on the web drive the api with a token a
//! user pasted into it, so `*` (and `null`, the origin of sandboxed frames and files) refuse
//! to start the api. Credentials (cookies) are not allowed: the api authenticates by bearer
//! token, which a page sends itself.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// How long a browser may keep a preflight's answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// Request headers a page may send: the token, JSON bodies, resuming a stream, idempotent
/// submits, trace context, and the Anthropic door's key and version.
const ALLOWED_HEADERS: [HeaderName; 7] = [
    header::AUTHORIZATION,
    header::CONTENT_TYPE,
    HeaderName::from_static("last-event-id"),
    HeaderName::from_static("idempotency-key"),
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("anthropic-version"),
];

/// Answer headers a page may read (a browser hides all but a few unless named here).
const EXPOSED_HEADERS: [HeaderName; 14] = [
    HeaderName::from_static(crate::telemetry::TRACE_ID_HEADER),
    header::RETRY_AFTER,
    header::LOCATION,
    HeaderName::from_static("idempotent-replayed"),
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("x-ratelimit-limit"),
    HeaderName::from_static("x-ratelimit-remaining"),
    HeaderName::from_static("x-ratelimit-reset"),
    HeaderName::from_static("x-ratelimit-limit-requests"),
    HeaderName::from_static("x-ratelimit-remaining-requests"),
    HeaderName::from_static("x-ratelimit-reset-requests"),
    HeaderName::from_static("x-ratelimit-limit-tokens"),
    HeaderName::from_static("x-ratelimit-remaining-tokens"),
    HeaderName::from_static("x-ratelimit-reset-tokens"),
];

/// Why `CORS_ALLOWED_ORIGINS` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CorsError {
    #[error(
        "CORS_ALLOWED_ORIGINS: a wildcard ({0:?}) is refused; list each origin exactly \
         (e.g. https://app.example)"
    )]
    Wildcard(String),
    #[error(
        "CORS_ALLOWED_ORIGINS: {0:?} is not an origin; expected http(s)://host[:port] \
         without path, query or trailing slash"
    )]
    NotAnOrigin(String),
}

/// The allowed origins of `CORS_ALLOWED_ORIGINS` (comma-separated; blanks ignored), each
/// checked to be one exact `http(s)://host[:port]`.
pub fn allowed_origins(raw: &str) -> Result<Vec<HeaderValue>, CorsError> {
    raw.split(',')
        .map(str::trim)
        .filter(|origin| !origin.is_empty())
        .map(|origin| {
            if origin.contains('*') || origin.eq_ignore_ascii_case("null") {
                return Err(CorsError::Wildcard(origin.to_owned()));
            }
            let authority = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"))
                .ok_or_else(|| CorsError::NotAnOrigin(origin.to_owned()))?;
            let clean = !authority.is_empty()
                && authority
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
            // Browsers send the origin in lower case: a list entry in upper case never matches.
            if !clean || authority.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(CorsError::NotAnOrigin(origin.to_owned()));
            }
            HeaderValue::from_str(origin).map_err(|_| CorsError::NotAnOrigin(origin.to_owned()))
        })
        .collect()
}

/// The CORS layer for `origins`, or none when the list is empty.
pub fn layer(origins: &[HeaderValue]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins.iter().cloned()))
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
            .allow_headers(ALLOWED_HEADERS)
            .expose_headers(EXPOSED_HEADERS)
            .max_age(PREFLIGHT_MAX_AGE),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_origins_are_kept_and_anything_else_refused() {
        let kept = allowed_origins(" https://dnd.example , http://localhost:5173,,").unwrap();
        assert_eq!(kept, ["https://dnd.example", "http://localhost:5173"]);
        assert!(allowed_origins("").unwrap().is_empty());
        for wildcard in ["*", "https://*.example", "null"] {
            assert!(
                matches!(allowed_origins(wildcard), Err(CorsError::Wildcard(_))),
                "{wildcard}"
            );
        }
        for bad in [
            "dnd.example",
            "https://dnd.example/",
            "https://dnd.example/path",
            "https://DND.example",
            "ftp://dnd.example",
            "https://",
            "https://a.example?x=1",
        ] {
            assert!(
                matches!(allowed_origins(bad), Err(CorsError::NotAnOrigin(_))),
                "{bad}"
            );
        }
    }
}
