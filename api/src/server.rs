//! The api's HTTP/1.1 server: accepts connections, serves each with hyper's HTTP/1 connection
//! and the router, and stops gracefully (no new connections, each one finishes its answer).
//!
//! Why not `axum::serve`: it serves each connection through hyper-util's HTTP/1-or-2 detection,
//! which reads the first 24 bytes on their own and hands them back before the request: hyper's
//! read buffer (8 KB) then holds a partial head when it reads again, and grows to 16 KB for the
//! connection's whole life. That was half of what an open stream cost (heaptrack of an api with
//! 3,000 open streams: 16.4 of 32 KB each). The api speaks HTTP/1.1 only.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long the accept loop pauses after an error that is not about one connection (e.g. out
/// of file descriptors), so that it does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` until `shutdown` resolves; then accepts nothing more, calls
/// `on_shutdown` (which ends long-lived answers), and returns once every connection has closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()>,
    on_shutdown: impl FnOnce(),
) {
    let mut builder = http1::Builder::new();
    builder.keep_alive(true);
    let connections = TaskTracker::new();
    let closing = CancellationToken::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(err) if is_connection_error(&err) => continue,
            Err(err) => {
                tracing::error!(error = %err, "accepting a connection failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        // Small writes (SSE events, short JSON answers) go out at once, not after a delayed ACK.
        let _ = tcp.set_nodelay(true);
        // A clone of the router is a reference count: its route table is built once.
        let service = TowerToHyperService::new(router.clone());
        // With upgrades: a WebSocket (`http::ws`) takes the connection over once answered.
        let connection = builder
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades();
        let closing = closing.clone();
        connections.spawn(async move {
            let mut connection = pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::trace!(error = %err, "connection ended with an error");
                    }
                    return;
                }
                () = closing.cancelled() => connection.as_mut().graceful_shutdown(),
            }
            if let Err(err) = connection.await {
                tracing::trace!(error = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    on_shutdown();
    closing.cancel();
    connections.close();
    connections.wait().await;
}

/// Errors about one connection (it went away before it was accepted): the next one is fine.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
