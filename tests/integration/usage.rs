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

#[tokio::test]
async fn an_admin_reads_every_users_usage_by_day_user_and_model_a_page_at_a_time() {
    let (app, worker) = llm_tests::app_with_worker(&[]).await;
    let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());
    for (user, prompts) in [(alice, 2), (bob, 1)] {
        for i in 0..prompts {
            let (status, accepted) = app
                .call(
                    reqwest::Method::POST,
                    "/api/v1/generate",
                    &app.token_for(user),
                    Some(json!({"prompt": format!("usage {i}"), "model": "mock"})),
                )
                .await;
            assert_eq!(status, 202, "{accepted}");
            let id: Uuid = accepted["request_id"].as_str().unwrap().parse().unwrap();
            let mut done = Value::Null;
            for _ in 0..40 {
                let (_, view) = app
                    .call(
                        reqwest::Method::GET,
                        &format!("/api/v1/generate/{id}?wait=5"),
                        &app.token_for(user),
                        None,
                    )
                    .await;
                done = view;
                if done["status"] == "completed" {
                    break;
                }
            }
            assert_eq!(done["status"], "completed", "{done}");
        }
    }
    worker.stop().await;
    let admin = app.jwt.issue(Uuid::now_v7(), 600, Some("admin")).unwrap();

    let (status, page) = usage(&app, "/api/v1/admin/usage", &admin).await;
    assert_eq!(status, 200, "{page}");
    let rows = page["rows"].as_array().unwrap();
    let of = |user: Uuid| {
        rows.iter()
            .find(|r| r["user_id"] == user.to_string())
            .unwrap_or_else(|| panic!("no row of {user}: {page}"))
    };
    assert_eq!(
        (of(alice)["requests"].clone(), of(alice)["model"].clone()),
        (json!(2), json!("mock"))
    );
    assert_eq!(of(bob)["requests"], 1);
    assert_eq!(of(bob)["day"], chrono::Utc::now().date_naive().to_string());
    assert_eq!(page["next_cursor"], Value::Null);

    // A page at a time: one row, then the next after its cursor, then none.
    let (_, first) = usage(&app, "/api/v1/admin/usage?limit=1", &admin).await;
    assert_eq!(first["rows"].as_array().unwrap().len(), 1);
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let next = reqwest::Url::parse_with_params(
        &app.url("/api/v1/admin/usage"),
        [("limit", "1"), ("cursor", cursor.as_str())],
    )
    .unwrap();
    let (status, second) = usage(
        &app,
        &format!("/api/v1/admin/usage?{}", next.query().unwrap()),
        &admin,
    )
    .await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["next_cursor"], Value::Null, "{second}");
    let mut seen = vec![
        first["rows"][0]["user_id"].clone(),
        second["rows"][0]["user_id"].clone(),
    ];
    seen.sort_by_key(|v| v.to_string());
    let mut expected = vec![json!(alice.to_string()), json!(bob.to_string())];
    expected.sort_by_key(|v| v.to_string());
    assert_eq!(seen, expected);

    // A range of days without usage has no rows.
    let (status, old) = usage(
        &app,
        "/api/v1/admin/usage?from=2020-01-01&to=2020-03-01",
        &admin,
    )
    .await;
    assert_eq!((status, old["rows"].clone()), (200, json!([])));
}

#[tokio::test]
async fn every_users_usage_is_for_admins_only_and_its_range_and_page_are_bounded() {
    let app = llm_tests::spawn_app().await;
    let (status, body) = usage(&app, "/api/v1/admin/usage", &app.token()).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    // Refused before its query is read: a bad query from a non-admin is still a 403.
    let (status, _) = usage(&app, "/api/v1/admin/usage?limit=-5", &app.token()).await;
    assert_eq!(status, 403);

    let admin = app.jwt.issue(Uuid::now_v7(), 600, Some("admin")).unwrap();
    for (query, expected) in [
        ("from=2026-01-01&to=2026-12-31", "at most 92 days"),
        ("from=2026-02-01&to=2026-01-01", "`from` is after `to`"),
        ("limit=0", "limit must be between 1 and 1000"),
        ("limit=1001", "limit must be between 1 and 1000"),
        ("cursor=not-a-cursor", "cursor"),
        ("cursor=2026-01-01%2Fnot-a-uuid%2Fmock", "cursor"),
    ] {
        let (status, body) = usage(&app, &format!("/api/v1/admin/usage?{query}"), &admin).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(expected),
            "{query}: {body}"
        );
    }
    for query in ["from=yesterday", "user=all", "limit=lots"] {
        let (status, body) = usage(&app, &format!("/api/v1/admin/usage?{query}"), &admin).await;
        assert_eq!(status, 400, "{query}: {body}");
    }
    let (status, _) = usage(
        &app,
        "/api/v1/admin/usage?from=2026-01-01&to=2026-04-02",
        &admin,
    )
    .await;
    assert_eq!(status, 200, "92 days are allowed");
}

#[tokio::test]
async fn a_page_of_every_users_usage_reads_its_rows_in_order_through_an_index() {
    let app = llm_tests::spawn_app().await;
    // 2,000 users on 60 days: 120,000 rows, a page of them wanted.
    sqlx::query(
        "INSERT INTO usage_daily (user_id, day, model, requests)
         SELECT md5(u::text)::uuid, DATE '2026-01-01' + d, 'mock', 1
         FROM generate_series(1, 2000) u, generate_series(0, 59) d",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    sqlx::raw_sql("ANALYZE usage_daily")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let sql = include_str!("../../shared/src/usage/sql/all_users.sql");
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {sql}"
    )))
    .bind(chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap())
    .bind(chrono::NaiveDate::from_ymd_opt(2026, 3, 31).unwrap())
    .bind(chrono::NaiveDate::from_ymd_opt(2026, 1, 30))
    .bind(Uuid::nil())
    .bind("")
    .bind(101_i64)
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains("usage_daily_by_day_idx"), "{plan}");
    assert!(
        !plan.contains("Seq Scan") && !plan.contains("Sort"),
        "{plan}"
    );
}
