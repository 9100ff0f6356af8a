//! One conformance suite run against every provider (OpenAI, Anthropic, Ollama), each behind
//! a fake upstream speaking its real wire format, plus fallback, rejection and validation
//! scenarios. Requests run through the real worker code against the real database.

use std::time::{Duration, Instant};

use llm_shared::generation::GenerationParams;
use llm_shared::models::ProviderKind;
use llm_tests::fake_upstream::{self, FakeUpstream, Reply};
use llm_tests::{TestApp, registry, spawn_app, spawn_app_with_providers, worker_config};
use llm_worker::WorkerState;
use llm_worker::job;
use llm_worker::providers::{
    GenerationInput, MockProvider, Provider, ProviderClient, ProviderError, collect_stream,
};
use serde_json::{Value, json};
use uuid::Uuid;

const OPENAI_KEY: &str = "sk-test-openai-0123456789";
const ANTHROPIC_KEY: &str = "sk-ant-test-0123456789";

#[derive(Clone, Copy)]
struct Kind {
    provider: ProviderKind,
    model: &'static str,
    upstream: &'static str,
    path_prefix: &'static str,
    success: fn(&str, u32, u32) -> Reply,
    stream: fn(&[&str], u32, u32, bool) -> Reply,
    error: fn(u16, &str, Option<&str>) -> Reply,
}

const OPENAI: Kind = Kind {
    provider: ProviderKind::OpenAi,
    model: "gpt-4o",
    upstream: "gpt-4o",
    path_prefix: "/v1",
    success: fake_upstream::openai::success,
    stream: fake_upstream::openai::stream,
    error: fake_upstream::openai::error,
};
const ANTHROPIC: Kind = Kind {
    provider: ProviderKind::Anthropic,
    model: "claude-sonnet",
    upstream: "claude-sonnet-4-5",
    path_prefix: "",
    success: fake_upstream::anthropic::success,
    stream: fake_upstream::anthropic::stream,
    error: fake_upstream::anthropic::error,
};
const OLLAMA: Kind = Kind {
    provider: ProviderKind::Ollama,
    model: "llama3.1",
    upstream: "llama3.1:8b",
    path_prefix: "",
    success: fake_upstream::ollama::success,
    stream: fake_upstream::ollama::stream,
    error: fake_upstream::ollama::error,
};

fn flags(kind: Kind, base: &str) -> Vec<String> {
    let v: Vec<&str> = match kind.provider {
        ProviderKind::OpenAi => vec!["--openai-base-url", base, "--openai-api-key", OPENAI_KEY],
        ProviderKind::Anthropic => vec![
            "--anthropic-base-url",
            base,
            "--anthropic-api-key",
            ANTHROPIC_KEY,
        ],
        ProviderKind::Ollama => vec!["--ollama-url", base],
        ProviderKind::Mock => vec![],
    };
    v.into_iter().map(str::to_owned).collect()
}

fn client(kind: Kind, fake: &FakeUpstream) -> ProviderClient {
    let f = flags(kind, &fake.base_url);
    let args: Vec<&str> = f.iter().map(String::as_str).collect();
    ProviderClient::new(kind.provider, &registry(&args), &MockProvider::default()).unwrap()
}

fn input(kind: Kind) -> GenerationInput {
    GenerationInput {
        prompt: "Describe a gnome artificer.".into(),
        params: GenerationParams {
            max_tokens: Some(64),
            temperature: Some(0.5),
            ..Default::default()
        },
        upstream_model: kind.upstream.into(),
        attempt: 1,
        mock: None,
    }
}

/// A worker's state configured with the given provider flags (and worker flags).
fn state(app: &TestApp, provider_flags: &[String], worker_flags: &[&str]) -> WorkerState {
    let mut args: Vec<&str> = provider_flags.iter().map(String::as_str).collect();
    args.extend_from_slice(worker_flags);
    let config = worker_config(&app.db.url, &args);
    let models = llm_tests::worker_models(&config);
    WorkerState::new(
        app.db.pool.clone(),
        "conformance".into(),
        &config,
        models,
        None,
        None,
        None,
    )
}

/// Submits a request for `model` directly into the database and runs one delivery of its job.
async fn run(app: &TestApp, state: &WorkerState, body: Value) -> Value {
    let id: Uuid = app.submit_ok(body).await;
    job::process(state, id).await.unwrap();
    let (_, view) = app.poll(id, 0).await;
    view
}

