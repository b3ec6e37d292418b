//! Load shedding at the door of every `/v1/*` endpoint: at most `limits.max_in_flight`
//! requests are served at once (a request counts until its response body ends, so a
//! stream counts while it streams); past that the answer is 503 with `Retry-After: 1`.
//! For a connection from a trusted proxy, the client behind it (from `x-forwarded-for`,
//! see [`crate::limits::TrustedProxies`]) gets at most `limits.max_connections_per_ip`
//! requests in flight (429 past that), the request-level form of the per-IP connection
//! cap.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::http::body::hold_until_body_ends;
use crate::http::extract::{Current, PeerAddr};
use crate::limits::Refused;
use crate::reload::Live;

pub async fn shed(State(live): State<Live>, mut req: Request, next: Next) -> Response {
    // The request's configuration is chosen here, once (see `Current`).
    let state = Current::of(&live, req.extensions_mut());
    let limits = &state.config.limits;
    let client = req.extensions().get::<PeerAddr>().and_then(|p| {
        let peer = p.0.ip();
        limits
            .trusted_proxies
            .contains(peer)
            .then(|| limits.trusted_proxies.client(peer, req.headers()))
    });
    match state
        .in_flight
        .admit(client, limits.max_in_flight, limits.max_connections_per_ip)
    {
        Ok(permit) => hold_until_body_ends(next.run(req).await, permit),
        Err(why) => {
            state.metrics.shed(why);
            let e = match why {
                Refused::Total => ApiError::Overloaded {
                    limit: limits.max_in_flight,
                },
                Refused::PerIp => ApiError::ClientLimit {
                    limit: limits.max_connections_per_ip,
                },
            };
            if req.uri().path() == "/v1/chat/completions" {
                state
                    .stats
                    .rejected(crate::stats::unix_ms(), e.status().as_u16());
            }
            e.into_response()
        }
    }
}
