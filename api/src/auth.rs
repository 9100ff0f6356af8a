//! Authentication of a request: the [`AuthUser`] extractor takes the bearer token of the
//! `Authorization` header and verifies it with the api's [`JwtKeys`](crate::jwt::JwtKeys); the
//! roles that grant the admin and service routes ([`AdminUser`] refuses any other caller before
//! a route reads its body, so a non-admin learns nothing of an admin route's input); and
//! [`ApiKeyUser`], the same token sent as Anthropic's SDKs send their key (`x-api-key`).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, header};
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;

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
        Self::from_headers(&parts.headers, state)
    }
}

impl AuthUser {
    /// The caller named by the bearer token of `Authorization` in `headers`.
    pub fn from_headers(headers: &HeaderMap, state: &AppState) -> Result<Self, ApiError> {
        let value = headers
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

/// The header Anthropic's SDKs carry their API key in.
const API_KEY_HEADER: HeaderName = HeaderName::from_static("x-api-key");

/// The caller of the Anthropic-compatible door: the JWT in `x-api-key` (as Anthropic's SDKs
/// send their key), or else the bearer token of `Authorization`.
#[derive(Debug, Clone)]
pub struct ApiKeyUser(pub AuthUser);

impl FromRequestParts<AppState> for ApiKeyUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(API_KEY_HEADER) else {
            if parts.headers.contains_key(header::AUTHORIZATION) {
                return AuthUser::from_request_parts(parts, state).await.map(Self);
            }
            return Err(ApiError::Unauthorized(
                "missing x-api-key header (expected: x-api-key: <token>, or Authorization: Bearer <token>)",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthorized(
                "the x-api-key header must be a token",
            ))?;
        let claims = state.jwt.verify(token)?;
        Ok(Self(AuthUser {
            id: claims.sub,
            role: claims.role,
        }))
    }
}

/// The caller of an admin route: an [`AuthUser`] with the admin role, else a 403.
#[derive(Debug, Clone)]
pub struct AdminUser {
    pub id: Uuid,
}

impl FromRequestParts<AppState> for AdminUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        if user.is_admin() {
            Ok(Self { id: user.id })
        } else {
            Err(ApiError::Forbidden("this endpoint needs the admin role"))
        }
    }
}
