//! Admin: listing every user's requests with their attempts, replaying failed ones (one, or
//! many by filter with a dry run), cancelling anyone's request, and retention of queue jobs.

use std::time::Duration;

use llm_shared::admin;
use llm_tests::fake_upstream::{self, FakeUpstream};
use llm_tests::{TestApp, spawn_app, start_worker};
use serde_json::json;
use uuid::Uuid;

fn admin_token(app: &TestApp) -> String {
    app.jwt.issue(Uuid::now_v7(), 600, Some("admin")).unwrap()
}

#[tokio::test]
async fn a_failed_request_is_replayed_after_the_provider_is_repaired() {
    let openai = FakeUpstream::start("/v1").await;
    openai.always(fake_upstream::openai::error(503, "broken", None));
    let flags = llm_tests::openai_flags(&openai);
    let (app, worker) = llm_tests::app_with_worker(&flags).await;

    let id = app
        .submit_ok(json!({"prompt": "needs a working provider", "model": "gpt-4o-mini"}))
        .await;
    let failed = app.wait_final(id, Duration::from_secs(30)).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    let failed_calls = failed["attempt_history"].as_array().unwrap().len();
    assert!(failed_calls >= 3);

    openai.always(fake_upstream::openai::success("Fixed at last.", 5, 3));
    let admin = admin_token(&app);
    let (status, body) = app
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/admin/requests/{id}/replay"),
            &app.token(),
            None,
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = app
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/admin/requests/{id}/replay"),
            &admin,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let done = app.wait_final(id, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"], "Fixed at last.");
    let history = done["attempt_history"].as_array().unwrap();
    assert_eq!(
        history.len(),
        failed_calls + 1,
        "both attempt sets are kept"
    );
    assert!(
        history[..failed_calls]
            .iter()
            .all(|a| a["outcome"] == "failed")
    );
    assert_eq!(history[failed_calls]["outcome"], "succeeded");
    let (_, listed) = app
        .call(
            reqwest::Method::GET,
            "/api/v1/admin/requests?status=completed",
            &admin,
            None,
        )
        .await;
    assert_eq!(listed["requests"][0]["replays"], 1);

    // Only failed or cancelled requests can be replayed.
    let (status, body) = app
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/admin/requests/{id}/replay"),
            &admin,
            None,
        )
        .await;
    assert_eq!(status, 409, "{body}");
    worker.stop().await;
}

#[tokio::test]
async fn many_failed_requests_are_replayed_by_filter_after_a_dry_run() {
    let app = spawn_app().await;
    let worker = start_worker(&app.db, &[]);
    let mut failed = Vec::new();
    for i in 0..3 {
        failed.push(
            app.submit_ok(json!({"prompt": format!("doomed {i}"), "mock": {"fail": "permanent"}}))
                .await,
        );
    }
    let fine = app.submit_ok(json!({"prompt": "fine"})).await;
    for id in failed.iter().chain([&fine]) {
        app.wait_final(*id, Duration::from_secs(20)).await;
    }
    let admin = admin_token(&app);
    let filter = json!({"filter": {"model": "mock", "status": "failed"}, "dry_run": true});
    let (status, dry) = app
        .call(
            reqwest::Method::POST,
            "/api/v1/admin/requests/replay",
            &admin,
            Some(filter),
        )
        .await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(dry["count"], 3);
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM generation_requests WHERE status = 'failed'")
            .await,
        3,
        "a dry run changes nothing"
    );

    let filter = json!({"filter": {"model": "mock", "status": "failed"}});
    let (_, done) = app
        .call(
            reqwest::Method::POST,
            "/api/v1/admin/requests/replay",
            &admin,
            Some(filter),
        )
        .await;
    assert_eq!(done["count"], 3);
    for id in &failed {
        let again = app.wait_final(*id, Duration::from_secs(20)).await;
        assert_eq!(again["status"], "failed", "the mock still refuses: {again}");
        let runs: Vec<i64> = again["attempt_history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["run"].as_i64().unwrap())
            .collect();
        assert_eq!(runs, vec![1, 1], "one call per run, both kept: {again}");
    }
    assert_eq!(
        app.db
            .count("SELECT SUM(replays)::bigint FROM generation_requests")
            .await,
        3
    );
    worker.stop().await;
}

