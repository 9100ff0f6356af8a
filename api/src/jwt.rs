//! JWT keys: HS256 tokens issued by the shared auth system with `SECRET_KEY`, verified here (and
//! issued for local tooling, `llm-api token`); the `AuthUser` extractor uses them.
//!
//! The algorithm is pinned (a token claiming any other `alg` is refused), `exp` is required
//! and checked, and `sub` must be the user's UUID: it becomes `user_id` on every request.
//!
//! Stream tokens ([`StreamClaims`]) are signed with the same key for one purpose: reading one
//! request's stream from a URL (a browser's `EventSource` cannot send `Authorization`). Their
//! audience is [`JwtKeys::stream_audience`], never the one bearer tokens carry, so neither kind
//! of token is ever accepted as the other.
//!
//! A client sends the same token with every request, so a verified token's claims are kept
//! (bounded, [`VERIFIED_CAPACITY`]): the same bytes again need only their expiry checked, not
//! their signature and JSON (~7 µs less of the api's CPU per cache hit, `llm-bench`'s cache
//! phase).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ApiError;

/// Clock skew tolerated on `exp`, in seconds.
const LEEWAY_SECS: u64 = 30;
/// Most verified tokens kept per process (a few hundred bytes each). Past it, the expired ones
/// go, or all of them: a token not kept is simply verified in full again.
pub const VERIFIED_CAPACITY: usize = 4096;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Uuid,
    pub exp: i64,
    #[serde(default)]
    pub iat: Option<i64>,
    /// `admin` for operators; absent for ordinary users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Not valid before this time (Unix seconds); checked when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Who issued the token; must be `JWT_ISSUER` when that is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Whom the token is for (one audience or a list); must name `JWT_AUDIENCE` when that is
    /// set, and a token naming any audience is refused when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<serde_json::Value>,
}

/// The claims of a stream token: `sub` may read the stream of request `rid` until `exp`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamClaims {
    pub sub: Uuid,
    /// The one request whose stream the token opens.
    pub rid: Uuid,
    pub exp: i64,
    pub iat: i64,
    /// Always [`JwtKeys::stream_audience`].
    pub aud: String,
}

/// A stream token's audience when `JWT_AUDIENCE` is unset (bearer tokens then carry none, and
/// one naming any audience is refused as a bearer token).
const STREAM_AUDIENCE: &str = "llm-service#stream";

/// Verifies (and, for local tooling, issues) tokens.
#[derive(Clone)]
pub struct JwtKeys {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
    /// Stream tokens: their own audience required, no leeway (they live minutes).
    stream_validation: Validation,
    /// The `iss` and `aud` this service pins (and puts in the tokens it issues).
    issuer: Option<String>,
    audience: Option<String>,
    /// Tokens whose signature and claims were verified, by their exact text.
    verified: Arc<Mutex<HashMap<Box<str>, Claims>>>,
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
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        Self {
            decoding: DecodingKey::from_secret(bytes),
            encoding: EncodingKey::from_secret(bytes),
            validation,
            stream_validation: stream_validation(STREAM_AUDIENCE),
            issuer: None,
            audience: None,
            verified: Arc::default(),
        }
    }

    /// The same keys, accepting only tokens whose `iss` is `issuer` and whose `aud` names
    /// `audience` (each when given: `JWT_ISSUER`, `JWT_AUDIENCE`), so that a token the shared
    /// auth system signed for another service is refused here.
    pub fn pinned(mut self, issuer: Option<String>, audience: Option<String>) -> Self {
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = &issuer {
            self.validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        if let Some(audience) = &audience {
            self.validation.set_audience(&[audience]);
            required.push("aud");
        }
        self.validation.set_required_spec_claims(&required);
        self.stream_validation = stream_validation(&stream_audience(audience.as_deref()));
        self.issuer = issuer;
        self.audience = audience;
        self
    }

    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        self.verify_at(token, chrono::Utc::now().timestamp())
    }

    /// [`Self::verify`] at `now` (Unix seconds) for a token verified before; a new token is
    /// checked against the clock by `jsonwebtoken` itself.
    fn verify_at(&self, token: &str, now: i64) -> Result<Claims, ApiError> {
        // The same text is the same signed claims: only the time has moved since.
        let known = self
            .verified
            .lock()
            .ok()
            .and_then(|verified| verified.get(token).cloned());
        if let Some(claims) = known {
            return if expired(claims.exp, now) {
                if let Ok(mut verified) = self.verified.lock() {
                    verified.remove(token);
                }
                Err(EXPIRED)
            } else {
                Ok(claims)
            };
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|err| match err.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => EXPIRED,
                _ => ApiError::Unauthorized("the token is invalid"),
            })?;
        if let Ok(mut verified) = self.verified.lock() {
            if verified.len() >= VERIFIED_CAPACITY {
                verified.retain(|_, kept| !expired(kept.exp, now));
                if verified.len() >= VERIFIED_CAPACITY {
                    verified.clear();
                }
            }
            verified.insert(token.into(), claims.clone());
        }
        Ok(claims)
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
            nbf: None,
            iss: self.issuer.clone(),
            aud: self.audience.clone().map(serde_json::Value::String),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }
}

impl JwtKeys {
    /// The audience of this service's stream tokens: `JWT_AUDIENCE` with `#stream` appended
    /// when it is set, so it is never the audience bearer tokens are verified for.
    pub fn stream_audience(&self) -> String {
        stream_audience(self.audience.as_deref())
    }

