//! Completion notices: a request stored with `requests::Notice::Outcome` (every submit) is
//! announced with its outcome, and whoever waits for it holding its input (a door's call, a
//! long poll after its first read) answers from the notice instead of reading the row again;
//! a submit answered `202` (`Notice::OutcomeAndAttempts`) is announced with its attempt
//! history too, which its long poll answers with; what does not fit in a notice is read.

use std::time::Duration;

use llm_shared::cache::CacheScope;
use llm_shared::notices;
use llm_shared::requests::{
    self, AttemptView, GenerateBody, Insert, NewRequest, Notice, RequestInput, RequestView,
};
use llm_tests::prom::value;
use llm_tests::{TestApp, registry, spawn_app, start_worker};
use serde_json::{Value, json};
use sqlx::postgres::PgListener;
use uuid::Uuid;

fn new_request(user: Uuid, prompt: &str) -> NewRequest {
    let body: GenerateBody = serde_json::from_value(json!({"prompt": prompt})).unwrap();
    NewRequest::validate(body, user, None, &registry(&[]), 5, CacheScope::User).unwrap()
}

/// The next notice of a request's end: its id, and the outcome it carried (if any).
async fn next_notice(listener: &mut PgListener) -> (Uuid, Option<String>) {
    let notification = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("a completion notice")
        .unwrap();
    let payload = notification.payload();
    match payload.split_once(' ') {
        Some((id, outcome)) => (id.parse().unwrap(), Some(outcome.to_owned())),
        None => (payload.parse().unwrap(), None),
    }
}

async fn waits_answered(app: &TestApp, from: &str) -> Option<f64> {
    let text = app.metrics_text().await;
    value(&text, "llm_waits_answered_total", &[("from", from)])
}

/// The trigger writes the row as a read gives it (but the caller's input), for rows stored
/// with `Notice::Outcome` only, and only what fits in a notice.
#[tokio::test]
async fn a_request_stored_for_its_outcome_is_announced_with_it() {
    let app = spawn_app().await;
    let mut listener = PgListener::connect_with(&app.db.pool).await.unwrap();
    listener.listen(notices::CHANNEL).await.unwrap();
    let mut conn = app.db.pool.acquire().await.unwrap();
    let long = "a long answer ".repeat(600);
    for (prompt, notice, result, told) in [
        ("told", Notice::Outcome, "short", true),
        ("untold", Notice::Id, "short", false),
        ("too long to tell", Notice::Outcome, long.as_str(), false),
    ] {
        let new = new_request(app.user, prompt);
        requests::insert_many(&mut conn, &[(&new, &Insert::Queued)], notice)
            .await
            .unwrap();
        sqlx::query(
            "UPDATE generation_requests
             SET status = 'completed', result = $2, provider = 'mock', prompt_tokens = 2,
                 completion_tokens = 5, tokens_used = 7, finish_reason = 'stop', cost_usd = 0.25,
                 attempts = 1, started_at = NOW(), completed_at = NOW(), updated_at = NOW()
             WHERE id = $1",
        )
        .bind(new.id)
        .bind(result)
        .execute(&mut *conn)
        .await
        .unwrap();

        let (id, outcome) = next_notice(&mut listener).await;
        assert_eq!(id, new.id, "{prompt}");
        assert_eq!(outcome.is_some(), told, "{prompt}");
        let Some(outcome) = outcome else { continue };
        let told = RequestView::of_notice(id, RequestInput::of(&new), &outcome).unwrap();
        let read = requests::find_for_user(&app.db.pool, id, app.user)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            serde_json::to_value(&told).unwrap(),
            serde_json::to_value(&read).unwrap(),
            "the notice tells the row as it is read"
        );
    }
}

/// A request stored with `Notice::OutcomeAndAttempts` is announced with its attempt history as
/// a read gives it, in order; a history that would not fit is left out (the outcome is still
/// told), and a door's call (`Notice::Outcome`) carries none.
#[tokio::test]
async fn a_polled_request_is_announced_with_its_attempt_history() {
    let app = spawn_app().await;
    let mut listener = PgListener::connect_with(&app.db.pool).await.unwrap();
    listener.listen(notices::CHANNEL).await.unwrap();
    let mut conn = app.db.pool.acquire().await.unwrap();
    let long = "the upstream refused at length ".repeat(250);
    for (prompt, notice, refusal, told) in [
        ("polled", Notice::OutcomeAndAttempts, "slow down", true),
        (
            "too much history",
            Notice::OutcomeAndAttempts,
            long.as_str(),
            false,
        ),
        ("a door's call", Notice::Outcome, "slow down", false),
    ] {
        let new = new_request(app.user, prompt);
        requests::insert_many(&mut conn, &[(&new, &Insert::Queued)], notice)
            .await
            .unwrap();
        // a refused call, then the one that answered
        sqlx::query(
            "INSERT INTO generation_attempts (request_id, attempt, run, worker, provider, model,
                 finished_at, latency_ms, outcome, error_kind, http_status, error_message)
             VALUES ($1, 1, 1, 'w1', 'openai', 'gpt-4o', NOW(), 12, 'failed', 'rate_limited',
                     429, $2),
                    ($1, 2, 1, 'w1', 'mock', 'mock-1', NOW(), 3, 'succeeded', NULL, NULL, NULL)",
        )
        .bind(new.id)
        .bind(refusal)
        .execute(&mut *conn)
        .await
        .unwrap();
        sqlx::query(
            "UPDATE generation_requests
             SET status = 'completed', result = 'short', provider = 'mock', attempts = 1,
                 started_at = NOW(), completed_at = NOW(), updated_at = NOW()
             WHERE id = $1",
        )
        .bind(new.id)
        .execute(&mut *conn)
        .await
        .unwrap();

        let (id, outcome) = next_notice(&mut listener).await;
        assert_eq!(id, new.id, "{prompt}");
        let outcome = outcome.expect("the outcome is told");
        let view = RequestView::of_notice(id, RequestInput::of(&new), &outcome).unwrap();
        let read = requests::find_for_user(&app.db.pool, id, app.user)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            serde_json::to_value(&view).unwrap(),
            serde_json::to_value(&read).unwrap(),
            "{prompt}: the notice tells the row as it is read"
        );
        let history = AttemptView::history_of_notice(&outcome).unwrap();
        assert_eq!(history.is_some(), told, "{prompt}");
        let Some(history) = history else { continue };
        let read = requests::attempts_of(&app.db.pool, id).await.unwrap();
        assert_eq!(read.len(), 2);
        assert_eq!(
            serde_json::to_value(&history).unwrap(),
            serde_json::to_value(&read).unwrap(),
            "the notice tells the history as it is read"
        );
    }
}

