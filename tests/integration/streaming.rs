//! SSE streaming through the Redis relay: tokens equal the stored result, late attach and
//! `Last-Event-ID` resume, two api processes, a worker killed mid-stream, failures,
//! cancellation, Redis being down, and a stream ending though its completion notice is missed.

use std::time::Duration;

use llm_tests::fake_upstream::{self, FakeUpstream};
use llm_tests::sse::{SseMessage, SseReader, output_of};
use llm_tests::{
    TEST_SECRET, TestApp, signal, spawn_api_process, spawn_app, spawn_app_with,
    spawn_worker_process, start_worker,
};
use serde_json::{Value, json};
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(30);

async fn open_stream(app: &TestApp, body: Value) -> SseReader {
    SseReader::open(
        app.http
            .post(app.url("/api/v1/generate/stream"))
            .bearer_auth(app.token())
            .json(&body),
    )
    .await
}

async fn attach(app: &TestApp, id: Uuid, last_event_id: Option<u64>) -> SseReader {
    let mut request = app
        .http
        .get(app.url(&format!("/api/v1/generate/{id}/stream")))
        .bearer_auth(app.token());
    if let Some(last) = last_event_id {
        request = request.header("Last-Event-ID", last.to_string());
    }
    SseReader::open(request).await
}

fn request_id(start: &SseMessage) -> Uuid {
    assert_eq!(start.event, "start", "{start:?}");
    start.data["request_id"].as_str().unwrap().parse().unwrap()
}

fn token_ids(messages: &[SseMessage]) -> Vec<u64> {
    messages
        .iter()
        .filter(|m| m.event == "token")
        .filter_map(|m| m.id)
        .collect()
}

/// Asserts one terminal `done`, ids increasing, and the streamed output equal to the result.
async fn assert_streamed_result(app: &TestApp, id: Uuid, messages: &[SseMessage]) {
    let terminals: Vec<_> = messages
        .iter()
        .filter(|m| m.event == "done" || m.event == "error")
        .collect();
    assert_eq!(terminals.len(), 1, "{messages:?}");
    assert_eq!(terminals[0].event, "done", "{messages:?}");
    assert_eq!(messages.last().unwrap().event, "done");
    let ids: Vec<u64> = messages.iter().filter_map(|m| m.id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids not increasing: {ids:?}"
    );
    let (_, row) = app.poll(id, 0).await;
    assert_eq!(row["status"], "completed");
    assert_eq!(
        output_of(messages),
        row["result"].as_str().unwrap(),
        "{messages:?}"
    );
}

#[tokio::test]
async fn streamed_tokens_equal_the_stored_result_with_the_mock() {
    let app = spawn_app().await;
    let worker = start_worker(&app.db, &[]);
    let mut stream = open_stream(
        &app,
        json!({"prompt": "A halfling's lucky charm", "parameters": {"max_tokens": 20}}),
    )
    .await;
    assert_eq!(stream.status, 200);
    let messages = stream.until_terminal(LONG).await;
    let id = request_id(&messages[0]);
    assert_eq!(messages[0].data["model"], "mock");
    assert_eq!(token_ids(&messages).len(), 20, "one event per token");
    assert_streamed_result(&app, id, &messages).await;
    let done = messages.last().unwrap();
    assert_eq!(done.data["finish_reason"], "stop");
    assert_eq!(done.data["usage"]["completion_tokens"], 20);
    assert_eq!(done.data["cached"], false);
    worker.stop().await;
}

