//! Test harness: a fresh PostgreSQL database per test, the real router served on a random
//! port, in-process workers, and the real `llm-api` / `llm-worker` binaries as processes
//! (`TEST_PROCESS_LOGS=1` shows their logs). Also fake provider upstreams ([`fake_upstream`]),
//! private PostgreSQL / Redis servers a test may restart ([`servers`]), and the chaos suite's
//! scenarios ([`chaos`], run by `llm-chaos` and `tests/integration/chaos.rs`).
//!
//! `TEST_DATABASE_URL` (an admin connection, default the local `postgres` database) and
//! `TEST_REDIS_URL` say where the servers are; `scripts/test.sh` sets both.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod chaos;
pub mod fake_upstream;
pub mod otlp;
pub mod prom;
pub mod servers;
pub mod sse;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use clap::Parser;
use llm_api::App;
use llm_api::config::ApiConfig;
use llm_api::jwt::JwtKeys;
use llm_shared::config::CommonConfig;
use llm_shared::db;
use llm_shared::models::{LiveRegistry, ModelRegistry};
use llm_worker::config::WorkerConfig;
use secrecy::SecretString;
use serde_json::Value;
use sqlx::PgPool;
use tokio::process::{Child, Command};
use uuid::Uuid;

pub const TEST_SECRET: &str = "integration-test-secret-key-of-enough-length";

pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A database of its own for one test, migrated, dropped when the test ends.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
    admin: String,
}

impl TestDb {
    pub async fn new() -> Self {
        Self::on(&admin_url()).await
    }

    /// A database of its own on the server of `admin` (an admin connection URL).
    pub async fn on(admin: &str) -> Self {
        let name = format!("llmtest_{}", Uuid::now_v7().simple());
        let admin_pool = db::connect_url(admin, 1)
            .await
            .expect("connect to the admin database");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin_pool)
            .await
            .unwrap();
        admin_pool.close().await;
        let url = with_database(admin, &name);
        let pool = db::connect_url(&url, 20).await.unwrap();
        db::migrate(&pool).await.unwrap();
        Self {
            name,
            url,
            pool,
            admin: admin.to_owned(),
        }
    }

    /// The Redis key prefix of this test (its keys and channels never meet another test's).
    pub fn redis_prefix(&self) -> String {
        format!("{}:", self.name)
    }

    /// Runs a test's own counting query (test code only: the SQL is the test's literal).
    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin = self.admin.clone();
        let prefix = self.redis_prefix();
        // Drop runs inside the test's runtime: do the async clean-up on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(admin) = db::connect_url(&admin, 1).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&admin)
                    .await;
                }
                forget_redis_keys(&prefix).await;
            });
        })
        .join();
    }
}

/// Deletes the keys under a test's prefix on the shared Redis (its cache entries would
/// otherwise stay until their TTL). Best effort: a test's own tasks may still write a few.
async fn forget_redis_keys(prefix: &str) {
    if let Ok(client) = redis::Client::open(redis_url()) {
        let _ = llm_shared::kv::forget_namespace(&client, prefix).await;
    }
}

fn with_database(url: &str, name: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("database URL with a path");
    format!("{base}/{name}")
}

/// The real router on a random local port, against its own database.
pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub db: TestDb,
    pub jwt: JwtKeys,
    pub user: Uuid,
    pub http: reqwest::Client,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(redis_url()).await
}

pub async fn spawn_app_with(redis: String) -> TestApp {
    spawn_app_configured(redis, &[]).await
}

/// The app with provider configuration flags (e.g. `--openai-api-key`), so that it accepts
/// requests for those providers' models.
pub async fn spawn_app_with_providers(flags: &[String]) -> TestApp {
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    spawn_app_configured(redis_url(), &args).await
}

async fn spawn_app_configured(redis: String, registry_flags: &[&str]) -> TestApp {
    let db = TestDb::new().await;
    let addr = serve_api(&db, &redis, registry_flags).await;
    TestApp {
        addr,
        db,
        jwt: JwtKeys::new(&SecretString::from(TEST_SECRET)),
        user: Uuid::now_v7(),
        http: reqwest::Client::new(),
    }
}

