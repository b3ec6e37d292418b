//! Serving an [`AppState`] on a TCP listener until a shutdown signal.

use std::future::Future;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;

use crate::routes::app;
use crate::state::AppState;

/// Serves the gateway on `listener` until `shutdown` resolves, then drains connections.
/// Accepted sockets get `TCP_NODELAY` (small JSON answers must not wait for Nagle).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}