#[tokio::test]
async fn admins_list_every_users_requests_newest_first_with_keyset_pages() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            app.submit_ok(json!({"prompt": format!("listed {i}")}))
                .await,
        );
    }
    let other_user = app.token_for(Uuid::now_v7());
    app.http
        .post(app.url("/api/v1/generate"))
        .bearer_auth(&other_user)
        .json(&json!({"prompt": "someone else"}))
        .send()
        .await
        .unwrap();
    let admin = admin_token(&app);

    let (status, _) = app
        .call(
            reqwest::Method::GET,
            "/api/v1/admin/requests",
            &app.token(),
            None,
        )
        .await;
    assert_eq!(status, 403);
    let (_, all) = app
        .call(
            reqwest::Method::GET,
            "/api/v1/admin/requests?limit=100",
            &admin,
            None,
        )
        .await;
    assert_eq!(all["requests"].as_array().unwrap().len(), 6);

    let mut seen = Vec::new();
    let mut path = format!("/api/v1/admin/requests?user_id={}&limit=2", app.user);
    loop {
        let (status, page) = app.call(reqwest::Method::GET, &path, &admin, None).await;
        assert_eq!(status, 200, "{page}");
        for r in page["requests"].as_array().unwrap() {
            seen.push(r["id"].as_str().unwrap().parse::<Uuid>().unwrap());
            assert!(r["attempt_history"].is_array());
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                path = format!(
                    "/api/v1/admin/requests?user_id={}&limit=2&cursor={cursor}",
                    app.user
                )
            }
            None => break,
        }
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);

    // An admin may cancel anyone's request.
    let (status, body) = app
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/generate/{}", ids[0]),
            &admin,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "cancelled");
    let (status, _) = app
        .call(
            reqwest::Method::GET,
            "/api/v1/admin/requests?status=bogus",
            &admin,
            None,
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn retention_deletes_old_finished_jobs_and_keeps_the_rest() {
    let app = spawn_app().await;
    let worker = start_worker(&app.db, &[]);
    let old = app.submit_ok(json!({"prompt": "long ago"})).await;
    app.wait_final(old, Duration::from_secs(20)).await;
    worker.stop().await;
    let recent = app.submit_ok(json!({"prompt": "just now"})).await; // pending, its job waiting
    sqlx::query(
        "UPDATE generation_requests SET completed_at = NOW() - INTERVAL '5 days' WHERE id = $1",
    )
    .bind(old)
    .execute(&app.db.pool)
    .await
    .unwrap();
    let purged = admin::purge_finished_jobs(&app.db.pool, Duration::from_secs(72 * 3600))
        .await
        .unwrap();
    assert_eq!(purged, 1);
    assert_eq!(
        app.db.count("SELECT COUNT(*) FROM apalis.jobs").await,
        1,
        "the pending request's job stays"
    );
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM generation_requests")
            .await,
        2,
        "request rows are the record"
    );
    let (_, view) = app.poll(recent, 0).await;
    assert_eq!(view["status"], "pending");
}

#[tokio::test]
async fn every_admin_endpoint_refuses_ordinary_users() {
    let app = spawn_app().await;
    let id = Uuid::now_v7();
    let routes = [
        (
            reqwest::Method::GET,
            "/api/v1/admin/requests".to_owned(),
            None,
        ),
        (
            reqwest::Method::POST,
            format!("/api/v1/admin/requests/{id}/replay"),
            None,
        ),
        (
            reqwest::Method::POST,
            "/api/v1/admin/requests/replay".to_owned(),
            Some(json!({"filter": {}})),
        ),
        (
            reqwest::Method::POST,
            "/api/v1/admin/cache/invalidate".to_owned(),
            Some(json!({"model": "mock"})),
        ),
        (
            reqwest::Method::POST,
            "/api/v1/admin/models/reload".to_owned(),
            None,
        ),
        (
            reqwest::Method::PUT,
            format!("/api/v1/admin/rate_limits/{id}"),
            Some(json!({"requests_per_minute": 1})),
        ),
        (
            reqwest::Method::DELETE,
            format!("/api/v1/admin/rate_limits/{id}"),
            None,
        ),
        (reqwest::Method::GET, format!("/api/v1/usage/{id}"), None),
        (
            reqwest::Method::POST,
            "/api/v1/events".to_owned(),
            Some(json!({"id": id, "type": "model.updated"})),
        ),
    ];
    for (method, path, body) in routes {
        let (status, response) = app.call(method.clone(), &path, &app.token(), body).await;
        assert_eq!(status, 403, "{method} {path}: {response}");
        assert_eq!(response["error"]["code"], "forbidden");
    }
}
