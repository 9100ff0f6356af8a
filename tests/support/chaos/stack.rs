//! The processes a scenario starts: the environment every chaos `llm-api` / `llm-worker` runs
//! with, workers as they run in production, and the check that a process the scenario did not
//! kill is still running.

use std::process::Stdio;

use tokio::process::{Child, Command};

use super::report::Tally;
use crate::{TestDb, binary, redis_url};

/// A real `llm-worker` against the scenario's database with every `WORKER_*` setting at its
/// production default (concurrency, heartbeats, leases, polling), except a metrics port of its
/// own; `env` comes on top. Judged as deployed, not as tuned for quick tests.
pub(crate) fn spawn_worker(db: &TestDb, env: &[(&str, &str)]) -> Child {
    let logs = if std::env::var_os("TEST_PROCESS_LOGS").is_some() {
        Stdio::inherit()
    } else {
        Stdio::null()
    };
    Command::new(binary("llm-worker"))
        .env_clear()
        .env("DATABASE_URL", &db.url)
        .env("REDIS_URL", redis_url())
        .env("REDIS_KEY_PREFIX", db.redis_prefix())
        .env("WORKER_METRICS_LISTEN", "127.0.0.1:0")
        .envs(env.iter().copied())
        .stdout(logs)
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn llm-worker")
}

/// Environment of every chaos process: limits far above the load (one user sends it all),
/// small pools (the shared PostgreSQL serves parallel tests too), and `CHAOS_LOG_LEVEL`
/// (default `error`) so the table stays readable.
pub(crate) fn base_env(extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let level = std::env::var("CHAOS_LOG_LEVEL").unwrap_or_else(|_| "error".into());
    let mut env = vec![
        ("LOG_LEVEL", level),
        ("DATABASE_MAX_CONNECTIONS", "10".to_owned()),
        ("RATE_LIMIT_RPM", "1000000000".to_owned()),
        ("RATE_LIMIT_TPM", "4000000000".to_owned()),
        ("MOCK_PROVIDER", "true".to_owned()),
        ("USER_MAX_QUEUED", "0".to_owned()),
        ("USER_MAX_STREAMS", "0".to_owned()),
        ("USER_MAX_WAITS", "0".to_owned()),
    ];
    env.extend(extra.iter().cloned());
    env
}

/// The environment as the process spawners take it.
pub(crate) fn refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// A problem in `t` when `child` (named `what`) has exited.
pub(crate) fn still_running(child: &mut Child, what: &str, t: &mut Tally) {
    if !matches!(child.try_wait(), Ok(None)) {
        t.problem(format!("{what} exited"));
    }
}