/// Builds the api on `db` (and its Redis namespace) and serves it on a random local port.
async fn serve_api(db: &TestDb, redis: &str, registry_flags: &[&str]) -> std::net::SocketAddr {
    let prefix = db.redis_prefix();
    let prompts = prompts_dir();
    let mut args = vec![
        "llm-api",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        &db.url,
        "--redis-url",
        redis,
        "--redis-key-prefix",
        &prefix,
        "--secret-key",
        TEST_SECRET,
        "--prompts-dir",
        prompts.to_str().expect("a UTF-8 prompts path"),
        // Limits far above what tests send; the rate-limit tests set their own.
        "--rate-limit-rpm",
        "10000",
        "--rate-limit-tpm",
        "100000000",
        "--user-max-queued",
        "1000000",
        "--user-max-streams",
        "1000",
        "--user-max-waits",
        "1000",
        "--max-body-bytes",
        "65536",
        "--max-wait-secs",
        "30",
        "--openai-compat-wait-secs",
        "30",
        "--job-max-attempts",
        "5",
        "--stream-log-ttl-secs",
        "600",
        "--pin-threads",
        "false",
    ];
    args.extend_from_slice(&NO_PROVIDERS);
    args.push(MOCK_ON);
    args.extend_from_slice(registry_flags);
    let config = ApiArgs::try_parse_from(args).unwrap().config;
    let app = App::build(&config).await.unwrap();
    let addr = app.addr();
    tokio::spawn(app.run(std::future::pending()));
    addr
}

#[derive(Parser)]
#[command(args_override_self = true)]
struct ApiArgs {
    #[command(flatten)]
    config: ApiConfig,
}

