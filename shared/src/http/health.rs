//! `/health` (liveness: the process answers) and `/health/ready` (readiness: PostgreSQL and
//! Redis answer within a short timeout).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use serde_json::json;

use super::AppState;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn live() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

#[derive(Serialize)]
pub struct Check {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
}

pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    let (postgres, redis) = tokio::join!(check_postgres(&state), check_redis(&state));
    let ok = postgres.ok && redis.ok;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ok { "ready" } else { "not_ready" },
        "checks": { "postgres": postgres, "redis": redis },
    });
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
