//! The api's side of the metrics (`llm_shared::metrics` owns the names): the HTTP middleware
//! that counts and times every answer, the gauge of open streams, and the `/metrics` answer.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use llm_shared::metrics::{CONTENT_TYPE, Metrics};

/// Route label of answers no route matched (the 404 fallback).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// The `/metrics` answer: the text format, or a 500 (logged) if encoding failed.
pub fn response(metrics: &Metrics) -> Response {
    match metrics.encode() {
        Ok(text) => (
            [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
            text,
        )
            .into_response(),
        Err(err) => {
            tracing::error!(error = %err, "metrics: encoding failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Axum middleware: counts every answer by method, route template and status, and times it.
/// Added with `Router::layer`, it runs after routing, so `MatchedPath` is the route template;
/// answers of the fallback (no route matched) are labelled [`UNMATCHED_ROUTE`].
pub async fn track_http(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| UNMATCHED_ROUTE.to_owned());
    let method = method_label(request.method());
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let status = response.status();
    metrics
        .http_requests
        .with_label_values(&[method, &route, status.as_str()])
        .inc();
    metrics
        .http_duration
        .with_label_values(&[method, &route])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// The method as a bounded label: the standard methods, anything else is `other`.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Counts one SSE stream as active for as long as it lives.
pub struct ActiveStream(Arc<Metrics>);

impl ActiveStream {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        metrics.active_streams.inc();
        Self(metrics)
    }
}

impl Drop for ActiveStream {
    fn drop(&mut self) {
        self.0.active_streams.dec();
    }
}
