//! OpenAI's Responses API: `POST /v1/responses`, `GET /v1/responses/{response_id}` and
//! `POST /v1/responses/{response_id}/cancel`, so that OpenAI SDK users can submit and poll
//! (`background: true`), stream, resume a stream (`starting_after`) and cancel.
//!
//! A response *is* one of the service's durable generation requests, under OpenAI's names: its
//! id is `resp_` + the request's id (the `x-request-id` header carries the UUID), it is stored
//! with `metadata.api = openai.responses`, rate limits, quotas, the cache, idempotency keys and
//! usage apply as to any request. Plain calls wait like the chat door (up to
//! `OPENAI_COMPAT_WAIT_SECS`); `background: true` answers at once (`queued`) and relays its
//! tokens, so that it can be streamed, and resumed, at any time while the relay keeps its log
//! (`STREAM_LOG_TTL_SECS`). `store: false` responses cannot be read back (404), although the
//! service still records the request for audit and usage like every other.
//!
//! Files: `request` (the body and its translation), `object` (the Response object and ids),
//! `events` (the `response.*` SSE events and their numbering), `handlers` (the routes).

mod events;
mod handlers;
mod object;
mod request;

// The `__path_*` items are the handlers' OpenAPI descriptions (made by `utoipa::path`).
pub use handlers::{__path_cancel, __path_create, __path_retrieve, cancel, create, retrieve};
