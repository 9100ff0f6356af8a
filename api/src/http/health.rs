//! Operational endpoints: `/health` (liveness: the process answers), `/health/ready`
//! (readiness: PostgreSQL and Redis answer within a short timeout, and every migration this
//! build knows is applied) and `/metrics` (Prometheus text format, see `crate::metrics`).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use serde_json::json;

use crate::state::AppState;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The api's metrics, with the queue and outbox gauges read at scrape time.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics",
    responses(
        (status = 200, description = "text exposition format", body = String, content_type = "text/plain"),
    ),
)]
pub async fn metrics(State(state): State<AppState>) -> axum::response::Response {
    state.metrics.refresh_queue(&state.pool).await;
    crate::metrics::response(&state.metrics)
}

#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    summary = "Liveness",
    responses(
        (status = 200, description = "the process answers", body = serde_json::Value),
    ),
)]
pub async fn live() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// The readiness answer: every dependency's check and the migration state.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    status: &'static str,
    checks: Checks,
    #[serde(skip_serializing_if = "Option::is_none")]
    migrations: Option<llm_shared::db::MigrationState>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Checks {
    postgres: Check,
    redis: Check,
    migrations: Check,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Check {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
}

#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "operations",
    summary = "Readiness: dependencies and migrations",
    responses(
        (status = 200, description = "ready", body = Readiness),
        (status = 503, description = "not ready (the checks say why)", body = Readiness),
    ),
)]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let (postgres, redis, migrations) = tokio::join!(
        check_postgres(&state),
        check_redis(&state),
        tokio::time::timeout(CHECK_TIMEOUT, llm_shared::db::migration_state(&state.pool)),
    );
    let migrations = match migrations {
        Ok(Ok(state)) => Some(state),
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "readiness: could not read the migration state");
            None
        }
        Err(_) => None,
    };
    let migrations_check = match &migrations {
        Some(m) if m.up_to_date() => Check {
            ok: true,
            error: None,
        },
        Some(_) => Check {
            ok: false,
            error: Some("migrations pending"),
        },
        None => Check {
            ok: false,
            error: Some("unknown"),
        },
    };
    let ok = postgres.ok && redis.ok && migrations_check.ok;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Readiness {
        status: if ok { "ready" } else { "not_ready" },
        checks: Checks {
            postgres,
            redis,
            migrations: migrations_check,
        },
        migrations,
    };
    (status, Json(body))
}

async fn check_postgres(state: &AppState) -> Check {
    let probe = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.pool);
    check("PostgreSQL", probe).await
}

async fn check_redis(state: &AppState) -> Check {
    let probe = async {
        let mut conn = state.redis.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    check("Redis", probe).await
}

/// Runs one dependency probe with the time limit; the error is logged, not shown.
async fn check<T, E: std::fmt::Display>(
    what: &str,
    probe: impl Future<Output = Result<T, E>>,
) -> Check {
    match tokio::time::timeout(CHECK_TIMEOUT, probe).await {
        Ok(Ok(_)) => Check {
            ok: true,
            error: None,
        },
        Ok(Err(err)) => {
            tracing::warn!(dependency = what, error = %err, "readiness check failed");
            Check {
                ok: false,
                error: Some("unreachable"),
            }
        }
        Err(_) => Check {
            ok: false,
            error: Some("timed out"),
        },
    }
}
