//! The OpenAPI document of the api, generated from the code (`utoipa`): every route's
//! `#[utoipa::path]` annotation (on its handler in `http/*.rs`), the request and response
//! schemas (`ToSchema` on the types themselves), the one error shape ([`ErrorBody`]) and the
//! bearer JWT scheme. Served as `/openapi.json`, with Swagger UI at `/docs` whose assets are
//! built into the binary (`utoipa-swagger-ui`'s `vendored` feature): the page works offline
//! and its Content-Security-Policy lets it load nothing from anywhere but this server.
//!
//! **Invariant:** the document and the router list the same (method, path) pairs. Adding a
//! route means: `#[utoipa::path(...)]` on its handler, and the handler in [`ApiDoc`]'s
//! `paths(...)`; the `openapi_lists_every_route_of_the_router` test fails otherwise.

use axum::http::{HeaderValue, header};
use utoipa::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_swagger_ui::{Config, SwaggerUi};

use crate::error::ErrorBody;
use crate::http;
use crate::state::AppState;

/// Path of the OpenAPI document.
pub const OPENAPI_PATH: &str = "/openapi.json";
/// Path of the interactive documentation (Swagger UI).
pub const DOCS_PATH: &str = "/docs";

/// What `/docs` may load: only this server (Swagger UI's inline styles and scripts are its
/// own, served from here). No CDN, no font service, no telemetry.
const DOCS_CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
     script-src 'self' 'unsafe-inline'; connect-src 'self'; font-src 'self' data:; \
     frame-ancestors 'none'; base-uri 'self'; form-action 'self'";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "LLM Service",
        description = "LLM text generation as durable jobs: submit, poll or stream, batches, \
                       templates, models, usage, rate limits and admin tools. Every error \
                       answer is an `ErrorBody`.",
    ),
    paths(
        http::generate::submit,
        http::generate::poll,
        http::stream::submit_stream,
        http::stream::attach,
        http::stream_token::issue,
        http::ws::attach,
        http::ws::submit,
        http::stream::cancel,
        http::batch::submit,
        http::batch::status,
        http::usage::mine,
        http::usage::of_user,
        http::usage::all_users,
        http::rate_limits::mine,
        http::rate_limits::set_override,
        http::rate_limits::clear_override,
        http::prompts::list,
        http::prompts::show,
        http::prompts::render,
        http::prompts::validate,
        http::models::list,
        http::models::show,
        http::models::select,
        http::models::reload,
        http::admin::invalidate_cache,
        http::admin::list_requests,
        http::admin::replay_one,
        http::admin::replay_many,
        http::admin::list_dead_letters,
        http::admin::replay_dead_letters,
        http::events::receive,
        http::openai::chat_completions,
        http::openai::completions,
        http::openai::list_models,
        http::openai::show_model,
        http::openai::responses::create,
        http::openai::responses::retrieve,
        http::openai::responses::cancel,
        http::openai::upload_file,
        http::openai::list_files,
        http::openai::retrieve_file,
        http::openai::file_content,
        http::openai::delete_file,
        http::openai::create_batch,
        http::openai::list_batches,
        http::openai::retrieve_batch,
        http::openai::cancel_batch,
        http::anthropic::messages,
        http::health::live,
        http::health::ready,
        http::health::metrics,
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

/// The `bearer` security scheme the paths refer to: an HS256 JWT, `sub` = the user's UUID;
/// `api_key`, the same token in `x-api-key`; and `stream_token`, a stream's token in its URL.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "HS256 JWT signed with SECRET_KEY; `exp` required, `sub` = the user's UUID, \
                         optional `role` (`admin`, `service`)",
                    ))
                    .build(),
            ),
        );
        // The same JWT as Anthropic's SDKs send their key (`/v1/messages`, `/v1/models`).
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "x-api-key",
                "the same JWT as the bearer scheme, in Anthropic's header",
            ))),
        );
        // A stream token in the URL, for a browser's EventSource (`…/stream` only).
        components.add_security_scheme(
            "stream_token",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "access_token",
                "a stream token of POST /api/v1/generate/{request_id}/stream-token: that \
                 request's stream only, for minutes; never a bearer JWT",
            ))),
        );
    }
}

/// The document as the api serves it.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// `/openapi.json` and `/docs` (Swagger UI, its assets served from the binary), with the
/// Content-Security-Policy that keeps the page on this server.
pub fn routes() -> axum::Router<AppState> {
    // No online validator badge: Swagger UI would otherwise send the document to swagger.io.
    let config = Config::default()
        .validator_url("none")
        .persist_authorization(true);
    let docs: axum::Router<AppState> = SwaggerUi::new(DOCS_PATH)
        .url(OPENAPI_PATH, document())
        .config(config)
        .into();
    docs.layer(axum::middleware::map_response(
        |mut response: axum::response::Response| async move {
            response.headers_mut().insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(DOCS_CSP),
            );
            response
        },
    ))
}
