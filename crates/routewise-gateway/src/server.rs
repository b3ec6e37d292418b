//! Serving an [`AppState`] on a TCP listener until a shutdown signal.

use std::future::Future;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;

use crate::http::app;
use crate::state::AppState;

/// Serves the gateway on `listener` until `shutdown` resolves, then drains connections.
/// Accepted sockets get `TCP_NODELAY` (small JSON answers must not wait for Nagle).
/// With `bandit:` configured, the online router's state is attached first
/// ([`AppState::attach_online`]); a failure there (e.g. the state file cannot be opened)
/// is returned as an error naming the config file and field.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    state
        .attach_online()
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}
