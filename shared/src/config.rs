//! Typed configuration, loaded once at start from flags and environment variables (clap).
//!
//! Every setting but one has a safe local default so both binaries start on a developer
//! machine with little set. The exception is `SECRET_KEY`, which signs and verifies every
//! token: no default is safe, since a key written in the source lets anyone who reads it mint
//! tokens for any deployment that uses it (a loopback api behind a reverse proxy included), so
//! it is always required ([`resolve_secret`]; `scripts/dev.sh` makes a random one per machine).
//! The settings of one binary only live in its crate (`llm_api::config`, `llm_worker::config`).

use std::time::Duration;

use clap::{Args, ValueEnum};
use secrecy::{ExposeSecret, SecretString};

/// HS256 keys shorter than this are refused: they can be brute-forced offline from any token.
pub const MIN_SECRET_KEY_BYTES: usize = 32;

/// Settings both binaries share.
#[derive(Debug, Clone, Args)]
pub struct CommonConfig {
    /// PostgreSQL connection string (requests, queue, cache tables).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/llm_service"
    )]
    pub database_url: SecretString,

    /// Maximum connections in this process's PostgreSQL pool.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 20)]
    pub database_max_connections: u32,

    /// Redis connection string (stream relay, cache, rate limits).
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: SecretString,

    /// Prefix of every Redis key and channel this service uses (lets several deployments, or
    /// tests, share one Redis).
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "llm:")]
    pub redis_key_prefix: String,

    /// How long a request's relayed stream events stay available for late subscribers.
    #[arg(long, env = "STREAM_LOG_TTL_SECS", default_value_t = 3600)]
    pub stream_log_ttl_secs: u64,

    /// Base URL of the message hub that receives this service's events (http or https):
    /// checked at start, so a typo stops the process instead of failing every delivery.
    #[arg(long, env = "MESSAGE_HUB_URL", default_value = "http://127.0.0.1:8200", value_parser = http_url)]
    pub message_hub_url: url::Url,

    /// Bearer token sent with every event POSTed to the message hub; unset: none is sent.
    #[arg(long, env = "MESSAGE_HUB_TOKEN", hide_env_values = true)]
    pub message_hub_token: Option<SecretString>,

    /// HS256 key of the shared auth system's JWTs (at least 32 bytes).
    #[arg(long, env = "SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<SecretString>,

    /// The `iss` every JWT must carry (the shared auth system's name); unset: not checked.
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// The audience every JWT must name (this service's name at the auth system); unset: a
    /// token naming any audience is refused.
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Log filter: a level (`info`) or a tracing directive list (`info,llm_shared=debug`).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Log output format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// OpenTelemetry collector (OTLP over HTTP, protobuf; plain `http://`, e.g. a local agent):
    /// set, the process sends its spans to `<endpoint>/v1/traces`. Unset: no export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otel_endpoint: Option<String>,

    /// `service.name` of the exported spans (default: the binary's name).
    #[arg(long, env = "OTEL_SERVICE_NAME")]
    pub otel_service_name: Option<String>,

    /// Model used when a request names none. Unset: the first model of a configured provider
    /// in the registry, else (with `MOCK_PROVIDER`) the first mock model.
    #[arg(long, env = "DEFAULT_MODEL")]
    pub default_model: Option<String>,

    /// Serve the registry's mock models (and their `mock` controls: failures, latency). Off,
    /// they do not exist for clients: the mock answers anything for free, so it is for local
    /// runs, tests and benchmarks only.
    #[arg(long, env = "MOCK_PROVIDER", default_value_t = false, action = clap::ArgAction::Set)]
    pub mock_provider: bool,

    /// Directory of the prompt templates (`character/`, `campaign/`, `common/`).
    #[arg(long, env = "PROMPTS_DIR", default_value = "prompts")]
    pub prompts_dir: std::path::PathBuf,

    /// Model registry file (models, prices, fallback chains, retry and circuit policies).
    /// Unset: the `config/models.toml` built into the binary.
    #[arg(long, env = "MODELS_FILE")]
    pub models_file: Option<String>,

    /// Lifetime of cached responses, in seconds.
    #[arg(long, env = "CACHE_TTL", default_value_t = 3600)]
    pub cache_ttl: u64,

    /// Who shares a cached answer: `user` (each user's own requests only) or `global` (every
    /// user: more hits, but a hit tells a user that someone asked exactly that before).
    #[arg(long, env = "CACHE_SCOPE", value_enum, default_value_t = crate::cache::CacheScope::User)]
    pub cache_scope: crate::cache::CacheScope,

    /// Requests per minute allowed per user.
    #[arg(long, env = "RATE_LIMIT_RPM", default_value_t = 60)]
    pub rate_limit_rpm: u32,

    /// Tokens per minute allowed per user (estimated at submit, reconciled on completion).
    #[arg(long, env = "RATE_LIMIT_TPM", default_value_t = 200_000)]
    pub rate_limit_tpm: u32,

    /// What rate limiting does when Redis is unreachable: let requests through (`open`) or
    /// refuse them with 503 (`closed`).
    #[arg(long, env = "RATE_LIMIT_FAIL_MODE", value_enum, default_value_t = FailMode::Open)]
    pub rate_limit_fail_mode: FailMode,

    /// OpenAI API key; without it OpenAI models are unavailable.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub openai_api_key: Option<SecretString>,

    /// Anthropic API key; without it Anthropic models are unavailable.
    #[arg(long, env = "ANTHROPIC_API_KEY", hide_env_values = true)]
    pub anthropic_api_key: Option<SecretString>,

    /// OpenAI API base URL (default from the registry: https://api.openai.com/v1).
    #[arg(long, env = "OPENAI_BASE_URL")]
    pub openai_base_url: Option<String>,

    /// Anthropic API base URL (default from the registry: https://api.anthropic.com).
    #[arg(long, env = "ANTHROPIC_BASE_URL")]
    pub anthropic_base_url: Option<String>,

    /// Ollama base URL, e.g. http://127.0.0.1:11434; without it Ollama models are unavailable.
    #[arg(long, env = "OLLAMA_URL")]
    pub ollama_url: Option<String>,

    /// Attempts (worker claims) a request gets before it ends `failed`.
    #[arg(long, env = "JOB_MAX_ATTEMPTS", default_value_t = 5)]
    pub job_max_attempts: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FailMode {
    Open,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl CommonConfig {
    /// A client of `REDIS_URL` whose connections send every command at once (`TCP_NODELAY`).
    /// redis-rs leaves Nagle's algorithm on, and a multiplexed connection carries many commands
    /// at a time: over a network, a command written while an earlier one is unacknowledged
    /// waits for that acknowledgement (on loopback, Linux acknowledges at once: the benchmark
    /// shows no change).
    pub fn redis_client(&self) -> Result<redis::Client, redis::RedisError> {
        use redis::IntoConnectionInfo;
        let info = self.redis_url.expose_secret().into_connection_info()?;
        let tcp = info.tcp_settings().clone().set_nodelay(true);
        redis::Client::open(info.set_tcp_settings(tcp))
    }

    /// The stream relay over `REDIS_URL` (connects lazily).
    pub fn relay(&self) -> Result<crate::stream_relay::StreamRelay, redis::RedisError> {
        let client = self.redis_client()?;
        let ttl = Duration::from_secs(self.stream_log_ttl_secs);
        crate::stream_relay::StreamRelay::new(client, &self.redis_key_prefix, ttl)
    }
}

impl CommonConfig {
    /// The rate limiter over `REDIS_URL` (connects lazily), with the default limits.
    pub fn rate_limiter(&self) -> Result<crate::ratelimit::RateLimiter, redis::RedisError> {
        let client = self.redis_client()?;
        let defaults = crate::ratelimit::RateLimits {
            requests_per_minute: self.rate_limit_rpm,
            tokens_per_minute: self.rate_limit_tpm,
        };
        let fail_open = self.rate_limit_fail_mode == FailMode::Open;
        crate::ratelimit::RateLimiter::new(client, &self.redis_key_prefix, defaults, fail_open)
    }

    /// The response cache over `REDIS_URL` (connects lazily), with `CACHE_TTL` and
    /// `CACHE_SCOPE`.
    pub fn response_cache(&self) -> Result<crate::cache::ResponseCache, redis::RedisError> {
        let client = self.redis_client()?;
        crate::cache::ResponseCache::new(
            client,
            &self.redis_key_prefix,
            Duration::from_secs(self.cache_ttl),
            self.cache_scope,
        )
    }
}

/// An absolute `http` or `https` URL.
fn http_url(text: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(text).map_err(|e| format!("not a URL ({e})"))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(format!("the scheme is {other}; expected http or https")),
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "SECRET_KEY is not set: set it to the auth system's key (at least \
         {MIN_SECRET_KEY_BYTES} bytes; for local use, scripts/dev.sh makes a random one)"
    )]
    MissingSecretKey,
    #[error("SECRET_KEY is {0} bytes long; it must be at least {MIN_SECRET_KEY_BYTES} bytes")]
    WeakSecretKey(usize),
}