impl TestApp {
    /// Another api replica on this app's database and Redis namespace, built with
    /// `registry_flags` as the first one was: its address.
    pub async fn replica(&self, registry_flags: &[&str]) -> std::net::SocketAddr {
        serve_api(&self.db, &redis_url(), registry_flags).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn token_for(&self, user: Uuid) -> String {
        self.jwt.issue(user, 3600, None).unwrap()
    }

    pub fn token(&self) -> String {
        self.token_for(self.user)
    }

    /// `method path` with `token` and an optional JSON body; returns status and JSON body
    /// (null if none).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, self.url(path)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        (
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        )
    }

    /// `GET path` as the test's user; returns status and JSON body (null if none).
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(self.url(path))
            .bearer_auth(self.token())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// `POST path` with a JSON body as the test's user; returns status and JSON body (null if
    /// none).
    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(self.url(path))
            .bearer_auth(self.token())
            .json(body)
            .send()
            .await
            .unwrap();
        (
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        )
    }

    /// `POST /api/v1/generate` as the test's user; returns status and JSON body.
    pub async fn submit(&self, body: Value) -> (u16, Value) {
        self.post_json("/api/v1/generate", &body).await
    }

    /// Submits and returns the request id, asserting the 202.
    pub async fn submit_ok(&self, body: Value) -> Uuid {
        let (status, json) = self.submit(body).await;
        assert_eq!(status, 202, "{json}");
        json["request_id"].as_str().unwrap().parse().unwrap()
    }

    /// Submits with the relay on (`?stream=true`, so the request's stream can follow its
    /// tokens) and returns the request id, asserting the 202.
    pub async fn submit_streamed(&self, body: Value) -> Uuid {
        let (status, json) = self.post_json("/api/v1/generate?stream=true", &body).await;
        assert_eq!(status, 202, "{json}");
        json["request_id"].as_str().unwrap().parse().unwrap()
    }

    /// The api's `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        let response = self.http.get(self.url("/metrics")).send().await.unwrap();
        response.text().await.unwrap()
    }

    pub async fn poll(&self, id: Uuid, wait_secs: u64) -> (u16, Value) {
        let response = self
            .http
            .get(self.url(&format!("/api/v1/generate/{id}?wait={wait_secs}")))
            .bearer_auth(self.token())
            .send()
            .await
            .unwrap();
        (
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        )
    }

    /// Polls until the request is final or `within` passes; returns the last body.
    pub async fn wait_final(&self, id: Uuid, within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (status, body) = self.poll(id, 5).await;
            assert_eq!(status, 200, "{body}");
            let state = body["status"].as_str().unwrap_or_default();
            if matches!(state, "completed" | "failed" | "cancelled")
                || tokio::time::Instant::now() >= deadline
            {
                return body;
            }
        }
    }

    /// Submits `bodies` at once and waits (bounded by `within`) until every request completed
    /// and apalis acknowledged every job (the acknowledgement follows the completing write).
    pub async fn complete_and_acknowledge(
        &self,
        bodies: Vec<Value>,
        within: Duration,
    ) -> Vec<Uuid> {
        let ids: Vec<Uuid> =
            futures::future::join_all(bodies.into_iter().map(|body| self.submit_ok(body))).await;
        for id in &ids {
            let done = self.wait_final(*id, within).await;
            assert_eq!(done["status"], "completed", "{done}");
        }
        self.wait_acknowledged(within).await;
        ids
    }

    /// Waits (bounded by `within`) until apalis acknowledged every job (`queue::acks` writes them
    /// `WORKER_ACK_DELAY_MS` after the first finished).
    pub async fn wait_acknowledged(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self
            .db
            .count("SELECT COUNT(*) FROM apalis.jobs WHERE status <> 'Done'")
            .await
            > 0
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "jobs not acknowledged"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[derive(Parser)]
#[command(args_override_self = true)]
struct CommonArgs {
    #[command(flatten)]
    config: CommonConfig,
}

/// Flags that pin the provider settings, so that keys or URLs in the developer's environment
/// never leak into a test.
const NO_PROVIDERS: [&str; 3] = ["--openai-api-key=", "--anthropic-api-key=", "--ollama-url="];

/// Tests run on the mock provider (off by default in a deployment); a test's own flags or
/// environment may turn it off again.
const MOCK_ON: &str = "--mock-provider=true";

/// Common configuration for tests: no provider configured unless `extra` configures one.
pub fn common_config(extra: &[&str]) -> CommonConfig {
    let mut args = vec!["test"];
    args.extend_from_slice(&NO_PROVIDERS);
    args.push(MOCK_ON);
    args.extend_from_slice(extra);
    CommonArgs::try_parse_from(args).unwrap().config
}

/// The model registry as the binaries load it, for the given configuration flags.
pub fn registry(extra: &[&str]) -> ModelRegistry {
    ModelRegistry::load(&common_config(extra)).unwrap()
}

#[derive(Parser)]
#[command(args_override_self = true)]
struct WorkerArgs {
    #[command(flatten)]
    config: WorkerConfig,
}

/// Worker configuration for tests: short heartbeats and leases so that recovery is quick.
pub fn worker_config(database_url: &str, extra: &[&str]) -> WorkerConfig {
    let prefix = format!("{}:", database_url.rsplit('/').next().unwrap_or("llmtest"));
    let redis = redis_url();
    let mut args = vec![
        "llm-worker",
        "--redis-key-prefix",
        &prefix,
        "--redis-url",
        &redis,
    ];
    args.extend_from_slice(&NO_PROVIDERS);
    args.push(MOCK_ON);
    args.extend_from_slice(&[
        "--database-url",
        database_url,
        "--heartbeat-secs",
        "1",
        "--lease-secs",
        "3",
        "--poll-ms",
        "200",
        "--shutdown-grace-secs",
        "10",
        "--concurrency",
        "16",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    args.extend_from_slice(extra);
    WorkerArgs::try_parse_from(args).unwrap().config
}

/// The model registry a worker with this configuration runs with.
pub fn worker_models(config: &WorkerConfig) -> LiveRegistry {
    LiveRegistry::new(
        ModelRegistry::load(&config.common).unwrap(),
        config.common.clone(),
    )
}

/// The flags that point the service at a fake OpenAI upstream (with a test key).
pub fn openai_flags(openai: &fake_upstream::FakeUpstream) -> Vec<String> {
    [
        "--openai-base-url",
        &openai.base_url,
        "--openai-api-key",
        "sk-test-0123456789",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The flags that point the service at a fake Anthropic upstream (with a test key).
pub fn anthropic_flags(anthropic: &fake_upstream::FakeUpstream) -> Vec<String> {
    [
        "--anthropic-base-url",
        &anthropic.base_url,
        "--anthropic-api-key",
        "sk-ant-test-0123456789",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A free local port (bound, then released: good enough for a test's own listener).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The app and an in-process worker, both configured with these provider flags.
pub async fn app_with_worker(flags: &[String]) -> (TestApp, InProcessWorker) {
    let app = spawn_app_with_providers(flags).await;
    let worker_flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let worker = start_worker(&app.db, &worker_flags);
    (app, worker)
}

/// A worker running inside the test process.
pub struct InProcessWorker {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

pub fn start_worker(db: &TestDb, extra: &[&str]) -> InProcessWorker {
    let config = worker_config(&db.url, extra);
    let pool = db.pool.clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = rx.await;
            Ok(())
        };
        llm_worker::run(config, pool, shutdown).await.unwrap();
    });
    InProcessWorker {
        stop: Some(tx),
        task,
    }
}

impl InProcessWorker {
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), &mut self.task).await;
    }
}

/// The repository's `prompts/` directory.
pub fn prompts_dir() -> PathBuf {
    repo_root().join("prompts")
}

/// The workspace's root folder.
pub fn repo_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// How many migrations (`*.sql` files) a directory of the repository holds, e.g. `migrations`.
pub fn migration_files(dir: &str) -> usize {
    std::fs::read_dir(repo_root().join(dir))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "sql")
        })
        .count()
}

