//! What the service names survives a crash of PostgreSQL, though every submit commits without
//! waiting for the disk (`requests::Durability`): a waited call's is carried by its outcome's
//! commit or flushed before a `504`, and a `202`'s is flushed before its answer.

use std::time::Duration;

use llm_tests::servers::PrivatePostgres;
use llm_tests::{TestDb, spawn_api_process_with, spawn_worker_process};
use serde_json::{Value, json};
use uuid::Uuid;

/// A crash, then recovery; the pools' connections idle past a second are replaced before use.
async fn crash_and_recover(pg: &PrivatePostgres) {
    pg.crash().await;
    pg.up().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

async fn row(db: &TestDb, id: Uuid) -> Option<(String, Option<String>, i64)> {
    sqlx::query_as(
        "SELECT r.status, r.result, (SELECT count(*) FROM apalis.jobs j WHERE j.id = r.job_id)
         FROM generation_requests r WHERE r.id = $1",
    )
    .bind(id)
    .fetch_optional(&db.pool)
    .await
    .unwrap()
}

/// A `/v1` call's submit commits without waiting for the disk, yet neither a call whose wait
/// ran out (`504`, naming the request) nor one answered (`200`) is lost in a crash right after
/// its answer: the first is made durable before its `504`, the second is carried by its
/// result's durable commit. The cluster's WAL writer flushes only every 10 s, and no worker
/// runs during the first call, so nothing else flushes the first submit by chance.
#[tokio::test]
async fn what_a_door_call_answered_names_survives_a_crash_of_postgres() {
    let pg = PrivatePostgres::start_durable().await;
    let db = TestDb::on(&pg.admin_url()).await;
    let (_api, base) = spawn_api_process_with(&db, &[("OPENAI_COMPAT_WAIT_SECS", "1")]).await;
    let token = llm_tests::test_jwt()
        .issue(Uuid::now_v7(), 600, None)
        .unwrap();
    let http = reqwest::Client::new();
    let call = |content: &'static str| {
        http.post(format!("{base}/v1/chat/completions"))
            .bearer_auth(&token)
            .json(&json!({"model": "mock",
                          "messages": [{"role": "user", "content": content}]}))
            .send()
    };
    let request_id = |response: &reqwest::Response| -> Uuid {
        response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };

    let waited = call("no worker runs this yet").await.unwrap();
    assert_eq!(waited.status(), 504);
    let pending = request_id(&waited);
    crash_and_recover(&pg).await;
    let (status, _, jobs) = row(&db, pending).await.expect("the 504's request was lost");
    assert_eq!((status.as_str(), jobs), ("pending", 1));

    let _worker = spawn_worker_process(&db, &[]);
    let answered = call("answered before the crash").await.unwrap();
    assert_eq!(answered.status(), 200);
    let done = request_id(&answered);
    let body: Value = answered.json().await.unwrap();
    crash_and_recover(&pg).await;
    let (status, result, _) = row(&db, done).await.expect("the 200's request was lost");
    assert_eq!(status, "completed");
    assert_eq!(
        result.as_deref(),
        body["choices"][0]["message"]["content"].as_str()
    );
}

/// A submit answered `202` commits without waiting for the disk (so that its job is announced
/// at once), and is flushed before its answer: a crash right after the `202` keeps the request
/// and its job. Nothing else flushes it by chance: no worker runs, and the cluster's WAL writer
/// flushes only every 10 s.
#[tokio::test]
async fn a_submit_answered_202_survives_a_crash_of_postgres() {
    let pg = PrivatePostgres::start_durable().await;
    let db = TestDb::on(&pg.admin_url()).await;
    let (_api, base) = spawn_api_process_with(&db, &[]).await;
    let token = llm_tests::test_jwt()
        .issue(Uuid::now_v7(), 600, None)
        .unwrap();
    let accepted = reqwest::Client::new()
        .post(format!("{base}/api/v1/generate"))
        .bearer_auth(&token)
        .json(&json!({"model": "mock", "prompt": "named at once, run later"}))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
    let body: Value = accepted.json().await.unwrap();
    let id: Uuid = body["request_id"].as_str().unwrap().parse().unwrap();
    crash_and_recover(&pg).await;
    let (status, _, jobs) = row(&db, id).await.expect("the 202's request was lost");
    assert_eq!((status.as_str(), jobs), ("pending", 1));
}