/// A `/v1` call without a stream is answered from its completion notice: no read of its row
/// after the submit, whichever door it came through, and the answer is the row's.
#[tokio::test]
async fn a_waited_call_is_answered_from_its_completion_notice() {
    let (app, worker) = llm_tests::app_with_worker(&[]).await;
    let token = app.token();
    let calls = [
        (
            "/v1/chat/completions",
            json!({"model": "mock", "max_tokens": 9,
                   "messages": [{"role": "user", "content": "Name a dwarf."}]}),
        ),
        (
            "/v1/messages",
            json!({"model": "mock", "max_tokens": 9,
                   "messages": [{"role": "user", "content": "Name an elf."}]}),
        ),
        (
            "/v1/responses",
            json!({"model": "mock", "input": "Name a gnome.", "max_output_tokens": 9,
                   "metadata": {"table": "7"}}),
        ),
    ];
    for (path, body) in &calls {
        let response = app
            .http
            .post(app.url(path))
            .bearer_auth(&token)
            .header("anthropic-version", "2023-06-01")
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let id: Uuid = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let answer: Value = response.json().await.unwrap();
        let (_, row) = app.poll(id, 0).await;
        assert_eq!(row["status"], "completed", "{path}");
        let text = row["result"].as_str().unwrap();
        match *path {
            "/v1/chat/completions" => {
                assert_eq!(answer["choices"][0]["message"]["content"], text);
                assert_eq!(answer["usage"]["prompt_tokens"], row["prompt_tokens"]);
                let created =
                    chrono::DateTime::parse_from_rfc3339(row["created_at"].as_str().unwrap())
                        .unwrap();
                assert_eq!(answer["created"], created.timestamp());
            }
            "/v1/messages" => {
                assert_eq!(answer["content"][0]["text"], text);
                assert_eq!(answer["usage"]["output_tokens"], row["completion_tokens"]);
            }
            _ => {
                assert_eq!(answer["output"][0]["content"][0]["text"], text);
                assert_eq!(answer["status"], "completed");
                assert_eq!(answer["metadata"], json!({"table": "7"}));
            }
        }
    }
    assert_eq!(waits_answered(&app, "notice").await, Some(3.0));
    assert_eq!(waits_answered(&app, "read").await, None, "no row read back");
    worker.stop().await;
}

/// An answer longer than a notice holds is announced by its id alone: the caller reads it.
#[tokio::test]
async fn an_outcome_too_long_for_a_notice_is_read_from_the_row() {
    let (app, worker) = llm_tests::app_with_worker(&[]).await;
    let response = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(app.token())
        .json(&json!({"model": "mock", "max_tokens": 2000,
                      "messages": [{"role": "user", "content": "Tell the whole saga."}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    let content = answer["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content.len() > 8000, "{} bytes", content.len());
    assert_eq!(content.split(' ').count(), 2000);
    assert_eq!(waits_answered(&app, "read").await, Some(1.0));
    assert_eq!(waits_answered(&app, "notice").await, None);
    worker.stop().await;
}

/// A native long poll that found its request unfinished answers from the notice: its first
/// read gave it the input, the notice the outcome and the attempt history.
#[tokio::test]
async fn a_long_poll_is_answered_from_the_notice_after_its_first_read() {
    let app = spawn_app().await;
    let id = app
        .submit_ok(json!({"prompt": "Name a wizard.", "model": "mock"}))
        .await;
    let ((status, polled), worker) = tokio::join!(app.poll(id, 30), async {
        // no worker until the poll waits: it finds the request pending first
        tokio::time::sleep(Duration::from_secs(1)).await;
        start_worker(&app.db, &[])
    });
    assert_eq!(status, 200, "{polled}");
    assert_eq!(polled["status"], "completed");
    assert_eq!(polled["attempt_history"][0]["outcome"], "succeeded");
    let (_, read) = app.poll(id, 0).await;
    assert_eq!(polled, read, "the notice tells the row as it is read");
    assert_eq!(waits_answered(&app, "notice").await, Some(1.0));
    assert_eq!(waits_answered(&app, "read").await, None);
    worker.stop().await;
}