fn outcomes(view: &Value) -> Vec<(String, Option<i64>)> {
    view["attempt_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["outcome"].as_str().unwrap().to_owned(),
                a["http_status"].as_i64(),
            )
        })
        .collect()
}

async fn success(kind: Kind) {
    let fake = FakeUpstream::start(kind.path_prefix).await;
    fake.then((kind.success)("A tinkering gnome.", 21, 5));
    let out = client(kind, &fake).generate(&input(kind)).await.unwrap();
    assert_eq!(out.text, "A tinkering gnome.");
    assert_eq!((out.prompt_tokens, out.completion_tokens), (21, 5));
    assert_eq!(out.finish_reason, "stop");

    let sent = fake.received();
    assert_eq!(sent.len(), 1);
    let request = &sent[0];
    match kind.provider {
        ProviderKind::OpenAi => {
            assert_eq!(request.path, "/v1/chat/completions");
            assert_eq!(
                request.headers["authorization"],
                format!("Bearer {OPENAI_KEY}")
            );
            assert_eq!(
                request.body["messages"][0]["content"],
                "Describe a gnome artificer."
            );
            assert_eq!(request.body["max_tokens"], 64);
            assert_eq!(request.body["stream"], false);
        }
        ProviderKind::Anthropic => {
            assert_eq!(request.path, "/v1/messages");
            assert_eq!(request.headers["x-api-key"], ANTHROPIC_KEY);
            assert_eq!(request.headers["anthropic-version"], "2023-06-01");
            assert_eq!(request.body["messages"][0]["role"], "user");
            assert_eq!(request.body["max_tokens"], 64);
        }
        ProviderKind::Ollama => {
            assert_eq!(request.path, "/api/chat");
            assert_eq!(request.body["options"]["num_predict"], 64);
            assert_eq!(request.body["stream"], false);
        }
        ProviderKind::Mock => unreachable!(),
    }
    assert_eq!(request.body["model"], kind.upstream);

    // And through the worker: the request completes with the provider's answer and usage.
    let app = spawn_app_with_providers(&flags(kind, &fake.base_url)).await;
    fake.then((kind.success)("A tinkering gnome.", 21, 5));
    let state = state(&app, &flags(kind, &fake.base_url), &[]);
    let view = run(
        &app,
        &state,
        json!({"prompt": "Describe a gnome artificer.", "model": kind.model}),
    )
    .await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["result"], "A tinkering gnome.");
    assert_eq!(view["provider"], kind.provider.as_str());
    assert_eq!(
        (
            view["prompt_tokens"].as_i64(),
            view["completion_tokens"].as_i64()
        ),
        (Some(21), Some(5))
    );
}

async fn streaming_success(kind: Kind) {
    let fake = FakeUpstream::start(kind.path_prefix).await;
    fake.then((kind.stream)(&["A ", "tinkering ", "gnome."], 21, 3, true));
    let stream = client(kind, &fake).stream(&input(kind)).await.unwrap();
    let out = collect_stream(
        stream,
        kind.upstream,
        "p",
        Duration::from_secs(5),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(out.text, "A tinkering gnome.");
    assert_eq!((out.prompt_tokens, out.completion_tokens), (21, 3));
    assert_eq!(out.finish_reason, "stop");
    let sent = fake.received();
    assert_eq!(sent[0].body["stream"], true);
    if kind.provider == ProviderKind::OpenAi {
        assert_eq!(sent[0].body["stream_options"]["include_usage"], true);
    }
}

async fn stream_cut_midway(kind: Kind) {
    let fake = FakeUpstream::start(kind.path_prefix).await;
    fake.then((kind.stream)(&["A ", "tinkering "], 21, 3, false));
    let stream = client(kind, &fake).stream(&input(kind)).await.unwrap();
    let err = collect_stream(
        stream,
        kind.upstream,
        "p",
        Duration::from_secs(5),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(
        err.is_retryable(),
        "a cut stream is a retryable failure, never a success: {err:?}"
    );
}

async fn rate_limited_then_success(kind: Kind) {
    let fake = FakeUpstream::start(kind.path_prefix).await;
    let app = spawn_app_with_providers(&flags(kind, &fake.base_url)).await;
    fake.then((kind.error)(429, "Rate limit reached", Some("1")))
        .then((kind.success)("Second time lucky.", 10, 4));
    let state = state(&app, &flags(kind, &fake.base_url), &[]);
    let started = Instant::now();
    let view = run(&app, &state, json!({"prompt": "x", "model": kind.model})).await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["result"], "Second time lucky.");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was not honoured"
    );
    assert_eq!(
        outcomes(&view),
        vec![("failed".into(), Some(429)), ("succeeded".into(), None)]
    );
    assert_eq!(view["attempt_history"][0]["error_kind"], "transient");
}

