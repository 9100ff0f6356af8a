//! The response cache: identical requests (same model, prompt, system prompt, generation
//! parameters and context) are answered from an earlier result. Redis (`{prefix}cache:{key}`)
//! answers fast; the `response_cache` table is the durable copy, so hits survive a Redis flush or
//! outage. The worker writes the table in the statement that completes the request, then
//! Redis; the api reads Redis, and on a miss the statement that stores the request reads the
//! table (`requests/sql/insert_many.sql`) — no extra round trip.
//!
//! Per request: `no_cache` skips the read, `no_store` skips the write, `ttl_secs` overrides
//! `CACHE_TTL`.
//!
//! `CACHE_SCOPE` ([`CacheScope`]) says who shares an entry. With `user` (the default) a key ends
//! with its user's id, so one user's requests are never answered from, nor coalesced with,
//! another's: a hit would tell them that someone asked exactly that prompt. With `global` the
//! key is the content alone. Either way a key starts with the content's digest, so a
//! `key_prefix` filter names the same answers under both scopes.

use std::time::Duration;

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::DomainError;

/// Bumped when the key's recipe changes, so old entries are never misread.
const KEY_VERSION: &str = "v1";
/// Longest TTL a request may ask for.
pub const MAX_TTL_SECS: u64 = 30 * 24 * 3600;

/// A request's cache controls (the body's `cache` object).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CachePolicy {
    /// Do not answer from the cache (the result may still be stored).
    #[serde(default)]
    pub no_cache: bool,
    /// Do not store this result.
    #[serde(default)]
    pub no_store: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
}

/// Who shares a cache entry (and an in-flight provider call): `CACHE_SCOPE`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum CacheScope {
    /// Each user's requests only: users learn nothing of each other's prompts.
    #[default]
    User,
    /// Every user's identical requests: more hits, but a hit reveals that someone else asked.
    Global,
}

impl CacheScope {
    /// The key of `user`'s request whose content key is `key`: with `User`, the content key
    /// followed by `:` and the user's id (so it keeps the content key as its prefix).
    pub fn key_for(self, key: String, user: Uuid) -> String {
        match self {
            Self::Global => key,
            Self::User => {
                let mut key = key;
                key.push(':');
                key.push_str(user.hyphenated().encode_lower(&mut Uuid::encode_buffer()));
                key
            }
        }
    }
}

/// What a cache entry holds besides the text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedResponse {
    pub response: String,
    pub provider: Option<String>,
    pub provider_model: Option<String>,
    pub served_model: Option<String>,
    pub prompt_tokens: Option<i32>,
    pub completion_tokens: Option<i32>,
    pub finish_reason: Option<String>,
    /// The tools the model called, if it called any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<crate::generation::ToolCall>>,
}

/// The key of what determines the output: model, prompt, generation parameters (which hold the
/// system prompt and the response format), the context (it joins the system prompt), and the
/// mock's controls. Nothing volatile. An empty context is left out of the hashed text, so a
/// request without one keeps the key it had before contexts reached the model (entries
/// cached then still answer it).
pub fn cache_key(
    model: &str,
    prompt: &str,
    parameters: &Value,
    context: &Value,
    mock: Option<&Value>,
) -> String {
    // The fields in sorted order, as a JSON object with these keys writes them (serde_json
    // maps keep their keys sorted, so equal parameters serialise equally); written from the
    // borrowed values, not from a copy of the prompt in a `Value` (every submit computes this).
    #[derive(Serialize)]
    struct Canonical<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        context: Option<&'a Value>,
        mock: Option<&'a Value>,
        model: &'a str,
        parameters: &'a Value,
        prompt: &'a str,
    }
    let canonical = Canonical {
        context: context
            .as_object()
            .is_some_and(|c| !c.is_empty())
            .then_some(context),
        mock,
        model,
        parameters,
        prompt,
    };
    let mut hasher = Sha256::new();
    // Serialising borrowed strings and a `Value` into memory cannot fail.
    let _ = serde_json::to_writer(&mut DigestWriter(&mut hasher), &canonical);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut key = String::with_capacity(KEY_VERSION.len() + 1 + 64);
    key.push_str(KEY_VERSION);
    key.push(':');
    for byte in hasher.finalize() {
        key.push(char::from(HEX[usize::from(byte >> 4)]));
        key.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    key
}

/// Feeds what is written to a hash, so the canonical JSON is hashed as it is written.
struct DigestWriter<'a>(&'a mut Sha256);

impl std::io::Write for DigestWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What to invalidate; every given field must match.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InvalidateFilter {
    pub model: Option<String>,
    pub key_prefix: Option<String>,
    pub template_id: Option<String>,
}

