//! `POST /api/v1/events`: where the message hub delivers events to this service, as CloudEvents
//! 1.0 in structured mode ([`Envelope`]; the envelope without its CloudEvents attributes is
//! accepted too). Callers need a service identity (a token with the `service` role; admins too).
//!
//! - `generation.requested` creates a request like a submit, for `data.user_id`;
//! - `model.updated` reloads the model registry (every api and worker follows);
//! - `cache.invalidate` deletes cache entries matching `data` (model, template_id, key_prefix).
//!
//! Each event id has an effect once: it is recorded in `inbox_events` in the transaction that
//! applies the effect (the request it creates, the cache entries it deletes), and effects
//! outside PostgreSQL (the Redis copies, the registry reload) are applied, idempotently, before
//! that transaction commits. An effect that fails records nothing, so the hub's retry with the
//! same id takes effect instead of being answered "duplicate". Unknown types are acknowledged
//! and logged; malformed events get a 4xx.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::extract::JsonBody;
use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::error::doc;
use crate::state::AppState;
use llm_shared::cache::{InvalidateError, InvalidateFilter};
use llm_shared::registry_reloads;
use llm_shared::requests::{self, GenerateBody, NewRequest};

/// An event from the hub: a CloudEvents 1.0 envelope in structured mode (`Content-Type:
/// application/cloudevents+json`, or `application/json`), or the same without the CloudEvents
/// attributes (`specversion` and the rest are optional, as before CloudEvents; `time`,
/// `subject` and extensions are not read). The `id` is a UUID (the inbox's key); `data` is a
/// JSON object.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct Envelope {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub data: Map<String, Value>,
    #[serde(default)]
    pub source: Option<String>,
    /// `"1.0"` when present: an envelope of another CloudEvents version is refused.
    #[serde(default)]
    pub specversion: Option<String>,
    /// The media type of `data`, when given: JSON (`application/json` or `…+json`).
    #[serde(default)]
    pub datacontenttype: Option<String>,
}

impl Envelope {
    /// Refuses CloudEvents attributes this receiver cannot honour, before anything is recorded.
    fn check(&self) -> Result<(), ApiError> {
        if let Some(version) = self.specversion.as_deref()
            && version != "1.0"
        {
            return Err(ApiError::validation(
                "specversion",
                "only CloudEvents specversion \"1.0\" is accepted",
            ));
        }
        if let Some(media) = self.datacontenttype.as_deref() {
            let essence = media.split(';').next().unwrap_or("").trim();
            let json = essence.eq_ignore_ascii_case("application/json")
                || essence.to_ascii_lowercase().ends_with("+json");
            if !json {
                return Err(ApiError::validation(
                    "datacontenttype",
                    "data must be JSON (application/json)",
                ));
            }
        }
        Ok(())
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/events",
    tag = "events",
    summary = "Receive a message hub event (service identities)",
    request_body = Envelope,
    responses(
        (status = 202, description = "applied", body = serde_json::Value),
        (status = 200, description = "acknowledged (a duplicate, or an unknown type)", body = serde_json::Value),
        doc::BadRequest, doc::Unauthorized, doc::TooLarge, doc::NotJson, doc::Invalid, doc::Forbidden, doc::Conflict, doc::RateLimited, doc::Unavailable,
    ),
    security(("bearer" = [])),
)]
pub async fn receive(
    State(state): State<AppState>,
    caller: AuthUser,
    trace: crate::telemetry::TraceContext,
    JsonBody(event): JsonBody<Envelope>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if !caller.is_service() && !caller.is_admin() {
        return Err(ApiError::Forbidden(
            "events are accepted from service identities only",
        ));
    }
    event.check()?;
    match event.kind.as_str() {
        "generation.requested" => generation_requested(&state, event, trace).await,
        "cache.invalidate" => cache_invalidate(&state, &event).await,
        "model.updated" => model_updated(&state, &event).await,
        other => {
            tracing::info!(event.id = %event.id, event.type = other, source = ?event.source, "event of an unknown type acknowledged and ignored");
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({"id": event.id, "acknowledged": true, "ignored": true})),
            ))
        }
    }
}

fn duplicate(event: &Envelope) -> (StatusCode, Json<Value>) {
    (
        StatusCode::OK,
        Json(json!({"id": event.id, "duplicate": true})),
    )
}

