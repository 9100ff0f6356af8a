//! The stack under measurement: the release `llm-api` and `llm-worker` binaries, started and
//! stopped as child processes with the benchmark's environment, and what the phases share to
//! reach them ([`Stack`]).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::cli::Args;
use crate::database::BenchDb;
use crate::sse::SseCounter;

pub const SECRET: &str = "benchmark-secret-key-of-sufficient-length!";

/// The directory of this binary, where the release `llm-api` and `llm-worker` must be too.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("binary directory")?
        .to_path_buf();
    for name in ["llm-api", "llm-worker"] {
        if !bin_dir.join(name).exists() {
            bail!(
                "{} missing: build with `cargo build --release --bins` (scripts/bench.sh does)",
                bin_dir.join(name).display()
            );
        }
    }
    Ok(bin_dir)
}

/// The environment of every process of the stack: the benchmark's database, Redis and hub.
pub fn environment(args: &Args, bench_db: &BenchDb, hub_url: &str) -> [(&'static str, String); 12] {
    [
        ("DATABASE_URL", bench_db.url.clone()),
        // A message hub that accepts every event: the outbox drains as in production.
        ("MESSAGE_HUB_URL", hub_url.to_owned()),
        ("REDIS_URL", args.redis_url.clone()),
        ("SECRET_KEY", SECRET.to_owned()),
        ("LOG_LEVEL", "warn".to_owned()),
        // The benchmark is one user sending far more than a user may: lift its limits (the
        // limiter still runs on every submit).
        ("RATE_LIMIT_RPM", "4000000000".to_owned()),
        // Its own Redis namespace: nothing shared with another run or a local deployment.
        ("REDIS_KEY_PREFIX", bench_db.redis_prefix()),
        ("RATE_LIMIT_TPM", "4000000000".to_owned()),
        ("MOCK_PROVIDER", "true".to_owned()),
        // Its backlog and its concurrent streams are far past one user's quotas too.
        ("USER_MAX_QUEUED", "0".to_owned()),
        ("USER_MAX_STREAMS", "0".to_owned()),
        ("USER_MAX_WAITS", "0".to_owned()),
    ]
}

/// Starts an `llm-api` listening on `port` and waits until it is healthy: the process and its
/// pid.
pub async fn start_api(
    bin_dir: &std::path::Path,
    env: &[(&str, String)],
    port: u16,
) -> anyhow::Result<(Child, u32)> {
    let listen = format!("127.0.0.1:{port}");
    let api = spawn(
        bin_dir.join("llm-api"),
        &["serve"],
        env,
        &[("API_LISTEN", listen.clone())],
    )?;
    wait_healthy(&format!("http://{listen}")).await?;
    let pid = api.id().context("api pid")?;
    Ok((api, pid))
}

/// What the measurements share: the settings, the binaries' directory, the processes'
/// environment, and an HTTP client of the api with its base URL and token.
pub struct Stack<'a> {
    pub args: &'a Args,
    pub api_pid: u32,
    pub bin_dir: &'a std::path::Path,
    pub env: &'a [(&'a str, String)],
    pub client: &'a reqwest::Client,
    pub base: &'a str,
    pub token: &'a str,
}

impl Stack<'_> {
    /// The api's address, for bare connections ([`crate::client::HitClient`]).
    pub fn api_addr(&self) -> anyhow::Result<std::net::SocketAddr> {
        Ok(self.base.trim_start_matches("http://").parse()?)
    }

    /// Opens a stream: `body` posted to `url` (`/api/v1/generate/stream`), its events to be
    /// read.
    pub async fn open_stream(
        &self,
        url: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<SseCounter> {
        let response = self
            .client
            .post(url)
            .bearer_auth(self.token)
            .json(&body)
            .send()
            .await?;
        Ok(SseCounter::new(response))
    }

    /// Starts an `llm-worker` named `name`, with `extra` environment.
    pub fn worker(&self, name: &str, extra: &[(&str, String)]) -> anyhow::Result<Child> {
        // Several workers share the machine: each its own free metrics port.
        let mut env = vec![
            ("WORKER_NAME", name.to_owned()),
            ("WORKER_METRICS_LISTEN", "127.0.0.1:0".to_owned()),
        ];
        env.extend(extra.iter().cloned());
        spawn(self.bin_dir.join("llm-worker"), &[], self.env, &env)
    }
}

fn spawn(
    path: PathBuf,
    args: &[&str],
    env: &[(&str, String)],
    extra: &[(&str, String)],
) -> anyhow::Result<Child> {
    Command::new(&path)
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", path.display()))
}

pub async fn stop(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    if tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

async fn wait_healthy(base: &str) -> anyhow::Result<()> {
    for _ in 0..100 {
        if reqwest::get(format!("{base}/health"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("llm-api did not become healthy")
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Deletes the run's Redis keys (its `REDIS_KEY_PREFIX`).
pub async fn forget_redis_namespace(redis_url: &str, prefix: &str) {
    if let Ok(client) = redis::Client::open(redis_url) {
        let _ = llm_shared::kv::forget_namespace(&client, prefix).await;
    }
}