/// The Python of a virtualenv with the official `openai` SDK (the version pinned in
/// `tests/python/requirements.txt`), created under `target/` on first use and kept.
pub async fn openai_sdk_python() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap().to_path_buf();
    let venv = target.join("openai-sdk-venv");
    let python = venv.join("bin/python");
    let requirements = repo_root().join("tests/python/requirements.txt");
    let stamp = venv.join("requirements.installed");
    let wanted = std::fs::read_to_string(&requirements).unwrap();
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return python;
    }
    let (venv_dir, py) = (venv.clone(), python.clone());
    tokio::task::spawn_blocking(move || {
        let run = |cmd: &mut std::process::Command| {
            let out = cmd.output().unwrap();
            assert!(
                out.status.success(),
                "{cmd:?} failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv_dir));
        run(std::process::Command::new(&py)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(&requirements));
    })
    .await
    .unwrap();
    std::fs::write(&stamp, wanted).unwrap();
    python
}

/// Path of a workspace binary built by `cargo build --workspace --bins`, next to the running
/// one: tests run from target/<profile>/deps/, binaries (`llm-chaos`) from target/<profile>/.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let here = exe.parent().unwrap();
    let path = [Some(here), here.parent()]
        .into_iter()
        .flatten()
        .map(|dir| dir.join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| here.join(name));
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A real `llm-worker` process against the test database.
pub fn spawn_worker_process(db: &TestDb, env: &[(&str, &str)]) -> Child {
    worker_process_command(db, env, process_stdout())
        .spawn()
        .expect("spawn llm-worker")
}

/// A real `llm-worker` process whose standard output (its logs) the test reads.
pub fn spawn_worker_process_logged(db: &TestDb, env: &[(&str, &str)]) -> Child {
    worker_process_command(db, env, Stdio::piped())
        .spawn()
        .expect("spawn llm-worker")
}

fn worker_process_command(db: &TestDb, env: &[(&str, &str)], stdout: Stdio) -> Command {
    let mut cmd = Command::new(binary("llm-worker"));
    cmd.env_clear()
        .env("DATABASE_URL", &db.url)
        .env("REDIS_URL", redis_url())
        .env("REDIS_KEY_PREFIX", db.redis_prefix())
        .env("LOG_LEVEL", "warn")
        .env("WORKER_HEARTBEAT_SECS", "1")
        .env("WORKER_LEASE_SECS", "3")
        .env("WORKER_POLL_MS", "200")
        .env("WORKER_CONCURRENCY", "8")
        .env("WORKER_METRICS_LISTEN", "127.0.0.1:0")
        .env("MOCK_PROVIDER", "true")
        .envs(env.iter().copied())
        .stdout(stdout)
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    cmd
}

/// A real `llm-api` process on a free port; returns it with its base URL once it is ready.
pub async fn spawn_api_process(db: &TestDb) -> (Child, String) {
    spawn_api_process_with(db, &[]).await
}

/// [`spawn_api_process`] with extra environment variables.
pub async fn spawn_api_process_with(db: &TestDb, env: &[(&str, &str)]) -> (Child, String) {
    spawn_api_process_on(db, free_port(), env).await
}

/// [`spawn_api_process_with`] on a given port (e.g. to restart an api where clients expect it).
pub async fn spawn_api_process_on(db: &TestDb, port: u16, env: &[(&str, &str)]) -> (Child, String) {
    let child = api_process_command(db, port, env, process_stdout())
        .spawn()
        .expect("spawn llm-api");
    (child, api_healthy(port).await)
}

/// A real `llm-api` process whose standard output (its logs) the test reads.
pub async fn spawn_api_process_logged(db: &TestDb, env: &[(&str, &str)]) -> (Child, String) {
    let port = free_port();
    let child = api_process_command(db, port, env, Stdio::piped())
        .spawn()
        .expect("spawn llm-api");
    (child, api_healthy(port).await)
}

fn api_process_command(db: &TestDb, port: u16, env: &[(&str, &str)], stdout: Stdio) -> Command {
    let mut cmd = Command::new(binary("llm-api"));
    cmd.arg("serve")
        .env_clear()
        .env("DATABASE_URL", &db.url)
        .env("REDIS_URL", redis_url())
        .env("REDIS_KEY_PREFIX", db.redis_prefix())
        .env("SECRET_KEY", TEST_SECRET)
        .env("PROMPTS_DIR", prompts_dir())
        .env("LOG_LEVEL", "warn")
        .env("API_LISTEN", format!("127.0.0.1:{port}"))
        .env("MOCK_PROVIDER", "true")
        .envs(env.iter().copied())
        .stdout(stdout)
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    cmd
}

/// The base URL of the api on `port` once it answers `/health`.
async fn api_healthy(port: u16) -> String {
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    for _ in 0..100 {
        if let Ok(r) = client.get(format!("{base}/health")).send().await
            && r.status().is_success()
        {
            return base;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("llm-api did not become healthy");
}

/// Where spawned processes' logs (stdout) go: nowhere, unless `TEST_PROCESS_LOGS` is set.
fn process_stdout() -> Stdio {
    if std::env::var_os("TEST_PROCESS_LOGS").is_some() {
        Stdio::inherit()
    } else {
        Stdio::null()
    }
}

/// Sends a signal to a child process.
pub fn signal(child: &Child, sig: i32) {
    let pid = child.id().expect("child still running") as i32;
    assert!(kill_pid(pid, sig), "kill({pid}, {sig}) failed");
}

/// Sends a signal to a process by id (e.g. a grandchild, started by a child); false if the
/// process is gone.
pub fn kill_pid(pid: i32, sig: i32) -> bool {
    unsafe_kill(pid, sig) == 0
}

#[allow(unsafe_code)]
fn unsafe_kill(pid: i32, sig: i32) -> i32 {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, sig) }
}

/// The generic plan of `sql` on `conn` (the one PostgreSQL keeps for a prepared statement
/// after a few runs), with every parameter NULL. Leaves `conn` planning generic plans.
pub async fn generic_plan(conn: &mut sqlx::PgConnection, sql: &str) -> String {
    let params = (1..=40)
        .take_while(|n| sql.contains(&format!("${n}")))
        .count();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET plan_cache_mode = force_generic_plan; PREPARE planned AS {sql}"
    )))
    .execute(&mut *conn)
    .await
    .unwrap();
    let nulls = vec!["NULL"; params].join(", ");
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN EXECUTE planned({nulls})"
    )))
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    sqlx::raw_sql("DEALLOCATE planned")
        .execute(&mut *conn)
        .await
        .unwrap();
    plan.join("\n")
}

/// The keys the tests' apis verify tokens with (`TEST_SECRET`), for processes spawned without a
/// [`TestApp`].
pub fn test_jwt() -> JwtKeys {
    JwtKeys::new(&SecretString::from(TEST_SECRET))
}

/// An admin override on the api at `base`: `user` may send one request per minute.
pub async fn limit_to_one_request_per_minute(base: &str, user: Uuid) {
    let admin = test_jwt()
        .issue(Uuid::now_v7(), 600, Some("admin"))
        .unwrap();
    let set = reqwest::Client::new()
        .put(format!("{base}/api/v1/admin/rate_limits/{user}"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"requests_per_minute": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200);
}