async fn server_error_then_success(kind: Kind) {
    let fake = FakeUpstream::start(kind.path_prefix).await;
    let app = spawn_app_with_providers(&flags(kind, &fake.base_url)).await;
    fake.then((kind.error)(500, "Internal error", None))
        .then((kind.success)("Recovered.", 10, 2));
    let state = state(&app, &flags(kind, &fake.base_url), &[]);
    let view = run(&app, &state, json!({"prompt": "x", "model": kind.model})).await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(
        outcomes(&view),
        vec![("failed".into(), Some(500)), ("succeeded".into(), None)]
    );
    assert_eq!(fake.received().len(), 2);
}

async fn timeout_then_success(kind: Kind) {
    let fake = FakeUpstream::start(kind.path_prefix).await;
    let app = spawn_app_with_providers(&flags(kind, &fake.base_url)).await;
    fake.then(Reply::Delayed(
        Duration::from_secs(5),
        Box::new((kind.success)("too late", 1, 1)),
    ))
    .then((kind.success)("On time.", 10, 2));
    let state = state(
        &app,
        &flags(kind, &fake.base_url),
        &["--provider-timeout-secs", "1"],
    );
    let view = run(&app, &state, json!({"prompt": "x", "model": kind.model})).await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["result"], "On time.");
    assert_eq!(view["attempt_history"][0]["error_kind"], "timeout");
    let latency = view["attempt_history"][0]["latency_ms"].as_i64().unwrap();
    assert!(
        (1000..2500).contains(&latency),
        "cut at the 1 s limit, took {latency} ms"
    );
}

async fn malformed_json_then_success(kind: Kind) {
    let fake = FakeUpstream::start(kind.path_prefix).await;
    let app = spawn_app_with_providers(&flags(kind, &fake.base_url)).await;
    fake.then(Reply::Raw {
        status: 200,
        content_type: "application/json",
        body: "{\"choices\": [{\"mess".into(),
    })
    .then((kind.success)("Well-formed.", 10, 2));
    let state = state(&app, &flags(kind, &fake.base_url), &[]);
    let view = run(&app, &state, json!({"prompt": "x", "model": kind.model})).await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["result"], "Well-formed.");
    let first = &view["attempt_history"][0];
    assert_eq!(first["error_kind"], "transient");
    assert!(
        first["error_message"]
            .as_str()
            .unwrap()
            .contains("malformed"),
        "{first}"
    );
}

async fn unauthorized_is_not_retried(kind: Kind) {
    let fake = FakeUpstream::start(kind.path_prefix).await;
    let app = spawn_app_with_providers(&flags(kind, &fake.base_url)).await;
    // Providers echo (parts of) the key in 401 bodies: it must not reach our records.
    let key = match kind.provider {
        ProviderKind::OpenAi => OPENAI_KEY,
        ProviderKind::Anthropic => ANTHROPIC_KEY,
        _ => "no key",
    };
    let echoed = format!("Incorrect API key provided: {key}");
    fake.always((kind.error)(401, &echoed, None));
    let state = state(&app, &flags(kind, &fake.base_url), &[]);
    let view = run(&app, &state, json!({"prompt": "x", "model": kind.model})).await;
    assert_eq!(view["status"], "failed", "{view}");
    assert_eq!(fake.received().len(), 1, "a 401 is not retried");
    assert_eq!(outcomes(&view), vec![("failed".into(), Some(401))]);
    assert_eq!(
        view["attempt_history"][0]["error_kind"],
        "provider_unavailable"
    );
    let text = view.to_string();
    assert!(
        !text.contains(OPENAI_KEY) && !text.contains(ANTHROPIC_KEY),
        "a key leaked: {text}"
    );
}