#[tokio::test]
async fn streamed_tokens_equal_the_stored_result_for_each_provider() {
    let openai = FakeUpstream::start("/v1").await;
    let anthropic = FakeUpstream::start("").await;
    let ollama = FakeUpstream::start("").await;
    openai.always(fake_upstream::openai::stream(
        &["Brave ", "and ", "bold."],
        9,
        3,
        true,
    ));
    anthropic.always(fake_upstream::anthropic::stream(
        &["Quiet ", "but ", "deadly."],
        9,
        3,
        true,
    ));
    ollama.always(fake_upstream::ollama::stream(
        &["Wise ", "old ", "owl."],
        9,
        3,
        true,
    ));
    let flags: Vec<String> = [
        "--openai-base-url",
        &openai.base_url,
        "--openai-api-key",
        "sk-test-0123456789",
        "--anthropic-base-url",
        &anthropic.base_url,
        "--anthropic-api-key",
        "sk-ant-0123456789",
        "--ollama-url",
        &ollama.base_url,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (app, worker) = llm_tests::app_with_worker(&flags).await;
    for (model, expected) in [
        ("gpt-4o", "Brave and bold."),
        ("claude-sonnet", "Quiet but deadly."),
        ("llama3.1", "Wise old owl."),
    ] {
        let mut stream = open_stream(&app, json!({"prompt": "a motto", "model": model})).await;
        assert_eq!(stream.status, 200);
        let messages = stream.until_terminal(LONG).await;
        let id = request_id(&messages[0]);
        assert_eq!(token_ids(&messages).len(), 3, "{model}: {messages:?}");
        assert_eq!(output_of(&messages), expected);
        assert_streamed_result(&app, id, &messages).await;
        assert_eq!(messages.last().unwrap().data["usage"]["prompt_tokens"], 9);
    }
    worker.stop().await;
}

#[tokio::test]
async fn late_attach_and_last_event_id_resume_get_every_token_once() {
    let app = spawn_app().await;
    let worker = start_worker(&app.db, &[]);
    let body = json!({"prompt": "a long tale", "parameters": {"max_tokens": 30}, "mock": {"token_delay_ms": 40}});
    let mut first = open_stream(&app, body).await;
    let start = first.next(LONG).await.unwrap();
    let id = request_id(&start);
    let mut got = Vec::new();
    while got.len() < 5 {
        let m = first.next(LONG).await.unwrap();
        if m.event == "token" {
            got.push(m);
        }
    }
    drop(first); // the client goes away; the generation carries on
    let last = got.last().unwrap().id.unwrap();

    let mut resumed = attach(&app, id, Some(last)).await;
    assert_eq!(resumed.status, 200);
    let rest = resumed.until_terminal(LONG).await;
    let rest_ids = token_ids(&rest);
    assert_eq!(
        rest_ids.first(),
        Some(&(last + 1)),
        "resumes right after Last-Event-ID: {rest:?}"
    );
    let mut all = got.clone();
    all.extend(rest);
    assert_eq!(token_ids(&all).len(), 30, "every token exactly once");
    assert_streamed_result(&app, id, &all).await;

    // Attaching after the end replays everything, then the terminal event.
    let mut late = attach(&app, id, None).await;
    let replay = late.until_terminal(LONG).await;
    assert_eq!(token_ids(&replay).len(), 30);
    assert_streamed_result(&app, id, &replay).await;
    worker.stop().await;
}

#[tokio::test]
async fn a_stream_started_on_one_api_process_resumes_on_another() {
    let app = spawn_app().await; // its database, and an in-process worker
    let worker = start_worker(&app.db, &[]);
    let (_a, base_a) = spawn_api_process(&app.db).await;
    let (_b, base_b) = spawn_api_process(&app.db).await;
    let token = app.jwt.issue(app.user, 600, None).unwrap();
    assert!(TEST_SECRET.len() >= 32);

    let body = json!({"prompt": "across replicas", "parameters": {"max_tokens": 20}, "mock": {"token_delay_ms": 50}});
    let mut on_a = SseReader::open(
        app.http
            .post(format!("{base_a}/api/v1/generate/stream"))
            .bearer_auth(&token)
            .json(&body),
    )
    .await;
    let id = request_id(&on_a.next(LONG).await.unwrap());
    let mut got = Vec::new();
    while got.len() < 4 {
        let m = on_a.next(LONG).await.unwrap();
        if m.event == "token" {
            got.push(m);
        }
    }
    drop(on_a);
    let last = got.last().unwrap().id.unwrap();
    let mut on_b = SseReader::open(
        app.http
            .get(format!("{base_b}/api/v1/generate/{id}/stream"))
            .bearer_auth(&token)
            .header("Last-Event-ID", last.to_string()),
    )
    .await;
    got.extend(on_b.until_terminal(LONG).await);
    assert_eq!(token_ids(&got).len(), 20);
    assert_streamed_result(&app, id, &got).await;
    worker.stop().await;
}

#[tokio::test]
async fn a_worker_killed_mid_stream_restarts_the_output_on_another_worker() {
    let app = spawn_app().await;
    let mut victim = spawn_worker_process(&app.db, &[("WORKER_NAME", "stream-victim")]);
    let body = json!({"prompt": "interrupted saga", "parameters": {"max_tokens": 40}, "mock": {"token_delay_ms": 100}});
    let mut stream = open_stream(&app, body).await;
    let id = request_id(&stream.next(LONG).await.unwrap());
    let mut messages = Vec::new();
    while token_ids(&messages).len() < 5 {
        messages.push(stream.next(LONG).await.unwrap());
    }
    signal(&victim, libc::SIGKILL);
    victim.wait().await.unwrap();
    let _rescuer = spawn_worker_process(&app.db, &[("WORKER_NAME", "stream-rescuer")]);

    messages.extend(stream.until_terminal(Duration::from_secs(60)).await);
    let restarts = messages.iter().filter(|m| m.event == "restart").count();
    assert_eq!(
        restarts, 1,
        "the client is told the output starts over: {messages:?}"
    );
    assert_streamed_result(&app, id, &messages).await;
    let (_, row) = app.poll(id, 0).await;
    let outcomes: Vec<_> = row["attempt_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].clone())
        .collect();
    assert_eq!(outcomes, vec![json!("abandoned"), json!("succeeded")]);
}

#[tokio::test]
async fn a_failing_generation_ends_with_an_error_event() {
    let app = spawn_app().await;
    let worker = start_worker(&app.db, &[]);
    let mut stream = open_stream(
        &app,
        json!({"prompt": "doomed", "mock": {"fail": "permanent"}}),
    )
    .await;
    assert_eq!(stream.status, 200);
    let messages = stream.until_terminal(LONG).await;
    let last = messages.last().unwrap();
    assert_eq!(last.event, "error", "{messages:?}");
    assert_eq!(last.data["code"], "rejected");
    assert_eq!(last.data["message"], "mock permanent failure");
    assert!(messages.iter().all(|m| m.event != "done"));
    worker.stop().await;
}

#[tokio::test]
async fn cancelling_stops_the_generation_and_the_stream_says_so() {
    let app = spawn_app().await;
    let worker = start_worker(&app.db, &[]);
    let body = json!({"prompt": "never finished", "parameters": {"max_tokens": 200}, "mock": {"token_delay_ms": 100}});
    let mut stream = open_stream(&app, body).await;
    let id = request_id(&stream.next(LONG).await.unwrap());
    let mut messages = Vec::new();
    while token_ids(&messages).len() < 3 {
        messages.push(stream.next(LONG).await.unwrap());
    }
    let cancel = app
        .http
        .delete(app.url(&format!("/api/v1/generate/{id}")))
        .bearer_auth(app.token())
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 200);
    assert_eq!(cancel.json::<Value>().await.unwrap()["status"], "cancelled");
    messages.extend(stream.until_terminal(LONG).await);
    let last = messages.last().unwrap();
    assert_eq!(last.event, "error", "{messages:?}");
    assert_eq!(last.data["code"], "cancelled");

    // The worker stopped its provider call: the attempt is closed as cancelled, and nothing
    // completes the request afterwards.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, row) = app.poll(id, 0).await;
        if row["attempt_history"][0]["error_kind"] == "cancelled" {
            assert_eq!(row["status"], "cancelled");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "attempt not closed: {row}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = app
        .http
        .delete(app.url(&format!("/api/v1/generate/{id}")))
        .bearer_auth(app.token())
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    let other = app
        .http
        .delete(app.url(&format!("/api/v1/generate/{id}")))
        .bearer_auth(app.token_for(Uuid::now_v7()))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
    worker.stop().await;
}

#[tokio::test]
async fn a_pending_request_cancelled_before_any_worker_never_runs() {
    let app = spawn_app().await;
    let id = app.submit_ok(json!({"prompt": "cancelled early"})).await;
    let cancel = app
        .http
        .delete(app.url(&format!("/api/v1/generate/{id}")))
        .bearer_auth(app.token())
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 200);
    let worker = start_worker(&app.db, &[]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, row) = app.poll(id, 0).await;
    assert_eq!(row["status"], "cancelled");
    assert_eq!(row["attempts"], 0);
    assert!(row["attempt_history"].as_array().unwrap().is_empty());
    worker.stop().await;
}

#[tokio::test]
async fn attaching_to_a_request_that_was_not_streamed_replays_its_result() {
    let app = spawn_app().await;
    let worker = start_worker(&app.db, &[]);
    let id = app.submit_ok(json!({"prompt": "plain submit"})).await;
    app.wait_final(id, LONG).await;
    let mut stream = attach(&app, id, None).await;
    let messages = stream.until_terminal(LONG).await;
    assert_eq!(
        token_ids(&messages).len(),
        1,
        "the whole result as one token: {messages:?}"
    );
    assert_streamed_result(&app, id, &messages).await;
    worker.stop().await;
}

#[tokio::test]
async fn without_redis_streams_answer_503_and_submits_still_work() {
    let app = spawn_app_with("redis://127.0.0.1:1".into()).await;
    let response = app
        .http
        .post(app.url("/api/v1/generate/stream"))
        .bearer_auth(app.token())
        .json(&json!({"prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "service_unavailable");
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM generation_requests")
            .await,
        0,
        "nothing half-created"
    );

    let id = app.submit_ok(json!({"prompt": "x"})).await;
    let response = app
        .http
        .get(app.url(&format!("/api/v1/generate/{id}/stream")))
        .bearer_auth(app.token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let (status, _) = app.poll(id, 0).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_provider_stream_cut_midway_restarts_the_output_on_the_retry() {
    let openai = FakeUpstream::start("/v1").await;
    openai
        .then(fake_upstream::openai::stream(&["Half ", "a "], 5, 2, false))
        .then(fake_upstream::openai::stream(
            &["A ", "whole ", "answer."],
            5,
            3,
            true,
        ));
    let flags = llm_tests::openai_flags(&openai);
    let (app, worker) = llm_tests::app_with_worker(&flags).await;
    let mut stream = open_stream(&app, json!({"prompt": "x", "model": "gpt-4o"})).await;
    let messages = stream.until_terminal(LONG).await;
    let id = request_id(&messages[0]);
    // Whatever of the cut stream got through comes first (the cut may swallow its last
    // bytes), then one restart, then the retry's three tokens.
    let events: Vec<&str> = messages.iter().map(|m| m.event.as_str()).collect();
    let restart = events
        .iter()
        .position(|e| *e == "restart")
        .expect("a restart event");
    assert!(
        restart >= 2 && events[1..restart].iter().all(|e| *e == "token"),
        "{events:?}"
    );
    assert_eq!(
        events[restart + 1..],
        ["token", "token", "token", "done"],
        "{events:?}"
    );
    assert_eq!(output_of(&messages), "A whole answer.");
    assert_streamed_result(&app, id, &messages).await;
    worker.stop().await;
}

/// A stream ends though its completion notice never comes (its trigger is off here, as for a
/// notice lost between the listener's connections) while live events keep arriving (a worker
/// still relaying a request another one finished): the stream still ends, with the stored
/// result. Its own re-read of the row used to be put off by each live event, and such a stream
/// stayed open as long as the events came; now the notices' sweep makes up the missed notice.
#[tokio::test]
async fn a_stream_hearing_live_events_ends_though_its_completion_notice_is_missed() {
    use llm_shared::stream_relay::{RelayKind, StreamRelay};

    let app = spawn_app().await;
    sqlx::query("ALTER TABLE generation_requests DISABLE TRIGGER generation_finished")
        .execute(&app.db.pool)
        .await
        .unwrap();
    // No worker: the request stays pending until the test finishes it.
    let id = app.submit_ok(json!({"prompt": "x"})).await;
    let mut stream = attach(&app, id, None).await;
    assert_eq!(stream.next(LONG).await.unwrap().event, "start");

    let client = redis::Client::open(llm_tests::redis_url()).unwrap();
    let relay = StreamRelay::new(client, &app.db.redis_prefix(), Duration::from_secs(60)).unwrap();
    let publisher = tokio::spawn(async move {
        loop {
            let token = RelayKind::Token { text: "x".into() };
            let _ = relay.publish(id, &token).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    sqlx::query(
        "UPDATE generation_requests SET status = 'completed', result = 'The answer.', \
         completed_at = NOW() WHERE id = $1",
    )
    .bind(id)
    .execute(&app.db.pool)
    .await
    .unwrap();

    let messages = stream.until_terminal(Duration::from_secs(20)).await;
    publisher.abort();
    assert_eq!(
        messages.last().map(|m| m.event.as_str()),
        Some("done"),
        "{messages:?}"
    );
    assert_eq!(output_of(&messages), "The answer.");
}
