//! The api application: [`App::build`], the one way to build it from configuration (used by
//! `main` and by the test harness alike), and [`App::run`], which serves it until told to stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use llm_shared::db;
use llm_shared::listener::Listener;
use llm_shared::metrics::Metrics;
use llm_shared::models::{LiveRegistry, ModelRegistry};
use llm_shared::notices::{self, FinalNotices};
use llm_shared::prompts::PromptLibrary;
use llm_shared::registry_reloads;
use llm_shared::requests::{HIT_ROWS_ON_STOP, Submitter};
use llm_shared::stream_relay::RelayListener;
use tokio_util::sync::CancellationToken;

use crate::config::ApiConfig;
use crate::jwt::JwtKeys;
use crate::state::{ApiLimits, AppServices, AppState, Quotas};

/// The api, built and bound, ready to serve.
pub struct App {
    state: AppState,
    /// `CORS_ALLOWED_ORIGINS` as a layer; none when no origin is configured.
    cors: Option<tower_http::cors::CorsLayer>,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
}

impl App {
    /// Connects to PostgreSQL (and migrates it), loads the model registry and the prompt
    /// templates, starts the completion-notice listener and the relay's subscriber, and binds
    /// `API_LISTEN`. Refuses to build when the configuration is unsafe (e.g. no `SECRET_KEY`).
    pub async fn build(config: &ApiConfig) -> anyhow::Result<Self> {
        let secret = config.jwt_secret()?;
        let cors = crate::cors::layer(&crate::cors::allowed_origins(&config.cors_allowed_origins)?);
        let pool = db::connect(&config.common)
            .await
            .context("connecting to PostgreSQL")?;
        db::migrate(&pool).await?;
        // Read before the file: a reload announced after this is followed (`registry_reloads`).
        let registry_version = registry_reloads::current_version(&pool).await?;
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
        let notices = FinalNotices::default();
        tokio::spawn(notices.clone().sweep(pool.clone()));
        let relay = RelayListener::new(config.common.relay().context("parsing REDIS_URL")?);
        tokio::spawn(relay.clone().run());
        let cache = config
            .common
            .response_cache()
            .context("parsing REDIS_URL")?;
        let limiter = config.common.rate_limiter().context("parsing REDIS_URL")?;
        let submitter = Submitter::new(pool.clone(), Some(cache.clone()));
        // Reloads announced by any api (this one included) are followed here too.
        let models = LiveRegistry::new(models, config.common.clone());
        let reloads = registry_reloads::follower(models.clone(), pool.clone(), registry_version);
        let completions = notices.clone();
        let listener = Listener::default()
            .on(notices::CHANNEL, move |heard| completions.heard(heard))
            .on(registry_reloads::CHANNEL, reloads);
        tokio::spawn(listener.run(pool.clone()));
        let state: AppState = AppServices {
            pool,
            redis,
            relay,
            cache,
            submitter,
            limiter,
            jwt: JwtKeys::new(&secret).pinned(
                config.common.jwt_issuer.clone(),
                config.common.jwt_audience.clone(),
            ),
            models,
            prompts: Arc::new(prompts),
            notices,
            // Half the pool: submits and plain reads keep the other half.
            follow_reads: tokio::sync::Semaphore::new(
                (config.common.database_max_connections / 2).max(1) as usize,
            ),
            limits: ApiLimits {
                max_body_bytes: config.max_body_bytes,
                max_wait: Duration::from_secs(config.max_wait_secs),
                job_max_attempts: config.common.job_max_attempts,
                compat_wait: Duration::from_secs(config.openai_compat_wait_secs),
                stream_token_ttl: Duration::from_secs(config.stream_token_ttl_secs.into()),
            },
            quotas: Quotas {
                queued: llm_shared::quota::QueuedQuota {
                    max: config.user_max_queued,
                },
                streams: llm_shared::quota::UserSlots::new(config.user_max_streams),
                waits: llm_shared::quota::UserSlots::new(config.user_max_waits),
            },
            metrics: Arc::new(Metrics::new()),
            shutdown: CancellationToken::new(),
        }
        .into();
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr().unwrap_or(config.listen);
        Ok(Self {
            state,
            cors,
            listener,
            addr,
        })
    }

    /// The address the api listens on (with the port picked, when `API_LISTEN` said 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The state handlers share.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then drains: streams and long polls end at once, the
    /// short requests are answered, and the rows of cache hits answered before they were
    /// written are written before this returns.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(listen = %self.addr, "api listening");
        let stop = self.state.shutdown.clone();
        let submitter = self.state.submitter.clone();
        let pages = crate::openapi::routes().merge(crate::demo::routes());
        let app = crate::http::router(self.state, pages, self.cors);
        // Streams and long polls end as the stop begins, so the drain waits only for short
        // requests.
        crate::server::serve(self.listener, app, shutdown, move || stop.cancel()).await;
        if !submitter.finish_hit_writes(HIT_ROWS_ON_STOP).await {
            tracing::error!("api stopped with some answered cache hits' rows unwritten");
        }
        Ok(())
    }
}
