//! `llm-api`: the HTTP front of the LLM service. Parses configuration, builds the state and
//! serves; everything else lives in `llm_shared`.

use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use clap::{Parser, Subcommand};
use llm_shared::auth::JwtKeys;
use llm_shared::config::{self, ApiConfig, CommonConfig};
use llm_shared::http::{AppServices, AppState, Limits};
use llm_shared::models::{ModelRegistry, Models};
use llm_shared::notify::Completions;
use llm_shared::prompts::PromptLibrary;
use llm_shared::relay::RelayHub;
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
            let token = JwtKeys::new(&secret).issue(user, ttl_secs, role.as_deref())?;
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
    llm_shared::runtime::api_runtime(config.pin_threads)
        .context("starting the async runtime")?
        .block_on(serve(config))
}

async fn migrate(common: CommonConfig) -> anyhow::Result<()> {
    telemetry::init(&common);
    let pool = db::connect(&common)
        .await
        .context("connecting to PostgreSQL")?;
    db::migrate(&pool).await?;
    tracing::info!("migrations applied");
    Ok(())
}

async fn serve(config: ApiConfig) -> anyhow::Result<()> {
    telemetry::init(&config.common);
    let secret = config.jwt_secret()?;
    if config::present(&config.common.secret_key).is_none() {
        tracing::warn!("SECRET_KEY is not set: using the local development key (loopback only)");
    }
    let pool = db::connect(&config.common)
        .await
        .context("connecting to PostgreSQL")?;
    db::migrate(&pool).await?;
    let models = ModelRegistry::load(&config.common)?;
    let prompts = PromptLibrary::load(&config.common.prompts_dir)?;
    tracing::info!(templates = prompts.list().count(), dir = %config.common.prompts_dir.display(), "prompt templates loaded");
    for model in models.all() {
        if let Some(reason) = models.unavailable_reason(model) {
            tracing::info!(model = %model.id, reason, "model unavailable");
        }
    }
    tracing::info!(
        default_model = models.default_model(),
        "model registry loaded"
    );
    let redis = config.common.redis_client().context("parsing REDIS_URL")?;

    let completions = Completions::default();
    tokio::spawn(completions.clone().listen(pool.clone()));
    let hub = RelayHub::new(config.common.relay().context("parsing REDIS_URL")?);
    tokio::spawn(hub.clone().run());
    let cache = config
        .common
        .response_cache()
        .context("parsing REDIS_URL")?;
    let limiter = config.common.rate_limiter().context("parsing REDIS_URL")?;
    let submitter = llm_shared::requests::Submitter::new(pool.clone(), Some(cache.clone()));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let state: AppState = AppServices {
        pool,
        redis,
        hub,
        cache,
        submitter: submitter.clone(),
        limiter,
        jwt: JwtKeys::new(&secret),
        models: Models::new(models, config.common.clone()),
        prompts: std::sync::Arc::new(prompts),
        completions,
        limits: Limits {
            max_body_bytes: config.max_body_bytes,
            max_wait: Duration::from_secs(config.max_wait_secs),
            job_max_attempts: config.common.job_max_attempts,
            compat_wait: Duration::from_secs(config.openai_compat_wait_secs),
        },
        metrics: std::sync::Arc::new(llm_shared::metrics::Metrics::new()),
        shutdown: shutdown.clone(),
    }
    .into();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    tracing::info!(listen = %config.listen, "api listening");
    // Small writes (SSE events, short JSON answers) go out at once, not after a delayed ACK.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    // Made a service once: served as a plain `Router`, axum rebuilds its route table for every
    // connection (about 60 KB each, held while the connection lives, e.g. an open stream).
    let app = llm_shared::http::router(state).into_make_service();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            // Streams and long polls end now, so the drain waits only for short requests.
            shutdown.cancel();
        })
        .await?;
    // Every answer is given; the cache hits answered before their rows were written get them
    // now, before the runtime (and the hit writer with it) ends.
    if !submitter
        .finish_hit_writes(llm_shared::requests::HIT_ROWS_ON_STOP)
        .await
    {
        tracing::error!("api stopped with some answered cache hits' rows unwritten");
    }
    tracing::info!("api stopped");
    Ok(())
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
