//! Admission control across worker processes: two real `llm-worker` processes share a fake
//! OpenAI's limits (calls at once, requests per minute) through Redis, so that the fake never
//! has to refuse a call; a limit declared too high converges after the provider's 429s; and
//! with Redis unreachable, calls go ahead. The budget itself (tokens, slots of dead workers)
//! is checked on the test Redis directly.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use llm_shared::budget::EndpointLimits;
use llm_shared::metrics::Metrics;
use llm_worker::admission::{Admission, Admit, Class, Endpoint, Ticket};

use llm_tests::fake_upstream::{FakeUpstream, ProviderLimits, openai};
use llm_tests::{TestApp, spawn_app_with_providers, spawn_worker_process};
use serde_json::{Value, json};
use tokio::process::Child;
use uuid::Uuid;

/// The built-in registry with `limits` as OpenAI's declared limits and `retry` / `circuit`
/// lines replacing those sections' bodies, written where the workers read it (`MODELS_FILE`).
fn registry_file(limits: &str, extra: &[(&str, &str)]) -> PathBuf {
    const SECTION: &str = "[endpoints.openai.limits]\n";
    assert!(include_str!("../../config/models.toml").contains(SECTION));
    let mut text = include_str!("../../config/models.toml").replace(
        "[endpoints.openai.limits]\n",
        &format!("[endpoints.openai.limits]\n{limits}\n"),
    );
    for (from, to) in extra {
        assert!(text.contains(from), "{from}");
        text = text.replace(from, to);
    }
    let path = std::env::temp_dir().join(format!("models-admission-{}.toml", Uuid::now_v7()));
    std::fs::write(&path, text).unwrap();
    path
}

/// An app accepting OpenAI models and two worker processes calling `openai` under `registry`.
async fn app_and_two_workers(
    openai: &FakeUpstream,
    registry: &Path,
    env: &[(&str, &str)],
) -> (TestApp, Vec<Child>) {
    app_and_workers(openai, registry, env, 2).await
}

/// An app accepting OpenAI models and `n` worker processes calling `openai` under `registry`.
async fn app_and_workers(
    openai: &FakeUpstream,
    registry: &Path,
    env: &[(&str, &str)],
    n: usize,
) -> (TestApp, Vec<Child>) {
    let app = spawn_app_with_providers(&llm_tests::openai_flags(openai)).await;
    let registry = registry.display().to_string();
    let mut all = vec![
        ("OPENAI_BASE_URL", openai.base_url.as_str()),
        ("OPENAI_API_KEY", "sk-test-0123456789"),
        ("MODELS_FILE", registry.as_str()),
        // Small pools: the tests run in parallel on one PostgreSQL.
        ("DATABASE_MAX_CONNECTIONS", "6"),
    ];
    all.extend_from_slice(env);
    let workers = (0..n)
        .map(|_| spawn_worker_process(&app.db, &all))
        .collect();
    (app, workers)
}

/// Submits `n` requests to `gpt-4o-mini` and waits until every one is final; their bodies.
async fn run_requests(app: &TestApp, n: usize, within: Duration) -> Vec<Value> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            app.submit_ok(json!({"model": "gpt-4o-mini", "prompt": format!("npc {i}"),
                "cache": {"no_cache": true}}))
                .await,
        );
    }
    let mut done = Vec::new();
    for id in ids {
        done.push(app.wait_final(id, within).await);
    }
    done
}

fn statuses(done: &[Value]) -> Vec<String> {
    done.iter()
        .map(|d| {
            format!(
                "{} {}",
                d["status"].as_str().unwrap_or("?"),
                d["error_code"].as_str().unwrap_or("")
            )
        })
        .collect()
}

fn refusal() -> llm_tests::fake_upstream::Reply {
    openai::error(429, "Rate limit reached for requests", Some("1"))
}

#[tokio::test]
async fn two_workers_share_a_concurrency_limit_and_never_draw_a_429() {
    let openai = FakeUpstream::start("/v1").await;
    openai
        .always(llm_tests::fake_upstream::Reply::Delayed(
            Duration::from_millis(300),
            Box::new(openai::success("A gnome tinkerer", 5, 7)),
        ))
        .enforce(
            ProviderLimits {
                max_concurrency: Some(2),
                ..ProviderLimits::default()
            },
            refusal(),
        );
    let registry = registry_file("max_concurrency = 2", &[]);
    let (app, _workers) = app_and_two_workers(&openai, &registry, &[]).await;

    let done = run_requests(&app, 12, Duration::from_secs(60)).await;
    let stats = openai.limit_stats();
    assert!(
        done.iter().all(|d| d["status"] == "completed"),
        "{:?}",
        statuses(&done)
    );
    assert_eq!(stats.refused, 0, "{stats:?}");
    assert_eq!(stats.served, 12, "{stats:?}");
    assert!(stats.max_in_flight <= 2, "{stats:?}");
    let _ = std::fs::remove_file(registry);
}

