//! Logging and tracing: one subscriber per process, filtered by `LOG_LEVEL`, text or JSON
//! (`LOG_FORMAT`), and with `OTEL_EXPORTER_OTLP_ENDPOINT` set, every span exported over OTLP
//! (`otlp`). The api's per-request span and trace context live in `llm_api::telemetry`; the
//! worker's job span carries the trace id stored with the request.
//!
//! **Invariant:** prompts, results, tokens and keys are never fields of an info-level event or
//! span; spans carry ids, routes, models, token counts and outcomes only.

mod otlp;

pub use otlp::{
    current_trace_headers, current_traceparent, set_remote_parent, set_remote_trace, trace_id_of,
    traceparent_of,
};

use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{CommonConfig, LogFormat};

/// The spans exported: the service's own at info level (requests, submits, jobs, provider
/// calls), whatever `LOG_LEVEL` says; its dependencies' spans (queries, connections) are not.
const EXPORTED_SPANS: &str = "off,llm_api=info,llm_shared=info,llm_worker=info";

/// What [`init`] installed that must be flushed before the process exits.
#[must_use = "call `shutdown` before exiting, or spans still buffered are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still buffered (up to the export timeout). Blocks a thread of its own:
    /// the export runs on the runtime this is awaited on.
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if !matches!(flushed, Ok(Ok(()))) {
                tracing::warn!("the last spans could not be exported");
            }
        }
    }
}

/// Installs the global subscriber: the log output, and the OTLP export of spans under
/// `service` (or `OTEL_SERVICE_NAME`) when an endpoint is set. An invalid `LOG_LEVEL` falls
/// back to `info`, an unusable endpoint to no export, each with a warning rather than refusing
/// to start. Call it inside the runtime.
pub fn init(config: &CommonConfig, service: &str) -> Telemetry {
    let (filter, invalid) = match EnvFilter::try_new(&config.log_level) {
        Ok(filter) => (filter, false),
        Err(_) => (EnvFilter::new("info"), true),
    };
    let output = match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_target(true)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer().with_target(true).boxed(),
    };
    let service = config.otel_service_name.as_deref().unwrap_or(service);
    let export = config
        .otel_endpoint
        .as_deref()
        .filter(|endpoint| !endpoint.is_empty())
        .map(|endpoint| otlp::provider(endpoint, service));
    let (provider, spans, export_error) = match export {
        Some(Ok((provider, tracer))) => (
            Some(provider),
            // Spans go out whatever LOG_LEVEL says; the log filter applies to the output only.
            Some(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(EnvFilter::new(EXPORTED_SPANS)),
            ),
            None,
        ),
        Some(Err(error)) => (None, None, Some(error)),
        None => (None, None, None),
    };
    tracing_subscriber::registry()
        .with(output.with_filter(filter))
        .with(spans)
        .init();
    if invalid {
        tracing::warn!(log_level = %config.log_level, "LOG_LEVEL is not a valid filter; using info");
    }
    if let Some(error) = export_error {
        tracing::warn!(%error, "spans are not exported");
    }
    Telemetry { provider }
}
