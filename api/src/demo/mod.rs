//! The demo page for browser clients (`GET /demo`): a token pasted in, a prompt or a template
//! submitted, its tokens followed through an `EventSource` opened with a stream token
//! (`http::stream_token`), resumed after the last event id on a reconnection. Its HTML, script
//! and style are built into the binary (`include_str!`) and its Content-Security-Policy lets it
//! load and call nothing but this server, with no inline script or style.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::state::AppState;

/// Path of the demo page.
pub const DEMO_PATH: &str = "/demo";

/// Nothing from anywhere but this server, and nothing inline: the page's script and style are
/// files of their own.
pub const DEMO_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

const PAGE: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("demo.js");
const STYLE: &str = include_str!("demo.css");
const ICON: &str = include_str!("icon.svg");

/// `/demo` and its assets.
pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route(
            DEMO_PATH,
            get(|| async { asset("text/html; charset=utf-8", PAGE) }),
        )
        .route(
            "/demo/demo.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/demo/demo.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route(
            "/demo/icon.svg",
            get(|| async { asset("image/svg+xml", ICON) }),
        )
}

/// A built-in file with the page's security headers: its CSP, no referrer (a stream token's URL
/// never leaves in a `Referer`), no type sniffing.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(DEMO_CSP),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}
