//! The OpenTelemetry export: the tracer provider that sends a process's spans to an OTLP/HTTP
//! collector (protobuf), and the W3C trace context of the current span as outgoing headers.
//!
//! The SDK's batch processor exports from a thread of its own, where hyper's client (the api
//! links no reqwest) has no runtime: [`OnRuntime`] runs each export on the process's runtime.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// How long one export may take before it is given up (the collector is down or slow; spans
/// are dropped, requests are never held).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The provider exporting to `endpoint` (`<endpoint>/v1/traces`) under `service`, and its
/// tracer. Must be called inside the runtime the exports will run on.
pub fn provider(endpoint: &str, service: &str) -> Result<(SdkTracerProvider, SdkTracer), String> {
    let endpoint = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    if !endpoint.starts_with("http://") {
        return Err(format!(
            "OTEL_EXPORTER_OTLP_ENDPOINT must be a plain http:// address (a local collector), not {endpoint}"
        ));
    }
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| "the OTLP exporter needs the async runtime".to_owned())?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .with_timeout(EXPORT_TIMEOUT)
        .with_http_client(OnRuntime {
            client: HyperClient::with_default_connector(EXPORT_TIMEOUT, None),
            runtime,
        })
        .build()
        .map_err(|e| format!("the OTLP exporter: {e}"))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        )
        .build();
    let tracer = provider.tracer(service.to_owned());
    Ok((provider, tracer))
}

/// hyper's client, each request run as a task of the process's runtime.
#[derive(Debug)]
struct OnRuntime {
    client: HyperClient,
    runtime: tokio::runtime::Handle,
}

impl HttpClient for OnRuntime {
    // The trait is declared with `async_trait`; this is its expansion, written out.
    fn send_bytes<'a, 'b>(
        &'a self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        let client = self.client.clone();
        let task = self
            .runtime
            .spawn(async move { client.send_bytes(request).await });
        Box::pin(async move { task.await.map_err(|e| Box::new(e) as HttpError)? })
    }
}

/// The current span's W3C trace context (`traceparent`, and `tracestate` when set) as header
/// pairs, for calls that carry the trace on (providers, the message hub). Empty when spans are
/// not exported.
pub fn current_trace_headers() -> Vec<(String, String)> {
    let context = tracing::Span::current().context();
    let mut headers = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut headers);
    headers.into_iter().collect()
}

/// Makes `span` the child of the remote span a W3C `traceparent` names; false when it does not
/// parse.
pub fn set_remote_parent(span: &tracing::Span, traceparent: &str) -> bool {
    let carrier =
        std::collections::HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    use opentelemetry::trace::TraceContextExt;
    if !context.span().span_context().is_valid() {
        return false;
    }
    span.set_parent(context).is_ok()
}

/// The trace id OpenTelemetry gave `span` (32 hex digits), when spans are exported.
pub fn trace_id_of(span: &tracing::Span) -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// The current span's W3C `traceparent`, when spans are exported.
pub fn current_traceparent() -> Option<String> {
    current_trace_headers()
        .into_iter()
        .find_map(|(name, value)| (name == "traceparent").then_some(value))
}

/// Puts `span` in the trace `trace_id` (32 hex digits) under a remote parent whose id is
/// derived from `about` (work done later for a request, whose own spans have ended: its hub
/// events). False when `trace_id` is not a trace id.
pub fn set_remote_trace(span: &tracing::Span, trace_id: &str, about: uuid::Uuid) -> bool {
    use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags, TraceId, TraceState};
    let Ok(trace_id) = TraceId::from_hex(trace_id) else {
        return false;
    };
    let parent = SpanContext::new(
        trace_id,
        derived_span_id(about),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    parent.is_valid()
        && span
            .set_parent(opentelemetry::Context::new().with_remote_span_context(parent))
            .is_ok()
}

/// The `traceparent` naming the trace `trace_id` and a parent derived from `about`, for a
/// receiver that joins its logs to ours by trace id when no span of ours is exported.
pub fn traceparent_of(trace_id: &str, about: uuid::Uuid) -> Option<String> {
    let valid = trace_id.len() == 32
        && trace_id.bytes().all(|b| b.is_ascii_hexdigit())
        && trace_id.bytes().any(|b| b != b'0');
    valid.then(|| format!("00-{trace_id}-{}-01", derived_span_id(about)))
}

/// A span id from `about`'s low 64 bits (never zero, as W3C requires).
fn derived_span_id(about: uuid::Uuid) -> opentelemetry::trace::SpanId {
    let low = (about.as_u128() as u64).max(1);
    opentelemetry::trace::SpanId::from_bytes(low.to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_id_gives_a_traceparent_under_a_parent_derived_from_the_request() {
        let request = uuid::Uuid::now_v7();
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let header = traceparent_of(trace, request).unwrap();
        let low = format!("{:016x}", request.as_u128() as u64);
        assert_eq!(header, format!("00-{trace}-{low}-01"));
        assert_eq!(traceparent_of(trace, request), Some(header), "stable");
        for bad in ["", "00000000000000000000000000000000", "4bf92f35", "zz"] {
            assert_eq!(traceparent_of(bad, request), None, "{bad}");
        }
        assert_eq!(
            derived_span_id(uuid::Uuid::nil()).to_string(),
            "0000000000000001"
        );
    }
}