impl InvalidateFilter {
    /// A filter names at least one field, and no field is empty: an empty filter, or an empty
    /// `key_prefix` (every key starts with it), would wipe the whole cache. Whoever asks (an
    /// admin, the message hub) is held to this.
    pub fn check(&self) -> Result<(), DomainError> {
        let fields = [
            ("model", &self.model),
            ("key_prefix", &self.key_prefix),
            ("template_id", &self.template_id),
        ];
        if let Some((name, _)) = fields
            .iter()
            .find(|(_, value)| value.as_deref().is_some_and(|v| v.trim().is_empty()))
        {
            return Err(DomainError::validation(
                name,
                format!("{name} must not be empty"),
            ));
        }
        if fields.iter().all(|(_, value)| value.is_none()) {
            return Err(DomainError::validation(
                "model",
                "give at least one of model, key_prefix, template_id",
            ));
        }
        Ok(())
    }
}

#[derive(Clone)]
pub struct ResponseCache {
    conn: crate::kv::KvConnection,
    prefix: String,
    pub default_ttl: Duration,
    /// Whose requests share entries (`CACHE_SCOPE`): keys are made with it at submit.
    pub scope: CacheScope,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("prefix", &self.prefix)
            .field("scope", &self.scope)
            .finish()
    }
}

impl ResponseCache {
    /// Connects lazily: a Redis that is down leaves the durable table serving.
    pub fn new(
        client: redis::Client,
        prefix: &str,
        default_ttl: Duration,
        scope: CacheScope,
    ) -> Result<Self, redis::RedisError> {
        let conn = crate::kv::lazy_connection(client, Duration::from_millis(500))?;
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
            default_ttl,
            scope,
        })
    }

    /// The Redis key of an entry's fast copy.
    pub fn redis_key(&self, key: &str) -> String {
        format!("{}cache:{key}", self.prefix)
    }

    pub fn ttl(&self, policy: &CachePolicy) -> Duration {
        policy.ttl_secs.map_or(self.default_ttl, |s| {
            Duration::from_secs(s.min(MAX_TTL_SECS))
        })
    }

    /// A fast copy as read from Redis (`None` if it does not parse: treated as a miss).
    pub fn parse_fast(raw: &str) -> Option<CachedResponse> {
        serde_json::from_str(raw).ok()
    }

    /// The entry in Redis, the fast copy. A miss (or Redis unreachable) is not the last word:
    /// the statement that stores the request looks in the table too (`requests::insert_many`).
    pub async fn get_fast(&self, key: &str) -> Option<CachedResponse> {
        let mut conn = self.conn.clone();
        match conn.get::<_, Option<String>>(self.redis_key(key)).await {
            Ok(Some(raw)) => Self::parse_fast(&raw),
            Ok(None) => None,
            Err(err) => {
                tracing::warn!(error = %err, "response cache: Redis unavailable, using the table");
                None
            }
        }
    }

    /// Best effort: Redis is only the fast copy.
    pub async fn put_redis(&self, key: &str, hit: &CachedResponse, ttl: Duration) {
        let Ok(raw) = serde_json::to_string(hit) else {
            return;
        };
        let mut conn = self.conn.clone();
        let secs = ttl.as_secs().max(1);
        if let Err(err) = conn
            .set_ex::<_, _, ()>(self.redis_key(key), raw, secs)
            .await
        {
            tracing::debug!(error = %err, "response cache: could not write Redis");
        }
    }

    /// Deletes matching entries from the table and Redis; returns how many. Refuses a filter
    /// that [`InvalidateFilter::check`] refuses.
    pub async fn invalidate(
        &self,
        pool: &PgPool,
        filter: &InvalidateFilter,
    ) -> Result<u64, DomainError> {
        filter.check()?;
        let keys = delete_matching(pool, filter).await?;
        let mut conn = self.conn.clone();
        for chunk in keys.chunks(500) {
            let redis_keys: Vec<String> = chunk.iter().map(|k| self.redis_key(k)).collect();
            if let Err(err) = conn.del::<_, ()>(redis_keys).await {
                tracing::warn!(error = %err, "response cache: could not delete Redis copies; they expire on their own");
            }
        }
        Ok(keys.len() as u64)
    }

    /// [`ResponseCache::invalidate`] for a caller that must know the whole effect happened:
    /// the table's entries are deleted in `tx` (not committed here) and their Redis copies
    /// deleted; if Redis fails, the error says so and the caller rolls back, so that a retry
    /// finds the same entries and deletes their copies then.
    pub async fn invalidate_in(
        &self,
        tx: &mut sqlx::PgConnection,
        filter: &InvalidateFilter,
    ) -> Result<u64, InvalidateError> {
        filter.check()?;
        let keys = delete_matching(&mut *tx, filter)
            .await
            .map_err(DomainError::from)?;
        let mut conn = self.conn.clone();
        for chunk in keys.chunks(500) {
            let redis_keys: Vec<String> = chunk.iter().map(|k| self.redis_key(k)).collect();
            conn.del::<_, ()>(redis_keys)
                .await
                .map_err(InvalidateError::Redis)?;
        }
        Ok(keys.len() as u64)
    }
}

/// Why [`ResponseCache::invalidate_in`] did not happen.
#[derive(Debug, thiserror::Error)]
pub enum InvalidateError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// The Redis copies could not be deleted.
    #[error("the cache's Redis copies could not be deleted: {0}")]
    Redis(#[source] redis::RedisError),
}

