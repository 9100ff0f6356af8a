//! Batches: validated as a whole, created in one transaction, tracked, and run after
//! interactive requests.

use std::time::{Duration, Instant};

use llm_tests::{TestApp, spawn_app, start_worker};
use serde_json::{Value, json};
use uuid::Uuid;

async fn submit_batch(app: &TestApp, body: Value) -> (u16, Value) {
    app.post_json("/api/v1/generate/batch", &body).await
}

async fn batch_status(app: &TestApp, id: &str) -> Value {
    let r = app
        .http
        .get(app.url(&format!("/api/v1/generate/batch/{id}")))
        .bearer_auth(app.token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn a_500_item_batch_completes_and_its_progress_is_tracked() {
    let app = spawn_app().await;
    let items: Vec<Value> = (0..500)
        .map(|i| json!({"prompt": format!("npc name #{i}"), "parameters": {"max_tokens": 6}}))
        .collect();
    let (status, accepted) =
        submit_batch(&app, json!({"items": items, "metadata": {"campaign": "x"}})).await;
    assert_eq!(status, 202, "{accepted}");
    let batch_id = accepted["batch_id"].as_str().unwrap().to_owned();
    assert_eq!(accepted["request_ids"].as_array().unwrap().len(), 500);
    assert_eq!(app.db.count("SELECT COUNT(*) FROM apalis.jobs").await, 500);

    let before = batch_status(&app, &batch_id).await;
    assert_eq!(before["total"], 500);
    assert_eq!(before["counts"]["pending"], 500);
    assert_eq!(before["progress"], 0.0);
    assert_eq!(before["metadata"]["campaign"], "x");

    let worker = start_worker(&app.db, &[]);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last_progress = 0.0;
    let done = loop {
        let view = batch_status(&app, &batch_id).await;
        let progress = view["progress"].as_f64().unwrap();
        assert!(
            progress >= last_progress,
            "progress went back: {last_progress} -> {progress}"
        );
        last_progress = progress;
        if view["done"] == true {
            break view;
        }
        assert!(
            Instant::now() < deadline,
            "batch not done: {}",
            view["counts"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(done["counts"]["completed"], 500);
    assert_eq!(done["progress"], 1.0);
    let items = done["items"].as_array().unwrap();
    assert_eq!(items.len(), 500);
    assert!(
        items
            .iter()
            .enumerate()
            .all(|(i, item)| item["index"] == i && item["status"] == "completed")
    );
    // Each item is an ordinary request: pollable on its own.
    let first: Uuid = items[0]["request_id"].as_str().unwrap().parse().unwrap();
    let (_, view) = app.poll(first, 0).await;
    assert_eq!(view["result"], items[0]["result"]);
    worker.stop().await;
}

#[tokio::test]
async fn an_interactive_request_overtakes_a_large_batch() {
    let app = spawn_app().await;
    let items: Vec<Value> = (0..300)
        .map(|i| json!({"prompt": format!("slow item {i}"), "mock": {"latency_ms": 20}}))
        .collect();
    let (status, accepted) = submit_batch(&app, json!({"items": items})).await;
    assert_eq!(status, 202);
    let batch_id = accepted["batch_id"].as_str().unwrap().to_owned();
    let worker = start_worker(&app.db, &["--concurrency", "4"]);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let single = app
        .submit_ok(json!({"prompt": "I am in a hurry", "mock": {"latency_ms": 20}}))
        .await;
    let done = app.wait_final(single, Duration::from_secs(20)).await;
    assert_eq!(done["status"], "completed");
    let view = batch_status(&app, &batch_id).await;
    assert_eq!(
        view["done"], false,
        "the single request finished while the batch still ran: {}",
        view["counts"]
    );
    assert!(
        view["counts"]["pending"].as_u64().unwrap() > 100,
        "{}",
        view["counts"]
    );
    worker.stop().await;
}

#[tokio::test]
async fn one_invalid_item_rejects_the_batch_naming_every_bad_item() {
    let app = spawn_app().await;
    let items = json!([
        {"prompt": "fine"},
        {"prompt": ""},
        {"prompt": "fine too"},
        {"prompt": "x", "model": "no-such-model"},
        {"nonsense": true},
    ]);
    let (status, body) = submit_batch(&app, json!({"items": items})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "validation_failed");
    let bad: Vec<u64> = body["error"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["index"].as_u64().unwrap())
        .collect();
    assert_eq!(bad, vec![1, 3, 4]);
    assert_eq!(body["error"]["items"][0]["field"], "prompt");
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM generation_requests")
            .await,
        0
    );
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM generation_batches")
            .await,
        0
    );
    assert_eq!(app.db.count("SELECT COUNT(*) FROM apalis.jobs").await, 0);

    let (status, _) = submit_batch(&app, json!({"items": []})).await;
    assert_eq!(status, 422);
    let too_many: Vec<Value> = (0..1001).map(|_| json!({"prompt": "x"})).collect();
    let (status, _) = submit_batch(&app, json!({"items": too_many})).await;
    assert_eq!(status, 422);

    let (_, ok) = submit_batch(&app, json!({"items": [{"prompt": "mine"}]})).await;
    let id = ok["batch_id"].as_str().unwrap();
    let other = app
        .http
        .get(app.url(&format!("/api/v1/generate/batch/{id}")))
        .bearer_auth(app.token_for(Uuid::now_v7()))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
}

#[tokio::test]
async fn requests_is_another_name_for_items_and_exactly_one_of_them_is_given() {
    let app = spawn_app().await;
    let (status, accepted) = submit_batch(
        &app,
        json!({"requests": [{"prompt": "a goblin's name"}, {"prompt": "a dwarf's name"}]}),
    )
    .await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["request_ids"].as_array().unwrap().len(), 2);

    let both = json!({"items": [{"prompt": "x"}], "requests": [{"prompt": "y"}]});
    let (status, body) = submit_batch(&app, both).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "validation_failed");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not both"),
        "{body}"
    );
    let (status, body) = submit_batch(&app, json!({"metadata": {"campaign": "x"}})).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("requests"),
        "{body}"
    );
    // The synonym is held to the same bounds and per-item checks as `items`.
    let too_many: Vec<Value> = (0..1001).map(|_| json!({"prompt": "x"})).collect();
    let (status, _) = submit_batch(&app, json!({"requests": too_many})).await;
    assert_eq!(status, 422);
    let (status, body) =
        submit_batch(&app, json!({"requests": [{"prompt": "x"}, {"prompt": ""}]})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["items"][0]["index"], 1);
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM generation_batches")
            .await,
        1
    );
}