macro_rules! conformance {
    ($($module:ident => $kind:expr),* $(,)?) => {$(
        mod $module {
            use super::*;
            #[tokio::test] async fn success() { super::success($kind).await }
            #[tokio::test] async fn streaming_success() { super::streaming_success($kind).await }
            #[tokio::test] async fn stream_cut_midway() { super::stream_cut_midway($kind).await }
            #[tokio::test] async fn rate_limited_then_success() { super::rate_limited_then_success($kind).await }
            #[tokio::test] async fn server_error_then_success() { super::server_error_then_success($kind).await }
            #[tokio::test] async fn timeout_then_success() { super::timeout_then_success($kind).await }
            #[tokio::test] async fn malformed_json_then_success() { super::malformed_json_then_success($kind).await }
            #[tokio::test] async fn unauthorized_is_not_retried() { super::unauthorized_is_not_retried($kind).await }
        }
    )*};
}

conformance! {
    openai => OPENAI,
    anthropic => ANTHROPIC,
    ollama => OLLAMA,
}

// ---- fallback, rejection, validation ---------------------------------------------------------

struct TwoProviders {
    app: TestApp,
    openai: FakeUpstream,
    anthropic: FakeUpstream,
    state: WorkerState,
}

async fn two_providers() -> TwoProviders {
    let openai = FakeUpstream::start("/v1").await;
    let anthropic = FakeUpstream::start("").await;
    let mut f = flags(OPENAI, &openai.base_url);
    f.extend(flags(ANTHROPIC, &anthropic.base_url));
    let app = spawn_app_with_providers(&f).await;
    let state = state(&app, &f, &[]);
    TwoProviders {
        app,
        openai,
        anthropic,
        state,
    }
}

#[tokio::test]
async fn a_failing_primary_falls_back_to_the_next_model() {
    let t = two_providers().await;
    t.openai.always(fake_upstream::openai::error(
        503,
        "Service Unavailable",
        None,
    ));
    t.anthropic.then(fake_upstream::anthropic::success(
        "From the fallback.",
        12,
        4,
    ));
    let view = run(&t.app, &t.state, json!({"prompt": "x", "model": "gpt-4o"})).await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["result"], "From the fallback.");
    assert_eq!(view["model"], "gpt-4o");
    assert_eq!(view["provider"], "anthropic");
    assert_eq!(view["provider_model"], "claude-sonnet-4-5-20250929");
    let history = view["attempt_history"].as_array().unwrap();
    let summary: Vec<(&str, &str)> = history
        .iter()
        .map(|a| {
            (
                a["provider"].as_str().unwrap(),
                a["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("openai", "failed"),
            ("openai", "failed"),
            ("openai", "failed"),
            ("anthropic", "succeeded")
        ]
    );
    assert!(history[..3].iter().all(|a| a["http_status"] == 503));
}

#[tokio::test]
async fn a_bad_request_is_neither_retried_nor_passed_down_the_chain() {
    let t = two_providers().await;
    t.openai.always(fake_upstream::openai::error(
        400,
        "Invalid 'temperature'",
        None,
    ));
    t.anthropic
        .always(fake_upstream::anthropic::success("never", 1, 1));
    let view = run(&t.app, &t.state, json!({"prompt": "x", "model": "gpt-4o"})).await;
    assert_eq!(view["status"], "failed", "{view}");
    assert_eq!(view["error_code"], "rejected");
    assert!(
        view["error_message"]
            .as_str()
            .unwrap()
            .contains("Invalid 'temperature'")
    );
    assert_eq!(t.openai.received().len(), 1);
    assert_eq!(t.anthropic.received().len(), 0);
}

#[tokio::test]
async fn an_exhausted_chain_fails_with_a_clear_error() {
    let t = two_providers().await;
    t.openai.always(fake_upstream::openai::error(
        503,
        "Service Unavailable",
        None,
    ));
    t.anthropic
        .always(fake_upstream::anthropic::error(529, "Overloaded", None));
    let view = run(&t.app, &t.state, json!({"prompt": "x", "model": "gpt-4o"})).await;
    assert_eq!(view["status"], "failed", "{view}");
    assert_eq!(view["error_code"], "fallback_exhausted");
    let message = view["error_message"].as_str().unwrap();
    for part in [
        "gpt-4o: HTTP 503",
        "claude-sonnet: HTTP 529",
        "llama3.1: unavailable (OLLAMA_URL is not set)",
    ] {
        assert!(message.contains(part), "missing `{part}` in: {message}");
    }
    assert_eq!(view["attempt_history"].as_array().unwrap().len(), 6);
}

#[tokio::test]
async fn output_that_is_not_the_json_asked_for_is_a_failed_attempt() {
    let t = two_providers().await;
    t.openai.always(fake_upstream::openai::success(
        "Sure! Here is your character: Vex.",
        10,
        8,
    ));
    t.anthropic.then(fake_upstream::anthropic::success(
        "```json\n{\"name\": \"Vex\", \"level\": 3}\n```",
        10,
        8,
    ));
    let schema = json!({"type": "object", "required": ["name", "level"],
                        "properties": {"name": {"type": "string"}, "level": {"type": "integer"}}});
    let body = json!({"prompt": "x", "model": "gpt-4o",
                      "parameters": {"response_format": {"type": "json_schema", "schema": schema}}});
    let view = run(&t.app, &t.state, body).await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["provider"], "anthropic");
    let parsed: Value = serde_json::from_str(view["result"].as_str().unwrap()).unwrap();
    assert_eq!(parsed, json!({"name": "Vex", "level": 3}));
    let first = &view["attempt_history"][0];
    assert_eq!(first["error_kind"], "invalid_output");
    // OpenAI was asked for JSON in its own format.
    assert_eq!(
        t.openai.received()[0].body["response_format"]["type"],
        "json_schema"
    );
}

