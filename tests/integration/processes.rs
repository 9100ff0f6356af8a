//! The real binaries as processes: end to end, a worker killed with SIGKILL mid-flight, a
//! request that keeps killing its workers, a graceful SIGTERM drain, and the container's entry
//! point running both.

use std::time::{Duration, Instant};

use llm_tests::{
    TEST_SECRET, TestApp, binary, signal, spawn_api_process, spawn_api_process_with, spawn_app,
    spawn_worker_process,
};
use serde_json::{Value, json};
use uuid::Uuid;

async fn wait_for(app: &TestApp, what: &str, sql: &str, at_least: i64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let n = app.db.count(sql).await;
        if n >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {n} < {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `POST /api/v1/generate` to an api process: the status and the JSON answer.
async fn submit_to(http: &reqwest::Client, base: &str, token: &str, body: &Value) -> (u16, Value) {
    let response = http
        .post(format!("{base}/api/v1/generate"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// Submits `body` to an api process (a `202`) and waits for the request to end: its row.
async fn run_to_end(http: &reqwest::Client, base: &str, token: &str, body: &Value) -> Value {
    let (status, accepted) = submit_to(http, base, token, body).await;
    assert_eq!(status, 202, "{accepted}");
    let poll_url = format!("{base}{}?wait=20", accepted["poll_url"].as_str().unwrap());
    http.get(poll_url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Each process follows every channel it listens to (completion notices, registry reloads, a
/// worker's new jobs) on one connection: PostgreSQL 15 wakes every listening backend of the
/// database on each `NOTIFY`, whatever its channel. An api and a worker, a request run through
/// them and waited for, and two listening connections in all.
#[tokio::test]
async fn each_process_listens_on_one_connection() {
    let db = llm_tests::TestDb::new().await;
    let (_api, base) = spawn_api_process(&db).await;
    let _worker = spawn_worker_process(&db, &[]);
    let token = llm_tests::test_jwt()
        .issue(Uuid::now_v7(), 600, None)
        .unwrap();
    let http = reqwest::Client::new();
    let done = run_to_end(
        &http,
        &base,
        &token,
        &json!({"prompt": "heard through one connection"}),
    )
    .await;
    assert_eq!(done["status"], "completed", "{done}");
    let listening: Vec<String> = sqlx::query_scalar(
        "SELECT query FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN %'",
    )
    .bind(&db.name)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(listening.len(), 2, "{listening:?}");
}

#[tokio::test]
async fn the_binaries_serve_a_request_end_to_end() {
    let app = spawn_app().await; // only for its database
    let (_api, base) = spawn_api_process(&app.db).await;
    // On a runtime of two threads: the other process tests run the default one.
    let _worker = spawn_worker_process(&app.db, &[("WORKER_THREADS", "2")]);

    // A token minted the documented way: `llm-api token --user <uuid>`.
    let user = Uuid::now_v7();
    let out = tokio::process::Command::new(binary("llm-api"))
        .args(["token", "--user", &user.to_string(), "--ttl-secs", "600"])
        .env_clear()
        .env("SECRET_KEY", TEST_SECRET)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    let http = reqwest::Client::new();
    let done = run_to_end(
        &http,
        &base,
        &token,
        &json!({"prompt": "A tiefling warlock's pact"}),
    )
    .await;
    assert_eq!(done["status"], "completed", "{done}");
    assert!(!done["result"].as_str().unwrap().is_empty());

    let ready = http
        .get(format!("{base}/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}

/// Submits `n` requests taking `latency_ms` each and waits until the worker `name` runs all of
/// them.
async fn run_slow_on(app: &TestApp, name: &str, n: i64, latency_ms: u64) {
    for i in 0..n {
        app.submit_ok(json!({"prompt": format!("{name} {i}"), "mock": {"latency_ms": latency_ms}}))
            .await;
    }
    let running = format!(
        "SELECT COUNT(*) FROM generation_requests WHERE claimed_by = '{name}' AND status = 'running'"
    );
    let what = format!("{name} to run {n} requests");
    wait_for(app, &what, &running, n, Duration::from_secs(20)).await;
}

/// Bound stated for recovery after a SIGKILL: lease (3 s) and dead-worker detection
/// (3 missed 1 s heartbeats) plus the jobs themselves; 60 s leaves ample margin on 2 cores.
const RECOVERY_BOUND: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_worker_killed_mid_flight_loses_no_job_and_none_runs_twice() {
    let app = spawn_app().await;
    let mut victim = spawn_worker_process(&app.db, &[("WORKER_NAME", "victim")]);
    let _w2 = spawn_worker_process(&app.db, &[("WORKER_NAME", "survivor-1")]);
    let _w3 = spawn_worker_process(&app.db, &[("WORKER_NAME", "survivor-2")]);

    let mut ids = Vec::new();
    for i in 0..60 {
        ids.push(
            app.submit_ok(json!({"prompt": format!("npc {i}"), "mock": {"latency_ms": 1500}}))
                .await,
        );
    }
    wait_for(
        &app,
        "the victim to hold running requests",
        "SELECT COUNT(*) FROM generation_requests WHERE claimed_by = 'victim' AND status = 'running'",
        3,
        Duration::from_secs(20),
    )
    .await;
    signal(&victim, libc::SIGKILL);
    let killed_at = Instant::now();
    let status = victim.wait().await.unwrap();
    assert!(!status.success());

    wait_for(
        &app,
        "every request to complete",
        "SELECT COUNT(*) FROM generation_requests WHERE status = 'completed'",
        60,
        RECOVERY_BOUND,
    )
    .await;
    eprintln!(
        "all 60 completed {:?} after the SIGKILL",
        killed_at.elapsed()
    );

    // Exactly once: one successful provider call per request; the victim's calls abandoned.
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM generation_attempts WHERE outcome = 'succeeded'")
            .await,
        60
    );
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM (SELECT request_id FROM generation_attempts WHERE outcome = 'succeeded' GROUP BY request_id HAVING COUNT(*) > 1) s")
            .await,
        0
    );
    // Usage counts each request once, although some ran twice.
    assert_eq!(
        app.db
            .count("SELECT COALESCE(SUM(requests), 0)::bigint FROM usage_daily")
            .await,
        60
    );
    assert_eq!(
        app.db
            .count("SELECT COALESCE(SUM(prompt_tokens), 0)::bigint FROM usage_daily")
            .await,
        app.db
            .count("SELECT COALESCE(SUM(prompt_tokens), 0)::bigint FROM generation_requests")
            .await
    );
    let abandoned = app
        .db
        .count("SELECT COUNT(*) FROM generation_attempts WHERE outcome = 'abandoned' AND worker = 'victim'")
        .await;
    assert!(
        abandoned >= 3,
        "the kill should have interrupted in-flight attempts, saw {abandoned}"
    );
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM generation_attempts WHERE outcome = 'succeeded' AND worker = 'victim' AND request_id IN (SELECT request_id FROM generation_attempts WHERE outcome = 'abandoned')")
            .await,
        0
    );
}

/// The jobs of a worker that died are put back by another worker's heartbeat, which no
/// notification announces: that worker fetches them at once, not at its fallback poll (ten
/// minutes away here).
#[tokio::test]
async fn the_jobs_of_a_dead_worker_run_as_soon_as_a_heartbeat_puts_them_back() {
    let app = spawn_app().await;
    let mut victim = spawn_worker_process(&app.db, &[("WORKER_NAME", "victim")]);
    run_slow_on(&app, "victim", 3, 3000).await;
    signal(&victim, libc::SIGKILL);
    assert!(!victim.wait().await.unwrap().success());
    let _survivor = spawn_worker_process(
        &app.db,
        &[("WORKER_NAME", "survivor"), ("WORKER_POLL_MS", "600000")],
    );
    wait_for(
        &app,
        "the orphaned requests to complete",
        "SELECT COUNT(*) FROM generation_requests WHERE status = 'completed'",
        3,
        RECOVERY_BOUND,
    )
    .await;
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM generation_attempts WHERE outcome = 'succeeded' AND worker = 'survivor'")
            .await,
        3
    );
}

/// A request whose job ended without it (here: marked done by hand) is re-queued by a worker's
/// rescuer, which no notification announces: that worker fetches it at once, not at its
/// fallback poll (ten minutes away here).
#[tokio::test]
async fn a_stranded_request_runs_as_soon_as_a_worker_rescues_it() {
    let app = spawn_app().await;
    let id = app.submit_ok(json!({"prompt": "stranded"})).await;
    sqlx::query("UPDATE apalis.jobs SET status = 'Done', done_at = NOW()")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let _worker = spawn_worker_process(&app.db, &[("WORKER_POLL_MS", "600000")]);
    let done = app.wait_final(id, RECOVERY_BOUND).await;
    assert_eq!(done["status"], "completed", "{done}");
}

#[tokio::test]
async fn a_request_that_keeps_killing_its_worker_ends_failed() {
    let app = spawn_app().await;
    let id = app
        .submit_ok(json!({"prompt": "poison pill", "mock": {"fail": "crash"}}))
        .await;
    sqlx::query("UPDATE generation_requests SET max_attempts = 2 WHERE id = $1")
        .bind(id)
        .execute(&app.db.pool)
        .await
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(90);
    let mut crashes = 0;
    loop {
        let (_, body) = app.poll(id, 0).await;
        if body["status"] == "failed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {} after {crashes} crashes",
            body["status"]
        );
        let mut worker = spawn_worker_process(&app.db, &[("MOCK_ALLOW_CRASH", "true")]);
        tokio::select! {
            status = worker.wait() => {
                assert!(!status.unwrap().success());
                crashes += 1;
            }
            _ = tokio::time::sleep(Duration::from_secs(15)) => {
                // This worker survived: it must have failed the request instead of running it.
                let _ = worker.kill().await;
            }
        }
    }
    let (_, body) = app.poll(id, 0).await;
    assert_eq!(body["error_code"], "attempts_exhausted", "{body}");
    assert_eq!(crashes, 2);
    let outcomes: Vec<_> = body["attempt_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].clone())
        .collect();
    assert_eq!(outcomes, vec![json!("abandoned"), json!("abandoned")]);
}

#[tokio::test]
async fn sigterm_drains_in_flight_jobs_then_exits_cleanly() {
    let app = spawn_app().await;
    let mut worker = spawn_worker_process(
        &app.db,
        &[("WORKER_NAME", "drainer"), ("SHUTDOWN_GRACE_SECS", "20")],
    );
    run_slow_on(&app, "drainer", 4, 2000).await;
    signal(&worker, libc::SIGTERM);
    // Submitted while the worker drains: it must not start it.
    let late = app.submit_ok(json!({"prompt": "after shutdown"})).await;
    let status = tokio::time::timeout(Duration::from_secs(25), worker.wait())
        .await
        .expect("the worker exits within its grace period")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM generation_requests WHERE status = 'completed'")
            .await,
        4
    );
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM generation_attempts WHERE outcome <> 'succeeded'")
            .await,
        0
    );
    let (_, pending) = app.poll(late, 0).await;
    assert_eq!(pending["status"], "pending");
    assert_eq!(pending["attempts"], 0);

    // Work submitted after the worker left waits for the next worker, and is not lost.
    let _next = spawn_worker_process(&app.db, &[]);
    let done = app.wait_final(late, Duration::from_secs(20)).await;
    assert_eq!(done["status"], "completed");
}

#[tokio::test]
async fn sigterm_writes_the_rows_of_cache_hits_it_answered_before_exiting() {
    let app = spawn_app().await; // its database, and an in-process api for the first answer
    let worker = llm_tests::start_worker(&app.db, &[]);
    let body = json!({"prompt": "a hit answered just before a deploy"});
    let first = app.submit_ok(body.clone()).await;
    assert_eq!(
        app.wait_final(first, Duration::from_secs(20)).await["status"],
        "completed"
    );
    worker.stop().await;

    let (mut api, base) = spawn_api_process(&app.db).await;
    let http = reqwest::Client::new();
    // Hold the hit writer off: its rows wait behind this lock while the api answers and stops.
    let mut lock = app.db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE generation_requests IN SHARE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let mut answered = Vec::new();
    for _ in 0..20 {
        let (status, accepted) = submit_to(&http, &base, &app.token(), &body).await;
        assert_eq!(status, 200, "a hit from the cache's fast copy");
        answered.push(
            accepted["request_id"]
                .as_str()
                .unwrap()
                .parse::<Uuid>()
                .unwrap(),
        );
    }
    signal(&api, libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(500)).await;
    lock.commit().await.unwrap();

    let status = tokio::time::timeout(Duration::from_secs(25), api.wait())
        .await
        .expect("the api exits once the rows are written")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    for id in answered {
        let stored: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM generation_requests WHERE id = $1 AND cached AND status = 'completed'",
        )
        .bind(id)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
        assert_eq!(stored, 1, "the answered hit {id} has its row");
    }
    assert_eq!(
        app.db
            .count("SELECT SUM(cached_requests)::bigint FROM usage_daily")
            .await,
        20
    );
}

#[tokio::test]
async fn sigterm_ends_open_streams_and_long_polls_at_once() {
    let app = spawn_app().await; // its database; no worker, so the request stays pending
    let (mut api, base) = spawn_api_process(&app.db).await;
    let http = reqwest::Client::new();
    let body = json!({"prompt": "a request still pending at a deploy"});
    let (status, accepted) = submit_to(&http, &base, &app.token(), &body).await;
    assert_eq!(status, 202);
    let id = accepted["request_id"].as_str().unwrap().to_owned();
    let mut stream = llm_tests::sse::SseReader::open(
        http.get(format!("{base}/api/v1/generate/{id}/stream"))
            .bearer_auth(app.token()),
    )
    .await;
    assert_eq!(stream.status, 200);
    let start = stream.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(start.event, "start");
    let long_poll = tokio::spawn(
        http.get(format!("{base}/api/v1/generate/{id}?wait=30"))
            .bearer_auth(app.token())
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    let stopping = Instant::now();
    signal(&api, libc::SIGTERM);
    // Without ending them, the stop waited for the poll's 30 s and for the stream's request.
    let status = tokio::time::timeout(Duration::from_secs(10), api.wait())
        .await
        .expect("the api exits without waiting for the stream and the long poll")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(stopping.elapsed() < Duration::from_secs(10));
    let poll = long_poll.await.unwrap().unwrap();
    assert_eq!(poll.status(), 200);
    let view: Value = poll.json().await.unwrap();
    assert_eq!(
        view["status"], "pending",
        "the poll answers with the state it has"
    );
    assert!(
        stream.next(Duration::from_secs(5)).await.is_none(),
        "the stream ends (its client resumes elsewhere)"
    );
}

/// The CPUs a thread may run on (`Cpus_allowed_list` of `/proc/<pid>/task/<tid>/status`).
fn allowed_cpus(status_path: &str) -> String {
    std::fs::read_to_string(status_path)
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_owned()
}

/// How many CPUs a `Cpus_allowed_list` (`0-1,4`) names.
fn cpu_count(list: &str) -> usize {
    list.split(',')
        .map(|range| match range.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap() + 1,
            None => 1,
        })
        .sum()
}

/// The CPU lists of an api process's runtime threads (named by tokio), one entry per thread.
fn runtime_thread_cpus(pid: u32) -> Vec<String> {
    let mut cpus = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let name = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if name.starts_with("tokio-r") {
            cpus.push(allowed_cpus(&task.join("status").to_string_lossy()));
        }
    }
    cpus
}

#[tokio::test]
async fn the_api_pins_one_runtime_thread_to_each_cpu_unless_told_not_to() {
    let app = spawn_app().await; // only for its database
    let ours = allowed_cpus("/proc/self/status");
    let cpus = cpu_count(&ours);
    if cpus < 2 {
        eprintln!("one CPU ({ours}): nothing to pin a thread away from");
        return;
    }

    let (api, _) = spawn_api_process(&app.db).await;
    let threads = runtime_thread_cpus(api.id().unwrap());
    let mut pinned: Vec<&String> = threads.iter().filter(|c| cpu_count(c) == 1).collect();
    pinned.sort();
    pinned.dedup();
    assert_eq!(
        pinned.len(),
        cpus,
        "one runtime thread on each of the CPUs {ours}: {threads:?}"
    );

    let (unpinned, _) = spawn_api_process_with(&app.db, &[("API_PIN_THREADS", "false")]).await;
    let threads = runtime_thread_cpus(unpinned.id().unwrap());
    assert!(
        threads.len() >= cpus && threads.iter().all(|c| *c == ours),
        "API_PIN_THREADS=false: every runtime thread may run on {ours}: {threads:?}"
    );

    // With fewer threads than CPUs a pinned thread could not move off a busy CPU: none is.
    let (one, _) = spawn_api_process_with(&app.db, &[("TOKIO_WORKER_THREADS", "1")]).await;
    let threads = runtime_thread_cpus(one.id().unwrap());
    assert!(
        !threads.is_empty() && threads.iter().all(|c| *c == ours),
        "one runtime thread for {ours}: not pinned: {threads:?}"
    );
}

/// The image's default command (`scripts/container-entrypoint.sh`) as a process: POSIX `sh`
/// with the debug binaries on its PATH, configured as the container would be (environment
/// only), the api on a free port. Children left behind by a failed test are killed on drop.
struct Container {
    script: tokio::process::Child,
    base: String,
}

impl Container {
    async fn start(app: &TestApp) -> Self {
        let port = llm_tests::free_port();
        let bin_dir = binary("llm-api").parent().unwrap().to_owned();
        let script = tokio::process::Command::new("sh")
            .arg(llm_tests::repo_root().join("scripts/container-entrypoint.sh"))
            .env_clear()
            .env("PATH", format!("{}:/usr/bin:/bin", bin_dir.display()))
            .env("DATABASE_URL", &app.db.url)
            .env("REDIS_URL", llm_tests::redis_url())
            .env("REDIS_KEY_PREFIX", app.db.redis_prefix())
            .env("SECRET_KEY", TEST_SECRET)
            .env("PROMPTS_DIR", llm_tests::prompts_dir())
            .env("LOG_LEVEL", "warn")
            .env("API_LISTEN", format!("127.0.0.1:{port}"))
            .env("WORKER_METRICS_LISTEN", "127.0.0.1:0")
            .env("MOCK_PROVIDER", "true")
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("run sh");
        let container = Self {
            script,
            base: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(r) = http.get(format!("{}/health", container.base)).send().await
                && r.status().is_success()
            {
                return container;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the container's api did not become healthy");
    }

    /// The script's children by program name (`llm-api`, `llm-worker`): their pids.
    fn child(&self, name: &str) -> Vec<i32> {
        let Some(script) = self.script.id() else {
            return Vec::new();
        };
        processes_of(script)
            .into_iter()
            .filter(|(_, comm)| comm == name)
            .map(|(pid, _)| pid)
            .collect()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        for pid in self
            .child("llm-api")
            .into_iter()
            .chain(self.child("llm-worker"))
        {
            let _ = llm_tests::kill_pid(pid, libc::SIGKILL);
        }
    }
}

/// The live children of `parent` with their command names (`/proc/<pid>/stat`).
fn processes_of(parent: u32) -> Vec<(i32, String)> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // State (field 3) and parent (field 4); a zombie has ended already.
        if fields.get(1) == Some(&parent.to_string().as_str()) && fields.first() != Some(&"Z") {
            children.push((pid, comm));
        }
    }
    children
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

#[tokio::test]
async fn the_container_entrypoint_serves_and_works_then_stops_both_on_sigterm() {
    let app = spawn_app().await; // its database; no worker but the container's
    let mut container = Container::start(&app).await;
    let api = container.child("llm-api");
    let worker = container.child("llm-worker");
    assert_eq!((api.len(), worker.len()), (1, 1), "one api and one worker");

    // Served by the container's api, run by the container's worker.
    let http = reqwest::Client::new();
    let done = run_to_end(
        &http,
        &container.base,
        &app.token(),
        &json!({"prompt": "one container, both halves", "model": "mock"}),
    )
    .await;
    assert_eq!(done["status"], "completed", "{done}");
    let succeeded = app
        .db
        .count("SELECT COUNT(*) FROM generation_attempts WHERE outcome = 'succeeded'")
        .await;
    assert_eq!(succeeded, 1);

    signal(&container.script, libc::SIGTERM);
    let status = tokio::time::timeout(Duration::from_secs(40), container.script.wait())
        .await
        .expect("the container stops within the worker's grace period")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    for pid in api.into_iter().chain(worker) {
        assert!(!alive(pid), "process {pid} outlived its container");
    }
}

#[tokio::test]
async fn the_container_entrypoint_stops_the_api_and_fails_when_the_worker_dies() {
    let app = spawn_app().await;
    let mut container = Container::start(&app).await;
    let api = container.child("llm-api");
    let worker = container.child("llm-worker");
    assert_eq!((api.len(), worker.len()), (1, 1));

    assert!(llm_tests::kill_pid(worker[0], libc::SIGKILL));
    let status = tokio::time::timeout(Duration::from_secs(30), container.script.wait())
        .await
        .expect("the container exits once its worker is gone")
        .unwrap();
    assert!(
        !status.success(),
        "a container that no longer works must not look finished: {status:?}"
    );
    assert!(!alive(api[0]), "the api was stopped with its worker gone");
}

/// The image's default command is the entry point above, copied in and listening on the
/// design's port; compose runs the api and the workers as separate services all the same.
#[test]
fn the_image_runs_api_and_worker_together_and_compose_runs_each_alone() {
    let read = |path: &str| std::fs::read_to_string(llm_tests::repo_root().join(path)).unwrap();
    let dockerfile = read("Dockerfile");
    let runtime = dockerfile
        .rsplit_once("\nFROM ")
        .map(|(_, stage)| stage)
        .unwrap();
    for line in [
        "COPY --chmod=0755 scripts/container-entrypoint.sh /usr/local/bin/",
        "ENV API_LISTEN=0.0.0.0:8000",
        "EXPOSE 8000 9100",
    ] {
        assert!(
            runtime.lines().any(|l| l == line),
            "the runtime stage has `{line}`"
        );
    }
    let cmd: Vec<&str> = runtime.lines().filter(|l| l.starts_with("CMD ")).collect();
    assert_eq!(cmd, ["CMD [\"container-entrypoint.sh\"]"]);
    let ignored = read(".dockerignore");
    assert!(
        !ignored
            .lines()
            .any(|l| l.trim_end_matches('/') == "scripts"),
        "the build context keeps scripts/"
    );
    let script = read("scripts/container-entrypoint.sh");
    assert!(
        script.starts_with("#!/bin/sh\n"),
        "POSIX sh: the image has no bash"
    );

    let compose = read("compose.yaml");
    assert!(compose.contains("    command: [\"llm-api\", \"serve\"]"));
    assert!(compose.contains("    command: [\"llm-worker\"]"));
    assert!(compose.contains("      API_LISTEN: 0.0.0.0:8100"));
}
