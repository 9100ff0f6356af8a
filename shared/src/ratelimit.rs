//! Per-user rate limits: requests per minute and tokens per minute, counted in Redis in fixed
//! one-minute windows (Redis' clock) by one Lua script, so the limit is exact across any number
//! of api replicas. Tokens are estimated at submit (prompt + output limit) and reconciled with
//! the actual usage when the request completes. A batch counts as its items: every item's
//! request and estimated tokens, all or nothing. Admins may override a user's limits.
//!
//! Redis down: `RATE_LIMIT_FAIL_MODE=open` (default) lets requests through with a warning;
//! `closed` refuses them with 503.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// How long overrides read from the database are trusted.
const OVERRIDES_TTL: Duration = Duration::from_secs(10);
/// Most users whose override (or its absence) one process keeps: every authenticated user id
/// is a key, so the cache is bounded by this, not by the number of users.
const OVERRIDES_MAX_USERS: usize = 10_000;

/// Adds `ARGV[i]` to counter `KEYS[i]` while its window is kept: a correction after the check
/// (tokens given back, usage reconciled). In one script, as the check, so that a window
/// expiring between the test and the addition is not brought back without its expiry (a key
/// left for good), in one round trip.
const ADJUST_SCRIPT: &str = r"
for i, key in ipairs(KEYS) do
    local n = tonumber(ARGV[i])
    if n ~= 0 and redis.call('EXISTS', key) == 1 then
        redis.call('INCRBY', key, n)
    end
end
return 0
";

/// The check, in one script (a script runs alone: no other command sees its steps). A `take`
/// counts first and takes the counts back when over a limit: one command per counter where
/// reading before counting takes two. The window's number is formatted once, as an integer:
/// Lua's own number formatting (`%.14g`) of it, twice, and the string-to-number conversions
/// would be a tenth of Redis' time per cache hit.
const CHECK_SCRIPT: &str = r"
local now = tonumber(redis.call('TIME')[1])
local window = math.floor(now / 60)
local w = string.format('%d', window)
local rkey = KEYS[1] .. ':r:' .. w
local tkey = KEYS[1] .. ':t:' .. w
local reset = 60 - (now % 60)
local n = tonumber(ARGV[3])
-- requests counted: one per submit, a batch's items at once
local k = tonumber(ARGV[5])
-- the response cache's fast copy, when asked: a hit takes no tokens (no provider runs it)
local cached = false
if KEYS[2] then
  cached = redis.call('GET', KEYS[2])
  if cached then n = 0 end
end
if ARGV[4] ~= 'take' then
  local r = tonumber(redis.call('GET', rkey) or '0')
  local t = tonumber(redis.call('GET', tkey) or '0')
  return {1, 0, r, t, reset, window, cached}
end
-- a counter's expiry is set once, when its window's first count creates it
local r = redis.call('INCRBY', rkey, k)
if r == k then redis.call('EXPIRE', rkey, 120) end
local t
if n > 0 then
  t = redis.call('INCRBY', tkey, n)
  if t == n then redis.call('EXPIRE', tkey, 120) end
else
  t = tonumber(redis.call('GET', tkey) or '0')
end
local by = 0
if r > tonumber(ARGV[1]) then by = 1 elseif t > tonumber(ARGV[2]) then by = 2 end
if by > 0 then
  redis.call('DECRBY', rkey, k)
  if n > 0 then redis.call('DECRBY', tkey, n) end
  return {0, by, r - k, t - n, reset, window, cached}
end
return {1, 0, r, t, reset, window, cached}
";

/// The script's answer: allowed, refused by (1 requests, 2 tokens), requests and tokens
/// counted, seconds to the reset, the window, and the cache's fast copy if it was asked for.
type ScriptReply = (i64, i64, i64, i64, i64, i64, Option<String>);

/// A user's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RateLimits {
    pub requests_per_minute: u32,
    pub tokens_per_minute: u32,
}

/// One dimension's state in the current window.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Window {
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the window resets.
    pub reset_secs: u32,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct RateState {
    pub requests: Window,
    pub tokens: Window,
    /// The one-minute window (Unix minutes) these counts belong to.
    #[serde(skip)]
    pub window: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    Requests,
    Tokens,
}

#[derive(Debug)]
pub enum Decision {
    Allowed(RateState),
    Refused {
        by: Exceeded,
        state: RateState,
    },
    /// A single request (or a batch) larger than the whole tokens-per-minute limit.
    TooLarge {
        tokens: u32,
        limit: u32,
    },
    /// A batch of more requests than the whole requests-per-minute limit.
    TooManyRequests {
        requests: u32,
        limit: u32,
    },
    /// Redis unreachable and the fail mode is open.
    Unchecked,
    /// Redis unreachable and the fail mode is closed.
    Unavailable,
}

