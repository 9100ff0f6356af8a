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

    /// Pin each runtime thread to a CPU of its own when there is one thread per CPU this
    /// process may run on ([`crate::runtime`]): the kernel otherwise may pack them onto one CPU
    /// while another idles.
    #[arg(long, env = "API_PIN_THREADS", default_value_t = true, action = clap::ArgAction::Set)]
    pub pin_threads: bool,
}

impl ApiConfig {
    /// The JWT key, or why the api must not start (`SECRET_KEY` unset, empty or too short),
    /// whatever address it listens on.
    pub fn jwt_secret(&self) -> Result<SecretString, ConfigError> {
        resolve_secret(present(&self.common.secret_key))
    }
}
