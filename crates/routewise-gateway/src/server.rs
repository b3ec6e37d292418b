//! Serving an [`AppState`] on a TCP listener until a shutdown signal.

use std::future::Future;

use tokio::net::TcpListener;

use crate::routes::app;
use crate::state::AppState;

/// Serves the gateway on `listener` until `shutdown` resolves, then drains connections.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}