/// Deletes the table's entries matching `filter`; returns their keys.
async fn delete_matching<'e>(
    db: impl sqlx::PgExecutor<'e>,
    filter: &InvalidateFilter,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "DELETE FROM response_cache
         WHERE ($1::text IS NULL OR model = $1)
           AND ($2::text IS NULL OR starts_with(cache_key, $2))
           AND ($3::text IS NULL OR metadata->>'template_id' = $3)
         RETURNING cache_key",
    )
    .bind(&filter.model)
    .bind(&filter.key_prefix)
    .bind(&filter.template_id)
    .fetch_all(db)
    .await
}

/// Deletes expired entries (a worker does this periodically).
pub async fn purge_expired(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let purged = sqlx::query(
        "DELETE FROM response_cache WHERE ctid IN (
             SELECT ctid FROM response_cache WHERE expires_at < NOW() LIMIT 10000)",
    )
    .execute(pool)
    .await?;
    Ok(purged.rows_affected())
}

/// The table's `metadata` of an entry.
pub fn metadata_of(hit: &CachedResponse, template_id: Option<&str>) -> Value {
    json!({
        "provider": hit.provider,
        "provider_model": hit.provider_model,
        "served_model": hit.served_model,
        "prompt_tokens": hit.prompt_tokens,
        "completion_tokens": hit.completion_tokens,
        "finish_reason": hit.finish_reason,
        "tool_calls": hit.tool_calls,
        "template_id": template_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_what_determines_the_output_only() {
        let params = json!({"temperature": 0.2, "max_tokens": 10});
        let reordered = json!({"max_tokens": 10, "temperature": 0.2});
        let none = json!({});
        let a = cache_key("mock", "hello", &params, &none, None);
        assert_eq!(a, cache_key("mock", "hello", &reordered, &none, None));
        assert!(a.starts_with("v1:") && a.len() == 3 + 64);
        assert_ne!(a, cache_key("mock", "hello!", &params, &none, None));
        assert_ne!(a, cache_key("gpt-4o", "hello", &params, &none, None));
        assert_ne!(
            a,
            cache_key(
                "mock",
                "hello",
                &json!({"temperature": 0.3, "max_tokens": 10}),
                &none,
                None
            )
        );
        assert_ne!(
            a,
            cache_key(
                "mock",
                "hello",
                &params,
                &none,
                Some(&json!({"latency_ms": 5}))
            )
        );
        let wizard = json!({"class": "wizard"});
        assert_ne!(a, cache_key("mock", "hello", &params, &wizard, None));
        assert_ne!(
            cache_key("mock", "hello", &params, &wizard, None),
            cache_key("mock", "hello", &params, &json!({"class": "rogue"}), None)
        );
    }

    #[test]
    fn user_scoped_keys_differ_per_user_and_keep_the_content_key_as_prefix() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let content = cache_key("mock", "hello", &json!({}), &json!({}), None);
        let for_a = CacheScope::User.key_for(content.clone(), a);
        assert_eq!(for_a, format!("{content}:{a}"));
        assert_ne!(for_a, CacheScope::User.key_for(content.clone(), b));
        assert!(for_a.len() <= 255, "fits the cache_key column");
        assert_eq!(CacheScope::Global.key_for(content.clone(), a), content);
    }

    /// Keys stay what they were (stored entries stay reachable): the SHA-256 of the canonical
    /// JSON, keys sorted, compact, as `serde_json::Value` writes it; a request without a
    /// context keeps the key it had before contexts were part of it.
    #[test]
    fn keys_are_stable_across_releases() {
        let params = json!({"temperature": 0.2, "max_tokens": 10});
        assert_eq!(
            cache_key("mock", "hello \"dé\"", &params, &json!({}), None),
            "v1:50b624d0ba6daf7e7a6bde27c5f21e99eb90ef5e22555ae59dd055d023d9fc0b"
        );
        // The same digest as the canonical `Value` itself, for escapes, nesting and the mock.
        let cases = [
            (
                "mock",
                "tab\t, newline\n, nul \u{0}, emoji 🐉",
                json!({}),
                json!({}),
                None,
            ),
            (
                "gpt-4o",
                "a",
                json!({"system": "be \\ brief", "stop": ["\"x\""], "response_format": {"type": "json_schema", "schema": {"b": 1, "a": [null, true]}}}),
                json!({}),
                Some(json!({"latency_ms": 5, "fail": "transient"})),
            ),
            ("mock", "b", json!({}), json!({"party": {"size": 4}}), None),
        ];
        for (model, prompt, parameters, context, mock) in cases {
            let mut canonical =
                json!({"model": model, "prompt": prompt, "parameters": parameters, "mock": mock});
            if context != json!({}) {
                canonical["context"] = context.clone();
            }
            let hex: String = Sha256::digest(canonical.to_string().as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(
                cache_key(model, prompt, &parameters, &context, mock.as_ref()),
                format!("v1:{hex}")
            );
        }
    }
}