#[tokio::test]
async fn a_schemas_name_and_strict_reach_openai_and_a_name_openai_would_refuse_is_a_422() {
    let t = two_providers().await;
    t.openai.then(fake_upstream::openai::success(
        r#"{"name": "Vex", "level": 3}"#,
        10,
        8,
    ));
    let schema = json!({"type": "object", "required": ["name", "level"],
                        "properties": {"name": {"type": "string"}, "level": {"type": "integer"}},
                        "additionalProperties": false});
    let format =
        json!({"type": "json_schema", "schema": schema, "name": "npc_sheet", "strict": true});
    let body = json!({"prompt": "x", "model": "gpt-4o", "parameters": {"response_format": format}});
    let view = run(&t.app, &t.state, body).await;
    assert_eq!(view["status"], "completed", "{view}");
    let sent = &t.openai.received()[0].body["response_format"];
    assert_eq!(
        sent,
        &json!({"type": "json_schema",
                "json_schema": {"name": "npc_sheet", "schema": schema, "strict": true}})
    );

    for name in ["", "a name with spaces", &"n".repeat(65), "npc/../sheet"] {
        let format = json!({"type": "json_schema", "schema": {"type": "object"}, "name": name});
        let (status, body) = t
            .app
            .call(
                reqwest::Method::POST,
                "/api/v1/generate",
                &t.app.token(),
                Some(json!({"prompt": "x", "model": "gpt-4o",
                            "parameters": {"response_format": format}})),
            )
            .await;
        assert_eq!(status, 422, "{name}: {body}");
        assert_eq!(
            body["error"]["field"], "parameters.response_format.name",
            "{body}"
        );
    }
}

#[tokio::test]
async fn a_long_retry_after_reschedules_instead_of_holding_the_worker() {
    let t = two_providers().await;
    t.openai
        .then(fake_upstream::openai::error(429, "Slow down", Some("60")));
    let started = Instant::now();
    let view = run(&t.app, &t.state, json!({"prompt": "x", "model": "gpt-4o"})).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the worker waited instead of rescheduling"
    );
    assert_eq!(view["status"], "pending", "{view}");
    assert_eq!(view["error_code"], "transient");
    let run_in: f64 = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM (run_at - NOW()))::float8 FROM apalis.jobs j
         JOIN generation_requests r ON r.job_id = j.id",
    )
    .fetch_one(&t.app.db.pool)
    .await
    .unwrap();
    assert!(
        (50.0..=61.0).contains(&run_in),
        "job should run again in ~60 s, runs in {run_in}"
    );
}

#[tokio::test]
async fn an_anthropic_error_event_mid_stream_is_retryable() {
    let fake = FakeUpstream::start("").await;
    fake.then(fake_upstream::anthropic::stream_error(&["Half an ans"]));
    let stream = client(ANTHROPIC, &fake)
        .stream(&input(ANTHROPIC))
        .await
        .unwrap();
    let err = collect_stream(
        stream,
        "m",
        "p",
        Duration::from_secs(5),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ProviderError::Transient { .. }), "{err:?}");
    assert!(err.to_string().contains("overloaded_error"));
}