    /// A stream token: `user` may read request `request`'s stream for `ttl_secs`. Returns it
    /// with its expiry (Unix seconds).
    pub fn issue_stream(
        &self,
        user: Uuid,
        request: Uuid,
        ttl_secs: i64,
    ) -> Result<(String, i64), jsonwebtoken::errors::Error> {
        let now = chrono::Utc::now().timestamp();
        let claims = StreamClaims {
            sub: user,
            rid: request,
            exp: now + ttl_secs,
            iat: now,
            aud: self.stream_audience(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?;
        Ok((token, claims.exp))
    }

    /// The user a stream token lets read `request`'s stream: refused if it is not a stream
    /// token of this service (a bearer token included), has expired, or names another request.
    pub fn verify_stream(&self, token: &str, request: Uuid) -> Result<Uuid, ApiError> {
        let claims =
            jsonwebtoken::decode::<StreamClaims>(token, &self.decoding, &self.stream_validation)
                .map(|data| data.claims)
                .map_err(|err| match err.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => EXPIRED_STREAM,
                    _ => ApiError::Unauthorized("the stream token is invalid"),
                })?;
        if claims.rid != request {
            return Err(ApiError::Unauthorized(
                "the stream token is for another request",
            ));
        }
        Ok(claims.sub)
    }
}

fn stream_audience(audience: Option<&str>) -> String {
    audience.map_or_else(|| STREAM_AUDIENCE.to_owned(), |aud| format!("{aud}#stream"))
}

fn stream_validation(audience: &str) -> Validation {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "sub", "aud"]);
    validation.set_audience(&[audience]);
    validation.leeway = 0;
    validation
}

const EXPIRED: ApiError = ApiError::Unauthorized("the token has expired");
const EXPIRED_STREAM: ApiError =
    ApiError::Unauthorized("the stream token has expired; ask for a new one");

/// `jsonwebtoken`'s own test: expired once `exp` is more than the leeway in the past.
fn expired(exp: i64, now: i64) -> bool {
    exp < now.saturating_sub(LEEWAY_SECS as i64)
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

    /// A token verified once is not verified again, but its expiry still is: at the end of its
    /// leeway it is refused like any expired token.
    #[test]
    fn a_kept_token_still_expires() {
        let keys = keys();
        let token = keys.issue(Uuid::now_v7(), 60, None).unwrap();
        let claims = keys.verify(&token).unwrap();
        let last_second = claims.exp + LEEWAY_SECS as i64;
        assert_eq!(keys.verify_at(&token, last_second).unwrap().sub, claims.sub);
        assert!(matches!(
            keys.verify_at(&token, last_second + 1),
            Err(ApiError::Unauthorized("the token has expired"))
        ));
        assert!(keys.verified.lock().unwrap().is_empty());
    }

    /// Only exact, verified texts are kept: a token altered after a verified one is checked in
    /// full (and refused), and no refused token is kept.
    #[test]
    fn only_verified_tokens_are_kept() {
        let keys = keys();
        let token = keys.issue(Uuid::now_v7(), 60, Some("user")).unwrap();
        keys.verify(&token).unwrap();
        let (signed, signature) = token.rsplit_once('.').unwrap();
        // Another first character: six other bits of the signature.
        let first = if signature.starts_with('A') { "B" } else { "A" };
        let forged = format!("{signed}.{first}{}", &signature[1..]);
        assert!(keys.verify(&forged).is_err());
        // Claims of another token (an admin's, signed with another key) under this signature.
        let admin = JwtKeys::new(&SecretString::from("o".repeat(40)))
            .issue(Uuid::now_v7(), 60, Some(crate::auth::ADMIN_ROLE))
            .unwrap();
        let (admin_signed, _) = admin.rsplit_once('.').unwrap();
        assert!(keys.verify(&format!("{admin_signed}.{signature}")).is_err());
        assert_eq!(keys.verified.lock().unwrap().len(), 1);
    }

    #[test]
    fn the_kept_tokens_are_bounded() {
        let keys = keys();
        for _ in 0..VERIFIED_CAPACITY + 10 {
            keys.verify(&keys.issue(Uuid::now_v7(), 60, None).unwrap())
                .unwrap();
        }
        let kept = keys.verified.lock().unwrap().len();
        assert!((1..=VERIFIED_CAPACITY).contains(&kept), "{kept} kept");
    }

    /// A stream token opens only its request's stream and is no bearer token; a bearer token
    /// is no stream token, whether or not an audience is pinned.
    #[test]
    fn stream_tokens_and_bearer_tokens_are_never_taken_for_each_other() {
        for keys in [
            keys(),
            keys().pinned(Some("auth".into()), Some("llm-service".into())),
        ] {
            let (user, request) = (Uuid::now_v7(), Uuid::now_v7());
            let (stream, _) = keys.issue_stream(user, request, 60).unwrap();
            assert_eq!(keys.verify_stream(&stream, request).unwrap(), user);
            assert!(keys.verify_stream(&stream, Uuid::now_v7()).is_err());
            assert!(keys.verify(&stream).is_err());
            let bearer = keys.issue(user, 60, None).unwrap();
            assert!(keys.verify(&bearer).is_ok());
            assert!(keys.verify_stream(&bearer, request).is_err());
            let (expired, _) = keys.issue_stream(user, request, -1).unwrap();
            assert!(matches!(
                keys.verify_stream(&expired, request),
                Err(ApiError::Unauthorized(
                    "the stream token has expired; ask for a new one"
                ))
            ));
        }
    }

    #[test]
    fn other_algorithms_and_keys_are_refused() {
        let user = Uuid::now_v7();
        let claims = Claims {
            sub: user,
            exp: chrono::Utc::now().timestamp() + 60,
            iat: None,
            role: None,
            nbf: None,
            iss: None,
            aud: None,
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
