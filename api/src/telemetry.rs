//! The trace context of api requests: the per-request span, the W3C trace id taken from
//! `traceparent` (or generated), stored with a submitted generation so the worker's job span
//! carries the same `trace_id`, and echoed in `x-trace-id`.
//!
//! **Invariant:** prompts, results, tokens and keys are never fields of an info-level event or
//! span; spans carry ids, routes and outcomes only.

/// The trace context of one api request: its W3C trace id (32 lowercase hex digits), taken from
/// an incoming `traceparent` header or generated. It is stored with a submitted generation
/// (`generation_requests.trace_id`) so the worker's job span carries the same `trace_id` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: String,
}

/// Header echoing the request's trace id on every answer.
pub const TRACE_ID_HEADER: &str = "x-trace-id";

impl TraceContext {
    /// A fresh trace id (a UUIDv7's 128 bits: never all zeros, as W3C requires).
    pub fn generate() -> Self {
        Self {
            trace_id: uuid::Uuid::now_v7().simple().to_string(),
        }
    }

    /// The trace id of a W3C `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`), if valid.
    pub fn from_traceparent(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let (version, trace, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        let valid = hex(version, 2)
            && version != "ff"
            && hex(trace, 32)
            && trace.bytes().any(|b| b != b'0')
            && hex(parent, 16)
            && hex(flags, 2)
            && (version != "00" || parts.next().is_none());
        valid.then(|| Self {
            trace_id: trace.to_ascii_lowercase(),
        })
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for TraceContext {
    type Rejection = std::convert::Infallible;

    /// The context [`trace_requests`] set; a fresh one if the middleware is not installed.
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Self>()
            .cloned()
            .unwrap_or_else(Self::generate))
    }
}

/// Axum middleware: one `request` span per HTTP request (method, route template, trace id; the
/// handler records `request.id` once a generation is known), the [`TraceContext`] in the
/// request's extensions, and the trace id echoed in `x-trace-id`. Added with `Router::layer`, so
/// the route is the matched template, never the raw path. Neither headers nor bodies are logged.
pub async fn trace_requests(
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument;

    let incoming = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|header| TraceContext::from_traceparent(header).is_some())
        .map(str::to_owned);
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or(crate::metrics::UNMATCHED_ROUTE, |p| p.as_str())
        .to_owned();
    let method = crate::metrics::method_label(request.method());
    // The `otel.*` and `http.*` fields name the exported span as OpenTelemetry's HTTP server
    // conventions do, and are the log's method, route and status too.
    let span = tracing::info_span!(
        "request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        http.request.method = method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        request.id = tracing::field::Empty,
    );
    if let Some(header) = &incoming {
        llm_shared::telemetry::set_remote_parent(&span, header);
    }
    // Exported spans have their trace id (the incoming one, else a new one): the logs, the
    // stored request and `x-trace-id` use it; without export, the incoming one or a new one.
    let context = match llm_shared::telemetry::trace_id_of(&span) {
        Some(trace_id) => TraceContext { trace_id },
        None => incoming
            .as_deref()
            .and_then(TraceContext::from_traceparent)
            .unwrap_or_else(TraceContext::generate),
    };
    span.record("trace_id", context.trace_id.as_str());
    let header = axum::http::HeaderValue::from_str(&context.trace_id).ok();
    request.extensions_mut().insert(context);
    let mut response = async move {
        let response = next.run(request).await;
        let status = response.status().as_u16();
        tracing::Span::current().record("http.response.status_code", i64::from(status));
        tracing::debug!(status, "answered");
        response
    }
    .instrument(span)
    .await;
    if let Some(header) = header {
        response.headers_mut().insert(TRACE_ID_HEADER, header);
    }
    response
}

/// Records the generation a request is about on the current `request` span.
pub fn record_request_id(id: uuid::Uuid) {
    tracing::Span::current().record("request.id", tracing::field::display(id));
}

#[cfg(test)]
mod tests {
    use super::TraceContext;

    #[test]
    fn traceparent_is_parsed_strictly() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            TraceContext::from_traceparent(ok).map(|c| c.trace_id),
            Some("4bf92f3577b34da6a3ce929d0e0e4736".to_owned())
        );
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-zzf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::from_traceparent(bad), None, "{bad}");
        }
        assert_eq!(TraceContext::generate().trace_id.len(), 32);
    }
}
