//! The fast part of the chaos suite (`scripts/chaos.sh` runs the full one): every scenario of
//! `llm_tests::chaos` at small sizes, against the real binaries. Each must lose nothing,
//! complete nothing twice, and meet its own expectations (the table says which failed).

use llm_tests::chaos::{self, Sizes, Tally};

fn assert_passed(t: &Tally) {
    let table = chaos::render_table(std::slice::from_ref(t));
    eprintln!("{table}");
    assert!(t.accepted > 0, "nothing was accepted\n{table}");
    assert!(t.passed(), "{table}");
}

#[tokio::test]
async fn chaos_workers_sigkilled_during_jobs_lose_nothing() {
    assert_passed(&chaos::worker_kills(&Sizes::quick()).await);
}

#[tokio::test]
async fn chaos_api_sigkilled_during_submits_every_202_completes() {
    assert_passed(&chaos::api_kills(&Sizes::quick()).await);
}

#[tokio::test]
async fn chaos_postgres_restart_is_survived_without_restarting_processes() {
    assert_passed(&chaos::postgres_restart(&Sizes::quick()).await);
}

#[tokio::test]
async fn chaos_redis_restart_leaves_submits_alone_and_ends_every_stream() {
    assert_passed(&chaos::redis_restart(&Sizes::quick()).await);
}

#[tokio::test]
async fn chaos_provider_faults_never_end_as_a_truncated_success() {
    assert_passed(&chaos::provider_faults(&Sizes::quick()).await);
}

/// After an outage the Redis connection kept the refused reconnection attempt and failed the
/// first command sent once Redis was back: the first stream after a Redis restart was never
/// relayed live, and a fail-closed rate limiter refused one more request.
#[tokio::test]
async fn chaos_redis_restart_the_first_command_after_it_succeeds() {
    use llm_shared::ratelimit::{Decision, RateLimiter, RateLimits};
    use llm_shared::stream_relay::{RelayKind, StreamRelay};
    use llm_tests::servers::PrivateRedis;
    use std::time::Duration;

    let mut redis = PrivateRedis::start().await;
    let client = redis::Client::open(redis.url()).unwrap();
    let db = llm_tests::TestDb::new().await;
    let relay =
        StreamRelay::new(client.clone(), &db.redis_prefix(), Duration::from_secs(60)).unwrap();
    let limits = RateLimits {
        requests_per_minute: 1000,
        tokens_per_minute: 1_000_000,
    };
    let limiter = RateLimiter::new(client, &db.redis_prefix(), limits, false).unwrap();
    let id = uuid::Uuid::now_v7();
    let user = uuid::Uuid::now_v7();
    let token = RelayKind::Token { text: "a".into() };
    let allowed = |d: &Decision| matches!(d, Decision::Allowed(_));
    assert_eq!(relay.publish(id, &token).await.unwrap(), 1);
    assert!(allowed(&limiter.take(&db.pool, user, 10).await.unwrap()));

    redis.kill().await;
    for _ in 0..2 {
        assert!(relay.publish(id, &token).await.is_err());
        let refused = limiter.take(&db.pool, user, 10).await.unwrap();
        assert!(matches!(refused, Decision::Unavailable), "{refused:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    redis.up().await;

    // The restarted Redis is empty: the seq starts over.
    assert_eq!(relay.publish(id, &token).await.unwrap(), 1);
    let after = limiter.take(&db.pool, user, 10).await.unwrap();
    assert!(allowed(&after), "{after:?}");
}

/// Found by the provider-faults scenario: a run that called no provider because every circuit
/// of its chain was open was rescheduled, yet counted as a run that died with its worker. Its
/// unused attempt row stayed `running` until the next claim marked it `abandoned` /
/// `worker_lost`, and after `max_attempts` such waits the request failed as
/// `attempts_exhausted` ("the workers running it stopped") though no worker ever stopped.
#[tokio::test]
async fn chaos_waiting_for_an_open_circuit_uses_no_attempt() {
    use llm_shared::models::ProviderKind;
    use llm_worker::WorkerState;
    use llm_worker::job;
    use serde_json::json;

    let app = llm_tests::spawn_app().await;
    let config = llm_tests::worker_config(&app.db.url, &[]);
    let state = |name: &str| {
        WorkerState::new(
            app.db.pool.clone(),
            name.into(),
            &config,
            llm_tests::worker_models(&config),
            None,
            None,
            None,
        )
    };
    let blocked = state("circuit-open");
    for _ in 0..5 {
        blocked.executor.circuits.record(ProviderKind::Mock, false);
    }
    let id = app
        .submit_ok(json!({"prompt": "wait for the circuit"}))
        .await;
    for _ in 0..7 {
        job::process(&blocked, id).await.unwrap();
    }
    let (_, view) = app.poll(id, 0).await;
    assert_eq!(view["status"], "pending", "{view}");
    assert_eq!(view["attempts"], 0, "{view}");
    assert_eq!(view["attempt_history"], json!([]), "{view}");

    // Once a worker may call the provider, the request runs on its full budget.
    job::process(&state("circuit-closed"), id).await.unwrap();
    let (_, view) = app.poll(id, 0).await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["attempts"], 1, "{view}");
    let history = view["attempt_history"].as_array().unwrap();
    assert_eq!(history.len(), 1, "{view}");
    assert_eq!(history[0]["outcome"], "succeeded");
}

/// Found by the provider-faults scenario: when the half-open probe of a circuit ended with an
/// answer that says nothing about the provider's availability (here: not the JSON asked for),
/// the probe stayed "in flight" for good, and every later request to that provider waited for
/// a circuit that never closed again in that worker.
#[tokio::test]
async fn chaos_a_probe_answering_invalid_output_lets_the_circuit_close() {
    use llm_shared::models::ProviderKind;
    use llm_worker::WorkerState;
    use llm_worker::job;
    use serde_json::json;

    let app = llm_tests::spawn_app().await;
    let registry = chaos::short_cooldown_registry(&app.db, 0);
    let registry = registry.display().to_string();
    let config = llm_tests::worker_config(&app.db.url, &["--models-file", &registry]);
    let state = WorkerState::new(
        app.db.pool.clone(),
        "prober".into(),
        &config,
        llm_tests::worker_models(&config),
        None,
        None,
        None,
    );
    for _ in 0..5 {
        state.executor.circuits.record(ProviderKind::Mock, false);
    }
    // Cool-down 0: half-open at once; this request's first call is the probe.
    let probe = app
        .submit_ok(
            json!({"prompt": "not json", "mock": {"fail": "invalid_json"},
                          "parameters": {"response_format": {"type": "json_object"}}}),
        )
        .await;
    job::process(&state, probe).await.unwrap();
    let (_, view) = app.poll(probe, 0).await;
    assert_eq!(view["status"], "failed", "{view}");
    assert_eq!(view["error_code"], "invalid_output", "{view}");

    let next = app.submit_ok(json!({"prompt": "after the probe"})).await;
    job::process(&state, next).await.unwrap();
    let (_, view) = app.poll(next, 0).await;
    assert_eq!(view["status"], "completed", "{view}");
    let _ = std::fs::remove_file(&registry);
}
