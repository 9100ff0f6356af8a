//! A local message hub that accepts every event, so that the workers' outbox relays deliver as
//! they would to a live hub.

/// A local message hub that accepts every event (`POST /events` → 204) and counts them, so
/// that the workers' outbox relays deliver as they would to a live hub. It serves from a
/// thread of its own on a single-threaded runtime, as the load generator runs: it shares the
/// cores with what it measures.
pub struct HubSink {
    pub url: String,
    pub received: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl HubSink {
    pub fn start() -> anyhow::Result<Self> {
        let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = received.clone();
        let app = axum::Router::new().route(
            "/events",
            axum::routing::post(move || {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let url = format!("http://{}", listener.local_addr()?);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("hub-sink".into())
            .spawn(move || {
                runtime.block_on(async move {
                    if let Ok(listener) = tokio::net::TcpListener::from_std(listener) {
                        let _ = axum::serve(listener, app).await;
                    }
                })
            })?;
        Ok(Self { url, received })
    }
}
