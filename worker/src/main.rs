//! `llm-worker`: runs generation jobs from the shared PostgreSQL queue. Parses configuration,
//! connects and runs; everything else lives in the `llm_worker` library.

use anyhow::Context;
use clap::Parser;
use llm_shared::{db, telemetry};
use llm_worker::config::WorkerConfig;

#[derive(Debug, Parser)]
#[command(
    name = "llm-worker",
    version,
    about = "Worker of the LLM service: executes queued generation jobs"
)]
struct Cli {
    #[command(flatten)]
    config: WorkerConfig,
}

fn main() -> anyhow::Result<()> {
    let Cli { config } = Cli::parse();
    runtime(config.threads)
        .context("starting the async runtime")?
        .block_on(run(config))
}

/// One thread (`WORKER_THREADS`, see [`WorkerConfig::threads`]) or several.
fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    builder.enable_all().build()
}

async fn run(config: WorkerConfig) -> anyhow::Result<()> {
    let telemetry = telemetry::init(&config.common, "llm-worker");
    let ran = async {
        let pool = db::connect(&config.common)
            .await
            .context("connecting to PostgreSQL")?;
        db::migrate(&pool).await?;
        llm_worker::run(config, pool, shutdown_signal())
            .await
            .map_err(|e| anyhow::anyhow!("worker stopped with an error: {e}"))
    }
    .await;
    tracing::info!("worker stopped");
    telemetry.shutdown().await;
    ran
}

/// Resolves on SIGTERM or Ctrl-C: the worker then stops fetching and drains in-flight jobs.
async fn shutdown_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            res = tokio::signal::ctrl_c() => res,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_valid() {
        super::Cli::command().debug_assert();
    }
}
