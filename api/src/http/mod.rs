//! The HTTP API: router, shared state and extractors. Handlers live one file per area.
//!
//! **Invariant:** handlers never call a provider; they persist and enqueue, or read.

pub(crate) mod admin;
pub(crate) mod anthropic;
pub(crate) mod batch;
pub(crate) mod door;
pub(crate) mod events;
pub(crate) mod extract;
pub(crate) mod generate;
pub(crate) mod health;
pub(crate) mod models;
pub(crate) mod openai;
pub(crate) mod prompts;
pub(crate) mod quota;
pub(crate) mod rate_limits;
pub(crate) mod stream;
pub(crate) mod stream_token;
pub(crate) mod usage;
pub(crate) mod ws;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use crate::error::ApiError;
use crate::state::AppState;

/// A batch body may be this many times the size of a single request's.
const BATCH_BODY_FACTOR: usize = 32;
/// What a file upload's multipart framing (boundaries, the `purpose` field) may add to it.
const MULTIPART_OVERHEAD: usize = 64 * 1024;

/// The service's router: every route, with `pages` (the OpenAPI document and its UI, from
/// the `openapi` module; the demo page, `demo`) merged under the same fallbacks and
/// middleware, and `cors` (from `CORS_ALLOWED_ORIGINS`) answering preflights inside the
/// metrics and trace layers, so they are counted and traced like any answer.
pub fn router(
    state: AppState,
    pages: Router<AppState>,
    cors: Option<tower_http::cors::CorsLayer>,
) -> Router {
    let max_body = state.limits.max_body_bytes;
    let api = Router::new()
        .route("/api/v1/generate", post(generate::submit))
        .route("/api/v1/generate/stream", post(stream::submit_stream))
        .route("/api/v1/generate/ws", get(ws::submit))
        .route(
            "/api/v1/generate/batch",
            post(batch::submit).layer(DefaultBodyLimit::max(
                max_body.saturating_mul(BATCH_BODY_FACTOR),
            )),
        )
        .route("/api/v1/generate/batch/{batch_id}", get(batch::status))
        .route(
            "/api/v1/generate/{request_id}",
            get(generate::poll).delete(stream::cancel),
        )
        .route("/api/v1/generate/{request_id}/stream", get(stream::attach))
        .route(
            "/api/v1/generate/{request_id}/stream-token",
            post(stream_token::issue),
        )
        .route("/api/v1/generate/{request_id}/ws", get(ws::attach))
        .route("/api/v1/usage", get(usage::mine))
        .route("/api/v1/usage/{user_id}", get(usage::of_user))
        .route("/api/v1/admin/usage", get(usage::all_users))
        .route("/api/v1/rate_limits", get(rate_limits::mine))
        .route("/api/v1/prompts", get(prompts::list))
        .route("/api/v1/prompts/validate", post(prompts::validate))
        .route("/api/v1/prompts/{template_id}", get(prompts::show))
        .route(
            "/api/v1/prompts/{template_id}/render",
            post(prompts::render),
        )
        .route("/api/v1/models", get(models::list))
        .route("/api/v1/models/select", post(models::select))
        .route("/api/v1/models/{model_id}", get(models::show))
        .route("/api/v1/admin/models/reload", post(models::reload))
        .route(
            "/api/v1/admin/cache/invalidate",
            post(admin::invalidate_cache),
        )
        .route("/api/v1/admin/requests", get(admin::list_requests))
        .route("/api/v1/admin/outbox/dead", get(admin::list_dead_letters))
        .route(
            "/api/v1/admin/outbox/dead/replay",
            post(admin::replay_dead_letters),
        )
        .route("/api/v1/events", post(events::receive))
        .route("/api/v1/admin/requests/replay", post(admin::replay_many))
        .route(
            "/api/v1/admin/requests/{request_id}/replay",
            post(admin::replay_one),
        )
        .route(
            "/api/v1/admin/rate_limits/{user_id}",
            axum::routing::put(rate_limits::set_override).delete(rate_limits::clear_override),
        )
        // The OpenAI-compatible front door (`http::openai`).
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/models", get(openai::list_models))
        .route("/v1/models/{model}", get(openai::show_model))
        .route("/v1/responses", post(openai::responses::create))
        .route(
            "/v1/responses/{response_id}",
            get(openai::responses::retrieve),
        )
        .route(
            "/v1/responses/{response_id}/cancel",
            post(openai::responses::cancel),
        )
        .route(
            "/v1/files",
            post(openai::upload_file)
                .layer(DefaultBodyLimit::max(
                    llm_shared::openai_files::MAX_FILE_BYTES + MULTIPART_OVERHEAD,
                ))
                .get(openai::list_files),
        )
        .route(
            "/v1/files/{file_id}",
            get(openai::retrieve_file).delete(openai::delete_file),
        )
        .route("/v1/files/{file_id}/content", get(openai::file_content))
        .route(
            "/v1/batches",
            post(openai::create_batch).get(openai::list_batches),
        )
        .route("/v1/batches/{batch_id}", get(openai::retrieve_batch))
        .route("/v1/batches/{batch_id}/cancel", post(openai::cancel_batch))
        // The Anthropic-compatible front door (`http::anthropic`).
        .route("/v1/messages", post(anthropic::messages))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            rate_limits::headers,
        ));
    let mut router = Router::new()
        .route("/health", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        .merge(api)
        .merge(pages)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body));
    if let Some(cors) = cors {
        router = router.layer(cors);
    }
    router
        // Layers run after routing (so both see the route template), outermost last.
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            crate::metrics::track_http,
        ))
        .layer(axum::middleware::from_fn(crate::telemetry::trace_requests))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed("this method is not allowed on this route")
}
