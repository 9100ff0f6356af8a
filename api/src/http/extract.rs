//! Extractors whose rejections are answered in the service's one error shape: JSON bodies
//! ([`JsonBody`], which also refuses NUL characters PostgreSQL cannot store) and query strings
//! ([`QueryParams`]).

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::AppState;

/// `axum::Json` whose rejections are answered in the service's error shape.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let max_body_bytes = state.limits.max_body_bytes;
        let (parts, body) = req.into_parts();
        // Read once (within the body limit) to refuse NUL characters, which PostgreSQL cannot
        // store in text or jsonb, before the JSON is parsed from the same bytes.
        let bytes = bytes::Bytes::from_request(Request::from_parts(parts.clone(), body), state)
            .await
            .map_err(|rejection| match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(max_body_bytes),
                _ => ApiError::BadRequest(rejection.body_text()),
            })?;
        if has_nul_escape(&bytes) {
            return Err(nul_refused());
        }
        let req = Request::from_parts(parts, axum::body::Body::from(bytes));
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection, max_body_bytes)),
        }
    }
}

fn nul_refused() -> ApiError {
    ApiError::BadRequest("text must not contain NUL characters (\\u0000)".into())
}

/// Whether JSON text contains the escape `\u0000` (a NUL character in a string or key); a
/// raw NUL byte is invalid JSON and refused by the parser anyway. `\\u0000` (an escaped
/// backslash, then `u0000`) is not one.
pub(crate) fn has_nul_escape(json: &[u8]) -> bool {
    json.windows(6).enumerate().any(|(at, w)| {
        w[0] == b'\\'
            && w[1] == b'u'
            && &w[2..] == b"0000"
            && json[..at].iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 0
    })
}

fn json_rejection(rejection: JsonRejection, max_body_bytes: usize) -> ApiError {
    match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(max_body_bytes),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(
            "expected a body with Content-Type: application/json".into(),
        ),
        StatusCode::UNPROCESSABLE_ENTITY => ApiError::Validation {
            field: None,
            message: rejection.body_text(),
        },
        _ => ApiError::BadRequest(rejection.body_text()),
    }
}

/// `axum::extract::Query` with rejections in the service's error shape.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        if query.contains("%00") || query.contains('\0') {
            return Err(nul_refused());
        }
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Self(value))
            .map_err(|rejection: QueryRejection| ApiError::BadRequest(rejection.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::has_nul_escape;

    #[test]
    fn nul_escapes_are_found_and_escaped_backslashes_are_not() {
        assert!(has_nul_escape(br#"{"prompt": "a\u0000b"}"#));
        assert!(has_nul_escape(br#"{"\u0000": 1}"#));
        assert!(has_nul_escape(br#"{"p": "\\\u0000"}"#));
        assert!(!has_nul_escape(br#"{"p": "\\u0000"}"#));
        assert!(has_nul_escape(br#"{"p": "\u00001"}"#));
        assert!(!has_nul_escape(br#"{"p": "\u0001"}"#));
        assert!(!has_nul_escape(b"{}"));
    }
}