#[tokio::test]
async fn a_requests_per_minute_limit_is_paced_across_workers_and_waiting_costs_no_attempt() {
    let openai = FakeUpstream::start("/v1").await;
    openai
        .always(openai::success("A halfling bard", 5, 7))
        .enforce(
            ProviderLimits {
                requests_per_minute: Some(120),
                ..ProviderLimits::default()
            },
            refusal(),
        );
    let registry = registry_file("requests_per_minute = 120", &[]);
    let (app, _workers) = app_and_two_workers(&openai, &registry, &[]).await;

    let started = Instant::now();
    let done = run_requests(&app, 12, Duration::from_secs(60)).await;
    let took = started.elapsed();
    let stats = openai.limit_stats();
    assert!(
        done.iter().all(|d| d["status"] == "completed"),
        "{:?}",
        statuses(&done)
    );
    assert_eq!((stats.refused, stats.served), (0, 12), "{stats:?}");
    // 120 a minute is one call every 500 ms: twelve take at least 5.5 s, and not much more.
    assert!(
        took >= Duration::from_millis(5000) && took < Duration::from_secs(30),
        "{took:?}"
    );
    // The requests waited several times each, but ran once: no wait was counted as an attempt.
    let sql = "SELECT COUNT(*) FROM generation_requests WHERE attempts <> 1";
    assert_eq!(app.db.count(sql).await, 0);
    let sql = "SELECT COUNT(*) FROM generation_attempts";
    assert_eq!(app.db.count(sql).await, 12);
    let _ = std::fs::remove_file(registry);
}

#[tokio::test]
async fn a_concurrency_limit_declared_too_high_converges_after_a_few_429s() {
    let openai = FakeUpstream::start("/v1").await;
    openai
        .always(llm_tests::fake_upstream::Reply::Delayed(
            Duration::from_millis(300),
            Box::new(openai::success("A dragonborn paladin", 5, 7)),
        ))
        .enforce(
            ProviderLimits {
                max_concurrency: Some(2),
                ..ProviderLimits::default()
            },
            openai::error(429, "Too many requests at once", None),
        );
    // Declared four times what the provider allows.
    let registry = registry_file(
        "max_concurrency = 8",
        &[
            ("attempts_per_model = 3", "attempts_per_model = 5"),
            ("failure_threshold = 5", "failure_threshold = 100"),
        ],
    );
    let (app, _workers) = app_and_two_workers(&openai, &registry, &[]).await;

    let done = run_requests(&app, 24, Duration::from_secs(60)).await;
    let stats = openai.limit_stats();
    assert!(
        done.iter().all(|d| d["status"] == "completed"),
        "{:?} {stats:?}",
        statuses(&done)
    );
    assert_eq!(stats.served, 24, "{stats:?}");
    // The first calls at once meet the provider's limit; after that the workers keep to it.
    assert!(stats.refused <= 12, "{stats:?}");
    let _ = std::fs::remove_file(registry);
}

#[tokio::test]
async fn with_redis_unreachable_calls_go_ahead_unadmitted() {
    let openai = FakeUpstream::start("/v1").await;
    openai.always(openai::success("A tabaxi rogue", 5, 7));
    let registry = registry_file("max_concurrency = 1\nrequests_per_minute = 6", &[]);
    let dead_redis = format!("redis://127.0.0.1:{}", llm_tests::free_port());
    let (app, _workers) =
        app_and_two_workers(&openai, &registry, &[("REDIS_URL", dead_redis.as_str())]).await;

    let started = Instant::now();
    let done = run_requests(&app, 4, Duration::from_secs(30)).await;
    assert!(
        done.iter().all(|d| d["status"] == "completed"),
        "{:?}",
        statuses(&done)
    );
    // Admitted, six a minute would take 30 s for four.
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(openai.received().len(), 4);
    let _ = std::fs::remove_file(registry);
}

/// Admission control on the test Redis, under a namespace of its own.
fn admission_on_test_redis() -> (Admission, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let client = redis::Client::open(llm_tests::redis_url()).unwrap();
    let prefix = format!("admissiontest{}:", Uuid::now_v7().simple());
    (
        Admission::new(Some(client), &prefix, metrics.clone()),
        metrics,
    )
}

fn endpoint(limits: EndpointLimits) -> Endpoint {
    Endpoint {
        name: "openai".into(),
        limits,
    }
}

