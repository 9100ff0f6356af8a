//! Settings of the api binary: the common ones (`llm_shared::config::CommonConfig`) plus the
//! HTTP server's own, loaded once at start from flags and environment variables.

use std::net::SocketAddr;

use clap::Args;
use llm_shared::config::{CommonConfig, ConfigError, present, resolve_secret};
use secrecy::SecretString;

/// Settings of the api binary.
#[derive(Debug, Clone, Args)]
pub struct ApiConfig {
    #[command(flatten)]
    pub common: CommonConfig,

    /// Address the HTTP server listens on.
    #[arg(long, env = "API_LISTEN", default_value = "127.0.0.1:8100")]
    pub listen: SocketAddr,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 256 * 1024)]
    pub max_body_bytes: usize,

    /// Longest `?wait=` a poll may ask for, in seconds.
    #[arg(long, env = "MAX_WAIT_SECS", default_value_t = 30)]
    pub max_wait_secs: u64,

    /// How long an OpenAI-compatible call (`/v1/...`, not streamed) waits for its generation
    /// before answering 504 with the request id to poll instead, in seconds.
    #[arg(long, env = "OPENAI_COMPAT_WAIT_SECS", default_value_t = 120)]
    pub openai_compat_wait_secs: u64,

    /// Most requests a user may have unfinished (pending or running) at once, counted in
    /// the database across every api process; a submit or batch that would pass it is refused
    /// whole (429 `queue_quota_exceeded`). 0: no quota.
    #[arg(long, env = "USER_MAX_QUEUED", default_value_t = 10_000)]
    pub user_max_queued: u32,

    /// Most SSE streams a user may hold open at once on this api process (native streams and
    /// the OpenAI door's `stream: true`); past it, 429 `too_many_streams`. 0: no cap.
    #[arg(long, env = "USER_MAX_STREAMS", default_value_t = 32)]
    pub user_max_streams: u32,

    /// Most waits a user may hold open at once on this api process (`?wait=` polls and
    /// unstreamed OpenAI-door calls); past it, 429 `too_many_waits`. 0: no cap.
    #[arg(long, env = "USER_MAX_WAITS", default_value_t = 32)]
    pub user_max_waits: u32,

    /// Pin each runtime thread to a CPU of its own when there is one thread per CPU this
    /// process may run on ([`crate::runtime`]): the kernel otherwise may pack them onto one CPU
    /// while another idles.
    #[arg(long, env = "API_PIN_THREADS", default_value_t = true, action = clap::ArgAction::Set)]
    pub pin_threads: bool,

    /// Origins whose web pages may call the api from a browser (CORS), comma-separated and
    /// exact (`https://app.example`, `http://localhost:5173`). Empty: no CORS headers at all.
    /// A wildcard is refused ([`crate::cors`]).
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", default_value = "")]
    pub cors_allowed_origins: String,

    /// How long a stream token (`POST /api/v1/generate/{id}/stream-token`) stays valid, in
    /// seconds: it sits in a URL, so it lives minutes, not hours.
    #[arg(long, env = "STREAM_TOKEN_TTL_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u32).range(10..=3600))]
    pub stream_token_ttl_secs: u32,
}

impl ApiConfig {
    /// The JWT key, or why the api must not start (`SECRET_KEY` unset, empty or too short),
    /// whatever address it listens on.
    pub fn jwt_secret(&self) -> Result<SecretString, ConfigError> {
        resolve_secret(present(&self.common.secret_key))
    }
}
