//! Usage and cost: counted exactly once per completed request, per user, model and day.

use std::time::Duration;

use llm_tests::fake_upstream::{self, FakeUpstream};
use serde_json::{Value, json};
use uuid::Uuid;

async fn usage(app: &llm_tests::TestApp, path: &str, token: &str) -> (u16, Value) {
    let r = app
        .http
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn usage_and_cost_add_up_to_the_completed_requests() {
    let openai = FakeUpstream::start("/v1").await;
    openai.always(fake_upstream::openai::success("Priced answer.", 1000, 500));
    let flags = llm_tests::openai_flags(&openai);
    let (app, worker) = llm_tests::app_with_worker(&flags).await;

    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            app.submit_ok(json!({"prompt": format!("priced {i}"), "model": "gpt-4o"}))
                .await,
        );
    }
    for i in 0..2 {
        ids.push(
            app.submit_ok(json!({"prompt": format!("free {i}"), "model": "mock"}))
                .await,
        );
    }
    for id in &ids {
        assert_eq!(
            app.wait_final(*id, Duration::from_secs(20)).await["status"],
            "completed"
        );
    }
    let (_, first) = app.poll(ids[0], 0).await;
    // gpt-4o at $2.50 / $10.00 per million tokens: 1000 in, 500 out.
    assert!(
        (first["cost_usd"].as_f64().unwrap() - 0.0075).abs() < 1e-9,
        "{first}"
    );
    assert_eq!(first["served_model"], "gpt-4o");

    let (status, by_model) = usage(&app, "/api/v1/usage?group_by=model", &app.token()).await;
    assert_eq!(status, 200, "{by_model}");
    let rows = by_model["rows"].as_array().unwrap();
    let gpt = rows.iter().find(|r| r["model"] == "gpt-4o").unwrap();
    assert_eq!(gpt["requests"], 3);
    assert_eq!(gpt["prompt_tokens"], 3000);
    assert_eq!(gpt["completion_tokens"], 1500);
    assert!((gpt["cost_usd"].as_f64().unwrap() - 0.0225).abs() < 1e-9);
    assert_eq!(
        rows.iter().find(|r| r["model"] == "mock").unwrap()["requests"],
        2
    );

    // The totals equal the sum over the user's completed requests.
    let (requests, prompt, completion): (i64, i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), SUM(prompt_tokens)::bigint, SUM(completion_tokens)::bigint
         FROM generation_requests WHERE status = 'completed'",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    let (_, by_day) = usage(&app, "/api/v1/usage", &app.token()).await;
    assert_eq!(by_day["group_by"], "day");
    assert_eq!(by_day["rows"].as_array().unwrap().len(), 1);
    assert_eq!(by_day["totals"]["requests"], requests);
    assert_eq!(by_day["totals"]["prompt_tokens"], prompt);
    assert_eq!(by_day["totals"]["completion_tokens"], completion);
    worker.stop().await;
}

#[tokio::test]
async fn another_users_usage_needs_the_admin_role() {
    let app = llm_tests::spawn_app().await;
    let other = Uuid::now_v7();
    let (status, body) = usage(&app, &format!("/api/v1/usage/{other}"), &app.token()).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    let (status, _) = usage(&app, &format!("/api/v1/usage/{}", app.user), &app.token()).await;
    assert_eq!(status, 200);
    let admin = app.jwt.issue(Uuid::now_v7(), 600, Some("admin")).unwrap();
    let (status, body) = usage(&app, &format!("/api/v1/usage/{other}"), &admin).await;
    assert_eq!(status, 200);
    assert_eq!(body["user_id"], other.to_string());
    assert_eq!(body["totals"]["requests"], 0);

    let (status, body) = usage(&app, "/api/v1/usage?from=2026-13-01", &app.token()).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = usage(
        &app,
        "/api/v1/usage?from=2026-02-01&to=2026-01-01",
        &app.token(),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = usage(&app, "/api/v1/usage?group_by=week", &app.token()).await;
    assert_eq!(status, 400);
}