/// Records the event id in `tx`; false when it was recorded before. A concurrent delivery of
/// the same id waits here until this transaction ends: it then finds the id if the effect
/// committed, or records it itself if this one rolled back.
async fn record_id(tx: &mut sqlx::PgConnection, event: &Envelope) -> Result<bool, ApiError> {
    let inserted = sqlx::query(
        "INSERT INTO inbox_events (id, type) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
    )
    .bind(event.id)
    .bind(&event.kind)
    .execute(tx)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Deletes the matching cache entries: the table's in the transaction that records the id,
/// their Redis copies before it commits. If Redis fails, nothing commits and the answer is a
/// 503, so the hub's retry finds the entries again and deletes their copies then.
async fn cache_invalidate(
    state: &AppState,
    event: &Envelope,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // A filter the cache refuses is refused before anything is recorded, so that the hub's
    // corrected retry is not answered "duplicate".
    let filter: InvalidateFilter = serde_json::from_value(Value::Object(event.data.clone()))
        .map_err(|e| ApiError::validation("data", e.to_string()))?;
    filter.check()?;
    let mut tx = state.pool.begin().await?;
    if !record_id(&mut tx, event).await? {
        return Ok(duplicate(event));
    }
    let invalidated = match state.cache.invalidate_in(&mut tx, &filter).await {
        Ok(invalidated) => invalidated,
        Err(InvalidateError::Domain(err)) => return Err(err.into()),
        Err(InvalidateError::Redis(err)) => {
            tracing::warn!(event.id = %event.id, error = %err, "cache.invalidate not applied: Redis unavailable");
            return Err(ApiError::Unavailable(
                "Redis is unavailable: the invalidation was not applied; deliver the event again",
            ));
        }
    };
    tx.commit().await?;
    tracing::info!(event.id = %event.id, invalidated, "cache.invalidate applied");
    Ok((
        StatusCode::OK,
        Json(json!({"id": event.id, "invalidated": invalidated})),
    ))
}

/// Reloads the registry (idempotent) while the transaction recording the id is open, and tells
/// every other api and worker by the version announced when it commits (`registry_reloads`):
/// a registry that fails to load records nothing, so the hub's retry (once the file is fixed)
/// reloads it.
async fn model_updated(
    state: &AppState,
    event: &Envelope,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let mut tx = state.pool.begin().await?;
    if !record_id(&mut tx, event).await? {
        return Ok(duplicate(event));
    }
    let fresh = state
        .models
        .reload()
        .map_err(|e| ApiError::validation("data", format!("the registry was not reloaded: {e}")))?;
    registry_reloads::announce(&mut tx).await?;
    tx.commit().await?;
    tracing::info!(event.id = %event.id, models = fresh.all().len(), "model.updated: registry reloaded");
    Ok((
        StatusCode::OK,
        Json(json!({"id": event.id, "reloaded": true})),
    ))
}

/// A request created on behalf of `data.user_id`; the rest of `data` is a submit's body.
async fn generation_requested(
    state: &AppState,
    event: Envelope,
    trace: crate::telemetry::TraceContext,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let mut data = event.data.clone();
    let user_id = data
        .remove("user_id")
        .and_then(|v| v.as_str().and_then(|s| Uuid::parse_str(s).ok()))
        .ok_or_else(|| ApiError::validation("data.user_id", "data.user_id must be a UUID"))?;
    let body: GenerateBody = serde_json::from_value(Value::Object(data))
        .map_err(|e| ApiError::validation("data", e.to_string()))?;
    let models = state.models.current();
    let body = body.resolve_template(&state.prompts, &models)?;
    let mut new = NewRequest::validate(
        body,
        user_id,
        None,
        &models,
        state.limits.job_max_attempts,
        state.cache.scope,
    )?;
    new.trace_id = Some(trace.trace_id);
    new.metadata
        .as_object_mut()
        .map(|m| m.insert("event_id".into(), Value::from(event.id.to_string())));
    let pool = state.pool.clone();
    let (event_id, kind) = (event.id, event.kind.clone());
    // The inbox row and the request commit together: a redelivery finds the id and stops.
    let created = tokio::spawn(async move {
        let mut tx = pool.begin().await?;
        let first = sqlx::query(
            "INSERT INTO inbox_events (id, type) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
        )
        .bind(event_id)
        .bind(&kind)
        .execute(&mut *tx)
        .await?;
        if first.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok::<_, ApiError>(None);
        }
        let submitted = requests::insert_with_job(&mut tx, &new).await?;
        tx.commit().await?;
        Ok(Some(submitted.id))
    })
    .await
    .map_err(ApiError::internal)??;
    match created {
        None => Ok(duplicate(&event)),
        Some(request_id) => {
            tracing::info!(event.id = %event.id, request.id = %request_id, user.id = %user_id, "generation.requested accepted");
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({"id": event.id, "request_id": request_id})),
            ))
        }
    }
}