/// Per user: the override read from the database (`None`: no override), bounded.
type OverrideCache = crate::ttl_cache::TtlCache<Uuid, Option<RateLimits>>;

#[derive(Clone)]
pub struct RateLimiter {
    conn: crate::kv::KvConnection,
    prefix: String,
    defaults: RateLimits,
    fail_open: bool,
    script: Arc<redis::Script>,
    adjust: Arc<redis::Script>,
    overrides: Arc<Mutex<OverrideCache>>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("defaults", &self.defaults)
            .finish()
    }
}

impl RateLimiter {
    pub fn new(
        client: redis::Client,
        prefix: &str,
        defaults: RateLimits,
        fail_open: bool,
    ) -> Result<Self, redis::RedisError> {
        let conn = crate::kv::lazy_connection(client, Duration::from_millis(500))?;
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
            defaults,
            fail_open,
            script: Arc::new(redis::Script::new(CHECK_SCRIPT)),
            adjust: Arc::new(redis::Script::new(ADJUST_SCRIPT)),
            overrides: Arc::new(Mutex::new(OverrideCache::new(
                OVERRIDES_TTL,
                OVERRIDES_MAX_USERS,
            ))),
        })
    }

    fn user_key(&self, user: Uuid) -> String {
        format!("{}ratelimit:{user}", self.prefix)
    }

    /// The user's limits: an admin's override, else the defaults.
    pub async fn limits(&self, pool: &PgPool, user: Uuid) -> Result<RateLimits, sqlx::Error> {
        let cached = self.overrides.lock().ok().and_then(|m| m.get(&user));
        let stored = match cached {
            Some(limits) => limits,
            None => {
                let row: Option<(Option<i32>, Option<i32>)> = sqlx::query_as(
                    "SELECT requests_per_minute, tokens_per_minute FROM rate_limit_overrides WHERE user_id = $1",
                )
                .bind(user)
                .fetch_optional(pool)
                .await?;
                let limits = row.map(|(rpm, tpm)| RateLimits {
                    requests_per_minute: rpm
                        .map_or(self.defaults.requests_per_minute, |v| v.max(0) as u32),
                    tokens_per_minute: tpm
                        .map_or(self.defaults.tokens_per_minute, |v| v.max(0) as u32),
                });
                if let Ok(mut map) = self.overrides.lock() {
                    map.insert(user, limits);
                }
                limits
            }
        };
        Ok(stored.unwrap_or(self.defaults))
    }

    /// Forgets a user's cached override (after an admin changed it).
    pub fn forget(&self, user: Uuid) {
        if let Ok(mut map) = self.overrides.lock() {
            map.remove(&user);
        }
    }

    /// Counts one request of `tokens` estimated tokens against the user's limits, if it fits.
    pub async fn take(
        &self,
        pool: &PgPool,
        user: Uuid,
        tokens: u32,
    ) -> Result<Decision, sqlx::Error> {
        let limits = self.limits(pool, user).await?;
        if tokens > limits.tokens_per_minute {
            return Ok(Decision::TooLarge {
                tokens,
                limit: limits.tokens_per_minute,
            });
        }
        Ok(self.run(user, limits, 1, tokens, true, None).await.0)
    }

    /// Counts `requests` requests of `tokens` estimated tokens in all (a batch's items)
    /// against the user's limits, all or nothing: either every one is counted or none is.
    pub async fn take_many(
        &self,
        pool: &PgPool,
        user: Uuid,
        requests: u32,
        tokens: u32,
    ) -> Result<Decision, sqlx::Error> {
        let limits = self.limits(pool, user).await?;
        if requests > limits.requests_per_minute {
            return Ok(Decision::TooManyRequests {
                requests,
                limit: limits.requests_per_minute,
            });
        }
        if tokens > limits.tokens_per_minute {
            return Ok(Decision::TooLarge {
                tokens,
                limit: limits.tokens_per_minute,
            });
        }
        Ok(self.run(user, limits, requests, tokens, true, None).await.0)
    }

    /// Takes back what a take counted in `window` (`requests` requests, `tokens` tokens)
    /// for work that was then refused or not stored. Best effort, only while the window is
    /// kept.
    pub async fn give_back(&self, user: Uuid, window: i64, requests: u32, tokens: u32) {
        let key = self.user_key(user);
        self.adjust(&[
            (format!("{key}:r:{window}"), -i64::from(requests)),
            (format!("{key}:t:{window}"), -i64::from(tokens)),
        ])
        .await;
    }

    /// Adds each amount to its counter while the counter's window is kept ([`ADJUST_SCRIPT`]).
    /// Best effort: a correction lost to a Redis outage only leaves a window's count off.
    async fn adjust(&self, counters: &[(String, i64)]) {
        if counters.iter().all(|(_, n)| *n == 0) {
            return;
        }
        let mut invocation = self.adjust.prepare_invoke();
        for (key, n) in counters.iter().filter(|(_, n)| *n != 0) {
            invocation.key(key).arg(n);
        }
        let mut conn = self.conn.clone();
        let adjusted: Result<i64, _> = invocation.invoke_async(&mut conn).await;
        if let Err(err) = adjusted {
            tracing::debug!(error = %err, "a rate-limit correction was not applied");
        }
    }

    /// [`RateLimiter::take`] for a request that may be answered from the response cache: the
    /// same script reads the cache's fast copy (`cache_key`, a Redis key) and counts a hit as a
    /// request without tokens, a miss with its `tokens`. One round trip for both. Answers the
    /// decision and the cached entry, if any.
    pub async fn take_or_hit(
        &self,
        pool: &PgPool,
        user: Uuid,
        tokens: u32,
        cache_key: String,
    ) -> Result<(Decision, Option<String>), sqlx::Error> {
        let limits = self.limits(pool, user).await?;
        let (decision, cached) = self
            .run(user, limits, 1, tokens, true, Some(cache_key))
            .await;
        if cached.is_none() && tokens > limits.tokens_per_minute {
            // Refused by the script as over the tokens limit (nothing counted), or not checked.
            return Ok((
                Decision::TooLarge {
                    tokens,
                    limit: limits.tokens_per_minute,
                },
                None,
            ));
        }
        Ok((decision, cached))
    }

    /// The user's current state, without counting anything.
    pub async fn peek(&self, pool: &PgPool, user: Uuid) -> Result<Decision, sqlx::Error> {
        let limits = self.limits(pool, user).await?;
        Ok(self.run(user, limits, 1, 0, false, None).await.0)
    }

    async fn run(
        &self,
        user: Uuid,
        limits: RateLimits,
        requests: u32,
        tokens: u32,
        take: bool,
        cache_key: Option<String>,
    ) -> (Decision, Option<String>) {
        let mut conn = self.conn.clone();
        let mut invocation = self.script.key(self.user_key(user));
        if let Some(cache_key) = cache_key {
            invocation.key(cache_key);
        }
        let result: Result<ScriptReply, _> = invocation
            .arg(limits.requests_per_minute)
            .arg(limits.tokens_per_minute)
            .arg(tokens)
            .arg(if take { "take" } else { "peek" })
            .arg(requests)
            .invoke_async(&mut conn)
            .await;
        match result {
            Ok((allowed, by, requests, used_tokens, reset, window, cached)) => (
                Self::decide(limits, allowed, by, requests, used_tokens, reset, window),
                cached,
            ),
            Err(err) => {
                tracing::warn!(error = %err, fail_open = self.fail_open, "rate limiter: Redis unavailable");
                let decision = if self.fail_open {
                    Decision::Unchecked
                } else {
                    Decision::Unavailable
                };
                (decision, None)
            }
        }
    }

    /// The script's answer as a decision.
    fn decide(
        limits: RateLimits,
        allowed: i64,
        by: i64,
        requests: i64,
        used_tokens: i64,
        reset: i64,
        window: i64,
    ) -> Decision {
        let reset = u32::try_from(reset).unwrap_or(60);
        let left = |limit: u32, used: i64| {
            limit.saturating_sub(u32::try_from(used.max(0)).unwrap_or(u32::MAX))
        };
        let state = RateState {
            requests: Window {
                limit: limits.requests_per_minute,
                remaining: left(limits.requests_per_minute, requests),
                reset_secs: reset,
            },
            tokens: Window {
                limit: limits.tokens_per_minute,
                remaining: left(limits.tokens_per_minute, used_tokens),
                reset_secs: reset,
            },
            window,
        };
        if allowed == 1 {
            Decision::Allowed(state)
        } else {
            let by = if by == 1 {
                Exceeded::Requests
            } else {
                Exceeded::Tokens
            };
            Decision::Refused { by, state }
        }
    }

    /// Corrects the tokens counted for a request once its actual usage is known (only while
    /// its window is still kept).
    pub async fn reconcile(&self, user: Uuid, window: i64, delta: i64) {
        let key = format!("{}:t:{window}", self.user_key(user));
        self.adjust(&[(key, delta)]).await;
    }
}
