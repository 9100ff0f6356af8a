//! `llm-api`: the HTTP front of the LLM service. Parses configuration and runs one of its
//! subcommands; everything else lives in the `llm_api` library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use llm_api::App;
use llm_api::config::ApiConfig;
use llm_api::jwt::JwtKeys;
use llm_shared::config::{self, CommonConfig};
use llm_shared::{db, telemetry};
use uuid::Uuid;

/// mimalloc rather than glibc's malloc: a request's task allocates on one runtime thread and
/// frees on another, and glibc's arenas then contend on their locks (a fifth of the api's CPU
/// per cache hit went to malloc and free; with mimalloc, 15-20 µs less per hit). Built without
/// transparent huge pages (`no_thp`): with them an idle api held 29 MB instead of 17.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "llm-api",
    version,
    about = "HTTP API of the LLM service (durable generation jobs)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Parser)]
struct ServeDefaults {
    #[command(flatten)]
    config: ApiConfig,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP API (the default).
    Serve(ApiConfig),
    /// Print a JWT for a user, signed with SECRET_KEY (local development and tests).
    Token {
        #[command(flatten)]
        common: CommonConfig,
        /// The user's UUID (the token's `sub`).
        #[arg(long)]
        user: Uuid,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl_secs: i64,
        /// Role claim, e.g. `admin`.
        #[arg(long)]
        role: Option<String>,
    },
    /// Apply database migrations and exit.
    Migrate(CommonConfig),
}

fn main() -> anyhow::Result<()> {
    let config = match Cli::parse().command {
        Some(Command::Serve(config)) => config,
        // No subcommand: serve, configured from the environment alone.
        None => ServeDefaults::parse_from(["llm-api"]).config,
        Some(Command::Token {
            common,
            user,
            ttl_secs,
            role,
        }) => {
            let secret = config::signing_secret(&common)?;
            let token = JwtKeys::new(&secret)
                .pinned(common.jwt_issuer.clone(), common.jwt_audience.clone())
                .issue(user, ttl_secs, role.as_deref())?;
            #[allow(clippy::print_stdout)]
            {
                println!("{token}");
            }
            return Ok(());
        }
        Some(Command::Migrate(common)) => {
            return tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(migrate(common));
        }
    };
    llm_api::runtime::api_runtime(config.pin_threads)
        .context("starting the async runtime")?
        .block_on(serve(config))
}

async fn migrate(common: CommonConfig) -> anyhow::Result<()> {
    let telemetry = telemetry::init(&common, "llm-api");
    let pool = db::connect(&common)
        .await
        .context("connecting to PostgreSQL")?;
    db::migrate(&pool).await?;
    tracing::info!("migrations applied");
    telemetry.shutdown().await;
    Ok(())
}

async fn serve(config: ApiConfig) -> anyhow::Result<()> {
    let telemetry = telemetry::init(&config.common, "llm-api");
    let served = async { App::build(&config).await?.run(shutdown_signal()).await }.await;
    tracing::info!("api stopped");
    telemetry.shutdown().await;
    served
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_valid() {
        super::Cli::command().debug_assert();
    }
}
