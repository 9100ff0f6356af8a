//! Authentication of a request: the [`AuthUser`] extractor takes the bearer token of the
//! `Authorization` header and verifies it with the api's [`JwtKeys`](crate::jwt::JwtKeys); the
//! roles that grant the admin and service routes ([`AdminUser`] refuses any other caller before
//! a route reads its body, so a non-admin learns nothing of an admin route's input).

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
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