#[tokio::test]
async fn a_tokens_per_minute_budget_spaces_calls_by_the_tokens_they_take_and_gives_back_what_they_did_not_use()
 {
    // 60,000 a minute is 1,000 a second: a call taking 500 holds the budget for 500 ms.
    let openai = endpoint(EndpointLimits {
        tokens_per_minute: Some(60_000),
        ..EndpointLimits::default()
    });
    let (admission, metrics) = admission_on_test_redis();
    let Admit::Granted(_first) = admission.admit(&openai, 500, &mut batch()).await else {
        panic!("the first call is admitted");
    };
    let wait = |admit: Admit| match admit {
        Admit::Wait {
            after,
            reason,
            in_line,
        } => {
            assert_eq!(reason, "tokens");
            assert!(in_line, "a wait this short is waited in place");
            after
        }
        Admit::Granted(_) => panic!("a call within the first one's 500 ms is refused"),
    };
    let (mut second, mut third) = (batch(), batch());
    let second_wait = wait(admission.admit(&openai, 500, &mut second).await);
    assert!(
        second_wait > Duration::from_millis(300) && second_wait <= Duration::from_millis(500),
        "{second_wait:?}"
    );
    // Refused together, they are given successive turns in line, not the same one.
    let third_wait = wait(admission.admit(&openai, 500, &mut third).await);
    assert!(
        third_wait >= second_wait + Duration::from_millis(400),
        "{third_wait:?}"
    );
    let text = metrics.encode().unwrap();
    let waits = text.lines().find_map(|l| {
        l.strip_prefix(r#"llm_budget_waits_total{endpoint="openai",reason="tokens"} "#)
    });
    assert_eq!(waits, Some("2"), "{text}");
    // Each comes back at its turn and is admitted, in order.
    tokio::time::sleep(second_wait).await;
    assert!(matches!(
        admission.admit(&openai, 500, &mut second).await,
        Admit::Granted(_)
    ));
    tokio::time::sleep(third_wait - second_wait).await;
    assert!(matches!(
        admission.admit(&openai, 500, &mut third).await,
        Admit::Granted(_)
    ));

    // A call that used 50 of its 500 gives the other 450 back to the next one.
    let (admission, _) = admission_on_test_redis();
    let Admit::Granted(first) = admission.admit(&openai, 500, &mut batch()).await else {
        panic!("the first call is admitted");
    };
    first.release(Some(50)).await;
    match admission.admit(&openai, 500, &mut batch()).await {
        Admit::Granted(_) => {}
        Admit::Wait { after, .. } => assert!(after <= Duration::from_millis(60), "{after:?}"),
    }
}

fn batch() -> Ticket {
    Ticket::new(Class::Batch)
}

#[tokio::test]
async fn an_interactive_call_goes_before_a_waiting_backlog_and_a_far_turn_is_sent_back() {
    // 600 a minute is one call every 100 ms; five seconds of waiting in place is 50 calls.
    let openai = endpoint(EndpointLimits {
        requests_per_minute: Some(600),
        ..EndpointLimits::default()
    });
    let (admission, _) = admission_on_test_redis();
    let mut backlog: Vec<Ticket> = (0..60).map(|_| batch()).collect();
    let mut waits = Vec::new();
    for ticket in &mut backlog {
        match admission.admit(&openai, 10, ticket).await {
            Admit::Granted(_) => waits.push((Duration::ZERO, true)),
            Admit::Wait { after, in_line, .. } => waits.push((after, in_line)),
        }
    }
    // The first is admitted, the next ones wait in place a turn apart, and those whose turn is
    // past five seconds go back to the queue, promised successive times to come back.
    assert_eq!(waits[0], (Duration::ZERO, true));
    assert!(
        waits[1].1 && waits[1].0 <= Duration::from_millis(100),
        "{waits:?}"
    );
    assert!(
        waits[10].1 && waits[10].0 >= Duration::from_millis(900),
        "{waits:?}"
    );
    let sent_back: Vec<Duration> = waits.iter().filter(|w| !w.1).map(|w| w.0).collect();
    assert!(!sent_back.is_empty() && sent_back.len() <= 12, "{waits:?}");
    assert!(
        sent_back
            .windows(2)
            .all(|w| w[1] >= w[0] + Duration::from_millis(90)),
        "{sent_back:?}"
    );

    // An interactive request's call is next, whatever the backlog waiting in line.
    let mut interactive = Ticket::new(Class::Interactive);
    match admission.admit(&openai, 10, &mut interactive).await {
        Admit::Granted(_) => {}
        Admit::Wait { after, in_line, .. } => {
            assert!(in_line && after <= Duration::from_millis(100), "{after:?}");
        }
    }
    // A waiting caller that gives up (its request was cancelled) leaves the line at once:
    // the one behind it moves up a turn.
    let behind = match admission.admit(&openai, 10, &mut backlog[20]).await {
        Admit::Wait { after, .. } => after,
        Admit::Granted(_) => panic!("the 21st of the backlog is not yet due"),
    };
    backlog.remove(19);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let moved_up = match admission.admit(&openai, 10, &mut backlog[19]).await {
        Admit::Wait { after, .. } => after,
        Admit::Granted(_) => Duration::ZERO,
    };
    assert!(
        moved_up + Duration::from_millis(150) < behind,
        "{behind:?} {moved_up:?}"
    );
}

#[tokio::test]
async fn a_slot_held_by_a_worker_that_died_frees_itself() {
    let (admission, _) = admission_on_test_redis();
    let openai = endpoint(EndpointLimits {
        max_concurrency: Some(1),
        ..EndpointLimits::default()
    });
    let Admit::Granted(held) = admission.admit(&openai, 10, &mut batch()).await else {
        panic!("the first call is admitted");
    };
    // Its worker dies mid-call: nothing releases the slot or renews it.
    std::mem::forget(held);
    let turn = |admit: Admit| match admit {
        Admit::Wait {
            after,
            reason: "concurrency",
            ..
        } => after,
        other => panic!("{other:?}"),
    };
    // Callers refused together are told successive turns, not all the same moment; these two
    // never ask again (their worker died too), and lose their places.
    let (mut dead, mut dead_too) = (batch(), batch());
    let first = turn(admission.admit(&openai, 10, &mut dead).await);
    let second = turn(admission.admit(&openai, 10, &mut dead_too).await);
    assert!(
        second >= first + Duration::from_millis(500),
        "{first:?} {second:?}"
    );
    std::mem::forget((dead, dead_too));
    let mut caller = batch();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Admit::Granted(permit) = admission.admit(&openai, 10, &mut caller).await {
            permit.release(None).await;
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dead worker's slot never freed"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // A call that ends frees its slot at once.
    let Admit::Granted(permit) = admission.admit(&openai, 10, &mut batch()).await else {
        panic!("the freed slot is taken");
    };
    permit.release(None).await;
    assert!(matches!(
        admission.admit(&openai, 10, &mut batch()).await,
        Admit::Granted(_)
    ));
}

#[tokio::test]
async fn a_worker_leaves_a_batch_backlog_it_has_no_budget_for_in_the_queue_and_still_starts_interactive_requests_at_once()
 {
    // Two calls a second: five seconds of waiting in place is ten batch items.
    let openai = FakeUpstream::start("/v1").await;
    openai
        .always(openai::success("A dwarf smith", 5, 7))
        .enforce(
            ProviderLimits {
                requests_per_minute: Some(120),
                ..ProviderLimits::default()
            },
            refusal(),
        );
    let registry = registry_file("requests_per_minute = 120", &[]);
    // Slots to spare: the worker would fetch items to send back, not wait for a slot.
    let concurrency = [("WORKER_CONCURRENCY", "100")];
    let (app, _worker) = app_and_workers(&openai, &registry, &concurrency, 1).await;
    let owner = Uuid::now_v7();
    for half in 0..2 {
        let items: Vec<Value> = (0..150)
            .map(|i| {
                json!({"model": "gpt-4o-mini", "prompt": format!("village {half} {i}"),
                            "cache": {"no_cache": true}})
            })
            .collect();
        let (status, body) = app
            .call(
                reqwest::Method::POST,
                "/api/v1/generate/batch",
                &app.token_for(owner),
                Some(json!({"items": items})),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }
    // Items whose turn is far off went back to the queue once, and then the worker stopped
    // fetching new ones: most were never claimed (without the pause it would have claimed and
    // sent back all 300 by now, each costing a claim and a release).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let paused = "SELECT COUNT(*) FROM apalis.fetch_pauses WHERE until > NOW()";
    assert_eq!(app.db.count(paused).await, 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let claimed = "SELECT COUNT(*) FROM generation_requests WHERE started_at IS NOT NULL";
    let claimed = app.db.count(claimed).await;
    assert!(claimed < 250, "{claimed} of 300 batch items claimed");

    // An interactive request is still fetched at once, and its call goes before the backlog's.
    let id = app
        .submit_ok(json!({"model": "gpt-4o-mini", "prompt": "the innkeeper",
                          "cache": {"no_cache": true}}))
        .await;
    let done = app.wait_final(id, Duration::from_secs(10)).await;
    assert_eq!(done["status"], "completed", "{done}");
    let waited: f64 = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM (started_at - created_at))::float8 FROM generation_requests
         WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert!(
        waited < 1.0,
        "the interactive request waited {waited} s to start"
    );
    assert_eq!(openai.limit_stats().refused, 0);
    let _ = std::fs::remove_file(registry);
}