#[tokio::test]
async fn a_stalled_stream_times_out_on_first_token_and_idle_gaps() {
    let fake = FakeUpstream::start("/v1").await;
    fake.then(Reply::Delayed(
        Duration::from_secs(3),
        Box::new(fake_upstream::openai::stream(&["late"], 1, 1, true)),
    ));
    let started = Instant::now();
    let err = async {
        let stream = client(OPENAI, &fake).stream(&input(OPENAI)).await?;
        collect_stream(
            stream,
            "m",
            "p",
            Duration::from_millis(500),
            Duration::from_millis(500),
        )
        .await
    };
    let err = tokio::time::timeout(Duration::from_millis(800), err).await;
    // Either the headers never came within the window, or the first token did not.
    assert!(err.is_err() || err.unwrap().is_err());
    assert!(started.elapsed() < Duration::from_secs(2));

    let Reply::Stream { pieces, .. } = fake_upstream::openai::stream(&["a", "b"], 1, 1, true)
    else {
        unreachable!()
    };
    fake.then(Reply::Stream {
        content_type: "text/event-stream",
        pieces,
        gap: Duration::from_secs(2),
        cut: false,
    });
    let stream = client(OPENAI, &fake).stream(&input(OPENAI)).await.unwrap();
    let err = collect_stream(
        stream,
        "m",
        "p",
        Duration::from_secs(5),
        Duration::from_millis(300),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ProviderError::Timeout(_)), "{err:?}");
}

#[tokio::test]
async fn models_without_credentials_are_unavailable_with_the_reason() {
    let models = registry(&[]);
    let gpt = models.get("gpt-4o").unwrap();
    assert_eq!(
        models.unavailable_reason(gpt),
        Some("OPENAI_API_KEY is not set")
    );
    let llama = models.get("llama3.1").unwrap();
    assert_eq!(
        models.unavailable_reason(llama),
        Some("OLLAMA_URL is not set")
    );
    assert_eq!(models.unavailable_reason(models.get("mock").unwrap()), None);
    assert_eq!(
        models.default_model(),
        "mock",
        "no keys: the mock model is the default"
    );

    let configured = registry(&["--anthropic-api-key", ANTHROPIC_KEY]);
    assert_eq!(
        configured.unavailable_reason(configured.get("claude-haiku").unwrap()),
        None
    );
    assert_eq!(configured.default_model(), "claude-sonnet");
}

#[tokio::test]
async fn submits_for_models_with_no_usable_provider_are_refused() {
    let app = spawn_app().await;
    let (status, body) = app
        .submit(json!({"prompt": "x", "model": "llama3.1"}))
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("OLLAMA_URL is not set"),
        "{body}"
    );
    let (status, body) = app
        .submit(json!({"prompt": "x", "model": "mock",
                       "parameters": {"response_format": {"type": "json_schema", "schema": {"$ref": "#/a"}}}}))
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "parameters.response_format.schema");
}

#[tokio::test]
async fn an_open_circuit_skips_the_failing_provider_until_its_cooldown() {
    let t = two_providers().await; // circuit: 5 consecutive failures open it for 30 s
    t.openai.always(fake_upstream::openai::error(
        503,
        "Service Unavailable",
        None,
    ));
    t.anthropic
        .always(fake_upstream::anthropic::success("Steady.", 5, 1));
    for n in 0..2 {
        let view = run(
            &t.app,
            &t.state,
            json!({"prompt": format!("x{n}"), "model": "gpt-4o"}),
        )
        .await;
        assert_eq!(view["status"], "completed", "{view}");
    }
    assert_eq!(
        t.openai.received().len(),
        5,
        "the fifth failure opened the circuit"
    );
    let view = run(&t.app, &t.state, json!({"prompt": "x2", "model": "gpt-4o"})).await;
    assert_eq!(view["status"], "completed");
    assert_eq!(
        t.openai.received().len(),
        5,
        "an open circuit is not called"
    );
    let history = view["attempt_history"].as_array().unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["provider"], "anthropic");
    assert_eq!(
        t.state.executor.circuits.state(ProviderKind::OpenAi),
        llm_worker::circuit::CircuitState::Open
    );
}