/// A secret given as an empty string (as compose does for unset variables) counts as absent.
pub fn present(secret: &Option<SecretString>) -> Option<&SecretString> {
    secret.as_ref().filter(|s| !s.expose_secret().is_empty())
}

/// The JWT key, or why a process must not start: there is no default, whatever address the
/// api listens on.
pub fn resolve_secret(configured: Option<&SecretString>) -> Result<SecretString, ConfigError> {
    match configured {
        Some(key) if key.expose_secret().len() < MIN_SECRET_KEY_BYTES => {
            Err(ConfigError::WeakSecretKey(key.expose_secret().len()))
        }
        Some(key) => Ok(key.clone()),
        None => Err(ConfigError::MissingSecretKey),
    }
}

/// The key tools such as `llm-api token` sign with: `SECRET_KEY`, required as for the api.
pub fn signing_secret(common: &CommonConfig) -> Result<SecretString, ConfigError> {
    resolve_secret(present(&common.secret_key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_hub_url_is_checked_at_start() -> Result<(), clap::Error> {
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(flatten)]
            common: CommonConfig,
        }
        let parse =
            |url: &str| <Cli as clap::Parser>::try_parse_from(["test", "--message-hub-url", url]);
        for bad in ["hub:8200", "not a url", "ftp://hub/", ""] {
            assert!(parse(bad).is_err(), "{bad} was accepted");
        }
        let good = parse("https://hub.internal/prefix/")?;
        assert_eq!(
            good.common.message_hub_url.as_str(),
            "https://hub.internal/prefix/"
        );
        Ok(())
    }

    #[test]
    fn secret_key_is_required_and_long_enough() {
        assert_eq!(
            resolve_secret(None).err(),
            Some(ConfigError::MissingSecretKey)
        );
        let short = SecretString::from("short");
        assert_eq!(
            resolve_secret(Some(&short)).err(),
            Some(ConfigError::WeakSecretKey(5))
        );
        let empty = Some(SecretString::from(""));
        assert_eq!(
            resolve_secret(present(&empty)).err(),
            Some(ConfigError::MissingSecretKey)
        );
        let good = SecretString::from("x".repeat(32));
        assert!(resolve_secret(Some(&good)).is_ok());
    }
}
