//! Prometheus metrics: the api's `/metrics` and a worker's metrics port expose every named
//! metric, with the counts the requests of the test produced.

use std::time::Duration;

use llm_tests::prom::{declares, value};
use llm_tests::{TestApp, free_port, spawn_app, start_worker};
use serde_json::{Value, json};
use uuid::Uuid;

async fn scrape(app: &TestApp, url: &str) -> String {
    let response = app.http.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    response.text().await.unwrap()
}

async fn get_status(app: &TestApp, path: &str, token: Option<&str>) -> u16 {
    let mut request = app.http.get(app.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().status().as_u16()
}

/// Scrapes until `check` holds (gauges and counters written after the answer), or gives up
/// and returns the last text.
async fn scrape_until(app: &TestApp, url: &str, check: impl Fn(&str) -> bool) -> String {
    let mut text = scrape(app, url).await;
    for _ in 0..50 {
        if check(&text) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        text = scrape(app, url).await;
    }
    text
}

#[tokio::test]
async fn api_metrics_count_requests_by_route_cache_rate_limits_and_streams() {
    let app = spawn_app().await;
    let worker = start_worker(&app.db, &[]);
    let metrics_url = app.url("/metrics");
    let token = app.token();

    for _ in 0..3 {
        assert_eq!(get_status(&app, "/health", None).await, 200);
    }
    let unknown = format!("/api/v1/generate/{}", Uuid::now_v7());
    assert_eq!(get_status(&app, &unknown, Some(&token)).await, 404);
    assert_eq!(
        get_status(&app, &format!("/no/such/{}", Uuid::now_v7()), None).await,
        404
    );

    // A miss, then (once it completed) a hit.
    let body = json!({"prompt": "metrics: cache me", "model": "mock"});
    let first = app.submit_ok(body.clone()).await;
    assert_eq!(
        app.wait_final(first, Duration::from_secs(20)).await["status"],
        "completed"
    );
    let (status, _) = app.submit(body).await;
    assert_eq!(status, 200, "answered from the cache");

    // A user allowed one request per minute: the second is refused.
    let limited = Uuid::now_v7();
    let admin = app.jwt.issue(app.user, 3600, Some("admin")).unwrap();
    let set = app
        .http
        .put(app.url(&format!("/api/v1/admin/rate_limits/{limited}")))
        .bearer_auth(&admin)
        .json(&json!({"requests_per_minute": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200);
    let limited_token = app.token_for(limited);
    let mut statuses = Vec::new();
    for i in 0..2 {
        let r = app
            .http
            .post(app.url("/api/v1/generate"))
            .bearer_auth(&limited_token)
            .json(&json!({"prompt": format!("limited {i}"), "cache": {"no_cache": true}}))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [202, 429]);

    // One stream open: counted while it lasts.
    let stream = app
        .http
        .post(app.url("/api/v1/generate/stream"))
        .bearer_auth(&token)
        .json(&json!({"prompt": "metrics: a slow stream", "mock": {"latency_ms": 3000}}))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let text = scrape_until(&app, &metrics_url, |t| {
        value(t, "llm_active_streams", &[]) == Some(1.0)
    })
    .await;
    assert_eq!(value(&text, "llm_active_streams", &[]), Some(1.0), "{text}");
    let stream_body = stream.text().await.unwrap();
    assert!(stream_body.contains("event: done"), "{stream_body}");

    let text = scrape_until(&app, &metrics_url, |t| {
        value(t, "llm_active_streams", &[]) == Some(0.0)
            && value(t, "llm_queue_depth", &[("status", "pending")]) == Some(0.0)
            && value(t, "llm_queue_depth", &[("status", "running")]) == Some(0.0)
    })
    .await;
    let count = |labels: &[(&str, &str)]| value(&text, "llm_http_requests_total", labels);
    assert_eq!(
        count(&[("method", "GET"), ("route", "/health"), ("status", "200")]),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        count(&[
            ("method", "GET"),
            ("route", "/api/v1/generate/{request_id}"),
            ("status", "404")
        ]),
        Some(1.0),
        "the route template, never the raw path"
    );
    assert_eq!(
        count(&[("route", "unmatched"), ("status", "404")]),
        Some(1.0)
    );
    assert_eq!(
        count(&[
            ("method", "POST"),
            ("route", "/api/v1/generate"),
            ("status", "429")
        ]),
        Some(1.0)
    );
    assert!(
        !text.contains(&limited.to_string()),
        "no user id in any label"
    );
    assert!(
        !text.contains(&first.to_string()),
        "no request id in any label"
    );
    assert_eq!(
        value(&text, "llm_cache_lookups_total", &[("result", "hit")]),
        Some(1.0)
    );
    // The first submit, the limited user's accepted one is `no_cache` (not looked up), the
    // stream's.
    assert_eq!(
        value(&text, "llm_cache_lookups_total", &[("result", "miss")]),
        Some(2.0)
    );
    assert_eq!(
        value(
            &text,
            "llm_rate_limit_rejections_total",
            &[("limit", "requests")]
        ),
        Some(1.0)
    );
    assert_eq!(value(&text, "llm_active_streams", &[]), Some(0.0));
    assert_eq!(
        value(&text, "llm_queue_oldest_pending_age_seconds", &[]),
        Some(0.0)
    );
    // The hub is not running in tests: every event written is still in the outbox.
    let backlog = app
        .db
        .count("SELECT COUNT(*) FROM outbox_events WHERE delivered_at IS NULL")
        .await;
    assert!(backlog >= 2, "completions wrote hub events");
    assert_eq!(
        value(&text, "llm_outbox_backlog", &[]),
        Some(backlog as f64)
    );
    assert!(declares(&text, "llm_http_request_duration_seconds"));
    assert_eq!(
        value(
            &text,
            "llm_http_request_duration_seconds_count",
            &[("method", "GET"), ("route", "/health")]
        ),
        Some(3.0)
    );
    worker.stop().await;
}

#[tokio::test]
async fn worker_metrics_count_outcomes_calls_retries_fallbacks_tokens_and_circuits() {
    let app = spawn_app().await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let worker = start_worker(&app.db, &["--metrics-listen", &listen]);
    let worker_url = format!("http://{listen}/metrics");

    // mock-large fails its three calls (transient: two retries), then falls back to mock.
    let fell_back = app
        .submit_ok(json!({
            "prompt": "metrics: fall back",
            "model": "mock-large",
            "mock": {"fail": "transient", "fail_attempts": 3},
            "cache": {"no_cache": true, "no_store": true},
        }))
        .await;
    let done = app.wait_final(fell_back, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["served_model"], "mock");
    let failed = app
        .submit_ok(json!({
            "prompt": "metrics: fail",
            "mock": {"fail": "permanent"},
            "cache": {"no_cache": true, "no_store": true},
        }))
        .await;
    assert_eq!(
        app.wait_final(failed, Duration::from_secs(20)).await["status"],
        "failed"
    );

    let text = {
        let mut text = String::new();
        for _ in 0..50 {
            text = match app.http.get(&worker_url).send().await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if value(&text, "llm_generations_total", &[("outcome", "failed")]) == Some(1.0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        text
    };
    assert_eq!(
        value(
            &text,
            "llm_generations_total",
            &[
                ("model", "mock"),
                ("provider", "mock"),
                ("outcome", "completed")
            ]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "llm_generations_total",
            &[("model", "mock"), ("outcome", "failed")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "llm_provider_calls_total",
            &[("model", "mock-large"), ("outcome", "transient")]
        ),
        Some(3.0)
    );
    assert_eq!(
        value(
            &text,
            "llm_provider_calls_total",
            &[("model", "mock"), ("outcome", "success")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "llm_provider_calls_total",
            &[("model", "mock"), ("outcome", "rejected")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "llm_provider_retries_total",
            &[("model", "mock-large")]
        ),
        Some(2.0)
    );
    assert_eq!(
        value(&text, "llm_fallbacks_total", &[("model", "mock-large")]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "llm_provider_latency_seconds_count",
            &[("model", "mock-large")]
        ),
        Some(3.0)
    );
    assert_eq!(
        value(
            &text,
            "llm_generation_duration_seconds_count",
            &[("model", "mock"), ("outcome", "completed")]
        ),
        Some(1.0)
    );
    let tokens = |kind: &str| {
        value(
            &text,
            "llm_tokens_total",
            &[("model", "mock"), ("kind", kind)],
        )
    };
    assert_eq!(tokens("prompt"), done["prompt_tokens"].as_f64());
    assert_eq!(tokens("completion"), done["completion_tokens"].as_f64());
    assert_eq!(
        value(&text, "llm_cost_usd_total", &[("model", "mock")]),
        Some(0.0)
    );
    // mock succeeded last: closed.
    assert_eq!(
        value(&text, "llm_circuit_state", &[("provider", "mock")]),
        Some(0.0)
    );
    assert_eq!(
        value(&text, "llm_queue_depth", &[("status", "pending")]),
        Some(0.0)
    );
    for family in [
        "llm_queue_oldest_pending_age_seconds",
        "llm_outbox_backlog",
        "llm_circuit_state",
    ] {
        assert!(declares(&text, family), "{family} missing");
    }
    worker.stop().await;
}

/// A worker process on the app's database, with its `/metrics` URL (on a free port).
fn worker_process_with_metrics(app: &TestApp) -> (tokio::process::Child, String) {
    let listen = format!("127.0.0.1:{}", free_port());
    let worker = llm_tests::spawn_worker_process(&app.db, &[("WORKER_METRICS_LISTEN", &listen)]);
    (worker, format!("http://{listen}/metrics"))
}

#[tokio::test]
async fn the_worker_binary_serves_metrics_on_its_port() {
    let app = spawn_app().await;
    let (_worker, url) = worker_process_with_metrics(&app);
    let text = scrape_process(&app.http, &url).await;
    let id = app
        .submit_ok(json!({"prompt": "metrics: by a process"}))
        .await;
    let done: Value = app.wait_final(id, Duration::from_secs(20)).await;
    assert_eq!(done["status"], "completed");
    assert!(declares(&text, "llm_queue_depth"), "{text}");
    let after = app
        .http
        .get(&url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        value(&after, "llm_generations_total", &[("outcome", "completed")]),
        Some(1.0),
        "{after}"
    );
}

/// A worker sends a fetch to the database only when a job may be waiting: once per job
/// announced, once per tick of its poll period (200 ms in tests), and again after a fetch that
/// came back full. apalis' own backend also fetched after every job it handed out and on every
/// wake-up: about three fetches per job when requests come one at a time.
#[tokio::test]
async fn a_worker_fetches_from_the_queue_only_when_a_job_was_announced() {
    let app = spawn_app().await;
    let (_worker, url) = worker_process_with_metrics(&app);
    let fetches = |text: &str| value(text, "llm_worker_queue_fetches_total", &[]).unwrap();
    let warm = app.submit_ok(json!({"prompt": "fetched: first"})).await;
    let done: Value = app.wait_final(warm, Duration::from_secs(20)).await;
    assert_eq!(done["status"], "completed", "{done}");
    let before = fetches(&scrape_process(&app.http, &url).await);
    let started = std::time::Instant::now();
    let jobs = 30;
    for n in 0..jobs {
        let id = app
            .submit_ok(json!({"prompt": format!("fetched: one at a time {n}")}))
            .await;
        let done: Value = app.wait_final(id, Duration::from_secs(20)).await;
        assert_eq!(done["status"], "completed", "{done}");
    }
    let ticks = started.elapsed().as_millis() / 200 + 1;
    let fetched = fetches(&scrape_process(&app.http, &url).await) - before;
    assert!(
        fetched <= (jobs + ticks) as f64,
        "{fetched} fetches for {jobs} jobs and {ticks} ticks"
    );
}

/// Every metric the Grafana dashboard queries is one `shared::metrics` defines, the dashboard
/// covers throughput, latency, errors, tokens, cost, cache hit rate, queue depth and each
/// process's CPU, memory, file descriptors, threads and runtime tasks, and the scrape config
/// points at the ports compose gives the api and the workers.
#[test]
fn metrics_dashboard_and_scrape_config_match_the_code() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let read = |path: &str| std::fs::read_to_string(format!("{root}/{path}")).unwrap();
    let code = read("shared/src/metrics.rs") + &read("shared/src/metrics/system.rs");
    let dashboard: Value =
        serde_json::from_str(&read("monitoring/grafana/dashboards/llm-service.json")).unwrap();
    let mut used = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let names = expr
                .match_indices("llm_")
                .chain(expr.match_indices("process_"))
                // `process_` inside a longer name (none today) is not a name of its own.
                .filter(|(at, _)| {
                    !expr[..*at]
                        .chars()
                        .next_back()
                        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                });
            for (at, _) in names {
                let name: String = expr[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let base = ["_bucket", "_count", "_sum"]
                    .iter()
                    .fold(name.clone(), |n, suffix| {
                        n.strip_suffix(suffix).map(str::to_owned).unwrap_or(n)
                    });
                used.insert(base);
            }
        }
    }
    for name in &used {
        assert!(
            code.contains(&format!("\"{name}\"")),
            "the dashboard queries {name}, which shared::metrics does not define"
        );
    }
    for needed in [
        "llm_http_requests_total",
        "llm_generations_total",
        "llm_generation_duration_seconds",
        "llm_provider_latency_seconds",
        "llm_tokens_total",
        "llm_cost_usd_total",
        "llm_cache_lookups_total",
        "llm_queue_depth",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_threads",
        "llm_runtime_alive_tasks",
    ] {
        assert!(
            used.contains(needed),
            "the dashboard has no panel on {needed}"
        );
    }
    let prometheus = read("monitoring/prometheus.yml");
    assert!(prometheus.contains("\"api:8100\""));
    assert!(prometheus.contains("port: 9100"));
    let compose = read("compose.yaml");
    assert!(compose.contains("WORKER_METRICS_LISTEN: 0.0.0.0:9100"));
    assert!(compose.contains("./monitoring/prometheus.yml:/etc/prometheus/prometheus.yml"));
}

#[tokio::test]
async fn worker_metrics_count_tokens_and_cost_of_a_priced_model() {
    use llm_tests::fake_upstream::{self, FakeUpstream};
    let openai = FakeUpstream::start("/v1").await;
    // gpt-4o-mini: $0.15 / $0.60 per million prompt / completion tokens.
    openai.always(fake_upstream::openai::success(
        "Priced.", 1_000_000, 500_000,
    ));
    let flags = llm_tests::openai_flags(&openai);
    let app = llm_tests::spawn_app_with_providers(&flags).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let mut worker_flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    worker_flags.extend(["--metrics-listen", &listen]);
    let worker = start_worker(&app.db, &worker_flags);

    let id = app
        .submit_ok(json!({"prompt": "metrics: a priced call", "model": "gpt-4o-mini"}))
        .await;
    let done = app.wait_final(id, Duration::from_secs(20)).await;
    assert_eq!(done["status"], "completed", "{done}");
    let url = format!("http://{listen}/metrics");
    let text = app
        .http
        .get(&url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let labels = [("model", "gpt-4o-mini")];
    let cost = value(&text, "llm_cost_usd_total", &labels).unwrap();
    assert!((cost - 0.45).abs() < 1e-9, "{cost}");
    assert_eq!(
        value(
            &text,
            "llm_tokens_total",
            &[("model", "gpt-4o-mini"), ("kind", "prompt")]
        ),
        Some(1_000_000.0)
    );
    assert_eq!(
        value(
            &text,
            "llm_tokens_total",
            &[("model", "gpt-4o-mini"), ("kind", "completion")]
        ),
        Some(500_000.0)
    );
    assert_eq!(
        value(
            &text,
            "llm_generations_total",
            &[
                ("model", "gpt-4o-mini"),
                ("provider", "openai"),
                ("outcome", "completed")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "llm_circuit_state", &[("provider", "openai")]),
        Some(0.0)
    );
    assert!(!text.contains("sk-test"), "no key in the metrics");
    worker.stop().await;
}

/// The system metrics of one scrape: present and plausible for a live process.
fn assert_system_metrics(process: &str, text: &str, started_after: f64) {
    let get = |name: &str| {
        value(text, name, &[]).unwrap_or_else(|| panic!("{process}: {name} missing in\n{text}"))
    };
    let rss = get("process_resident_memory_bytes");
    assert!(rss > 1_048_576.0, "{process}: resident memory {rss}");
    assert!(
        get("process_virtual_memory_bytes") >= rss,
        "{process}: virtual memory below resident"
    );
    let fds = get("process_open_fds");
    assert!(fds > 0.0, "{process}: open fds {fds}");
    assert!(
        get("process_max_fds") >= fds,
        "{process}: limit below open fds"
    );
    assert!(get("process_threads") >= 1.0, "{process}: threads");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let start = get("process_start_time_seconds");
    // `btime` is whole seconds: a start time may read up to a second early.
    assert!(
        start >= started_after - 2.0 && start <= now + 1.0,
        "{process}: started at {start}, the test started it after {started_after} (now {now})"
    );
    assert!(get("process_cpu_seconds_total") >= 0.0);
    assert!(
        get("process_network_receive_bytes_total") > 0.0,
        "{process}: the scrape itself came over the network"
    );
    assert!(get("process_network_transmit_bytes_total") > 0.0);
    assert!(
        get("llm_runtime_workers") >= 1.0,
        "{process}: runtime workers"
    );
    assert!(
        get("llm_runtime_alive_tasks") >= 1.0,
        "{process}: alive tasks"
    );
    assert!(get("llm_runtime_global_queue_depth") >= 0.0);
    for (family, kind) in [
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_network_receive_bytes_total", "counter"),
        ("llm_runtime_alive_tasks", "gauge"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} {kind}\n")),
            "{process}: {family} is a {kind}"
        );
    }
    assert!(
        !text.contains(llm_tests::TEST_SECRET) && !text.contains("postgres://"),
        "{process}: no secret or connection string in the metrics"
    );
}

/// A scrape of `url`, retried while the process is starting.
async fn scrape_process(http: &reqwest::Client, url: &str) -> String {
    for _ in 0..100 {
        if let Ok(r) = http.get(url).send().await
            && r.status() == 200
        {
            return r.text().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} never answered");
}

#[tokio::test]
async fn the_api_and_worker_processes_report_their_cpu_memory_fds_threads_and_runtime() {
    let app = spawn_app().await; // its database; the scrapes are of the two processes below
    let started_after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let (_api, base) = llm_tests::spawn_api_process(&app.db).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let _worker = llm_tests::spawn_worker_process(&app.db, &[("WORKER_METRICS_LISTEN", &listen)]);
    let http = reqwest::Client::new();
    let api_url = format!("{base}/metrics");
    let worker_url = format!("http://{listen}/metrics");

    let api_before = scrape_process(&http, &api_url).await;
    let worker_before = scrape_process(&http, &worker_url).await;
    assert_system_metrics("api", &api_before, started_after);
    assert_system_metrics("worker", &worker_before, started_after);
    // The worker's runtime has one thread unless WORKER_THREADS says more.
    assert_eq!(value(&worker_before, "llm_runtime_workers", &[]), Some(1.0));

    // Work for both: submits to the api process, run by the worker process.
    let token = app.token();
    let mut ids = Vec::new();
    for i in 0..40 {
        let accepted: Value = http
            .post(format!("{base}/api/v1/generate"))
            .bearer_auth(&token)
            .json(&json!({"prompt": format!("system metrics {i}"), "model": "mock"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(
            accepted["request_id"]
                .as_str()
                .unwrap()
                .parse::<Uuid>()
                .unwrap(),
        );
    }
    for id in ids {
        assert_eq!(
            app.wait_final(id, Duration::from_secs(30)).await["status"],
            "completed"
        );
    }
    let cpu = |text: &str| value(text, "process_cpu_seconds_total", &[]).unwrap();
    let received = |text: &str| value(text, "process_network_receive_bytes_total", &[]).unwrap();
    for (process, url, before) in [
        ("api", &api_url, &api_before),
        ("worker", &worker_url, &worker_before),
    ] {
        let after = scrape_process(&http, url).await;
        assert_system_metrics(process, &after, started_after);
        assert!(
            cpu(&after) > cpu(before),
            "{process}: CPU seconds {} after the work, {} before",
            cpu(&after),
            cpu(before)
        );
        assert!(
            received(&after) > received(before),
            "{process}: bytes received"
        );
    }
}
