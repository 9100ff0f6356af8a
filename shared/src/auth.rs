//! JWT authentication: HS256 tokens issued by the shared auth system with `SECRET_KEY`.
//!
//! The algorithm is pinned (a token claiming any other `alg` is refused), `exp` is required
//! and checked, and `sub` must be the user's UUID: it becomes `user_id` on every request.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ApiError;
use crate::http::AppState;

/// Clock skew tolerated on `exp`, in seconds.
const LEEWAY_SECS: u64 = 30;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Uuid,
    pub exp: i64,
    #[serde(default)]
    pub iat: Option<i64>,
    /// `admin` for operators; absent for ordinary users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// Verifies (and, for local tooling, issues) tokens.
#[derive(Clone)]
pub struct JwtKeys {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKeys(..)")
    }
}

impl JwtKeys {
    pub fn new(secret: &SecretString) -> Self {
        let bytes = secret.expose_secret().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = LEEWAY_SECS;
        Self {
            decoding: DecodingKey::from_secret(bytes),
            encoding: EncodingKey::from_secret(bytes),
            validation,
        }
    }

    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|err| match err.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    ApiError::Unauthorized("the token has expired")
                }
                _ => ApiError::Unauthorized("the token is invalid"),
            })
    }

    /// Issues a token (the `llm-api token` command and tests).
    pub fn issue(
        &self,
        user: Uuid,
        ttl_secs: i64,
        role: Option<&str>,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: user,
            exp: now + ttl_secs,
            iat: Some(now),
            role: role.map(str::to_owned),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }
}

/// The authenticated caller of an `/api/v1` route.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: Uuid,
    pub role: Option<String>,
}

/// The role claim that grants the admin endpoints.
pub const ADMIN_ROLE: &str = "admin";
/// The role claim of other services (the message hub) delivering events.
pub const SERVICE_ROLE: &str = "service";

impl AuthUser {
    pub fn is_admin(&self) -> bool {
        self.role.as_deref() == Some(ADMIN_ROLE)
    }

    pub fn is_service(&self) -> bool {
        self.role.as_deref() == Some(SERVICE_ROLE)
    }
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or(ApiError::Unauthorized(
                "missing Authorization header (expected: Bearer <token>)",
            ))?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthorized(
                "the Authorization header must be: Bearer <token>",
            ))?;
        let claims = state.jwt.verify(token)?;
        Ok(Self {
            id: claims.sub,
            role: claims.role,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> JwtKeys {
        JwtKeys::new(&SecretString::from("k".repeat(40)))
    }

    #[test]
    fn round_trip_and_expiry() {
        let user = Uuid::now_v7();
        let token = keys().issue(user, 60, None).unwrap();
        assert_eq!(keys().verify(&token).unwrap().sub, user);
        let expired = keys().issue(user, -3600, None).unwrap();
        assert!(matches!(
            keys().verify(&expired),
            Err(ApiError::Unauthorized("the token has expired"))
        ));
    }

    #[test]
    fn other_algorithms_and_keys_are_refused() {
        let user = Uuid::now_v7();
        let claims = Claims {
            sub: user,
            exp: chrono::Utc::now().timestamp() + 60,
            iat: None,
            role: None,
        };
        let secret = "k".repeat(40);
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap();
        assert!(keys().verify(&hs512).is_err());
        let other_key = JwtKeys::new(&SecretString::from("o".repeat(40)))
            .issue(user, 60, None)
            .unwrap();
        assert!(keys().verify(&other_key).is_err());
    }
}
