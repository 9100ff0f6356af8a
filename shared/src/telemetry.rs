//! Logging: one subscriber per process, filtered by `LOG_LEVEL`, text or JSON (`LOG_FORMAT`).
//! The api's per-request span and trace context live in `llm_api::telemetry`; the worker's job
//! span carries the trace id stored with the request.
//!
//! **Invariant:** prompts, results, tokens and keys are never fields of an info-level event or
//! span; spans carry ids, routes and outcomes only.

use tracing_subscriber::EnvFilter;

use crate::config::{CommonConfig, LogFormat};

/// Installs the global subscriber. An invalid `LOG_LEVEL` falls back to `info` with a warning
/// rather than refusing to start.
pub fn init(config: &CommonConfig) {
    let (filter, invalid) = match EnvFilter::try_new(&config.log_level) {
        Ok(filter) => (filter, false),
        Err(_) => (EnvFilter::new("info"), true),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
    if invalid {
        tracing::warn!(log_level = %config.log_level, "LOG_LEVEL is not a valid filter; using info");
    }
}
