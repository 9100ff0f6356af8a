//! Liveness and readiness.

use llm_tests::{spawn_app, spawn_app_with};
use serde_json::Value;

#[tokio::test]
async fn liveness_and_readiness_report_dependencies() {
    let app = spawn_app().await;
    let live = app.http.get(app.url("/health")).send().await.unwrap();
    assert_eq!(live.status(), 200);
    assert_eq!(live.json::<Value>().await.unwrap()["status"], "ok");

    let ready = app.http.get(app.url("/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["postgres"]["ok"], true);
    assert_eq!(body["checks"]["redis"]["ok"], true);
    assert_eq!(body["checks"]["migrations"]["ok"], true);
    let migrations = &body["migrations"];
    // The service's migrations and its migrations of apalis' schema.
    let on_disk =
        llm_tests::migration_files("migrations") + llm_tests::migration_files("migrations/queue");
    assert_eq!(migrations["expected"], on_disk, "{body}");
    assert_eq!(migrations["applied"], on_disk, "{body}");
    assert_eq!(migrations["pending"], serde_json::json!([]));
}

#[tokio::test]
async fn readiness_reports_pending_migrations_with_503() {
    let app = spawn_app().await;
    let latest: i64 = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    // As if this build were newer than the schema: its latest migration is not applied.
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = $1")
        .bind(latest)
        .execute(&app.db.pool)
        .await
        .unwrap();
    let ready = app.http.get(app.url("/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["checks"]["postgres"]["ok"], true);
    assert_eq!(body["checks"]["migrations"]["ok"], false);
    assert_eq!(body["checks"]["migrations"]["error"], "migrations pending");
    assert_eq!(body["migrations"]["pending"], serde_json::json!([latest]));
    let live = app.http.get(app.url("/health")).send().await.unwrap();
    assert_eq!(live.status(), 200, "liveness does not depend on it");
}

#[tokio::test]
async fn readiness_fails_when_redis_is_unreachable_but_submits_still_work() {
    // Port 1 on loopback: nothing listens there.
    let app = spawn_app_with("redis://127.0.0.1:1".into()).await;
    let ready = app.http.get(app.url("/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["checks"]["postgres"]["ok"], true);
    assert_eq!(body["checks"]["redis"]["ok"], false);

    let live = app.http.get(app.url("/health")).send().await.unwrap();
    assert_eq!(live.status(), 200);
    app.submit_ok(serde_json::json!({"prompt": "durable without redis"}))
        .await;
}
