//! The route table: every endpoint of the gateway, in one place.
//!
//! | method | path | handler |
//! |---|---|---|
//! | POST | `/v1/chat/completions` | route, call the model (fallbacks, streaming) |
//! | POST | `/v1/route` | the decision only, no upstream call |
//! | POST | `/v1/feedback` | feedback on a decision (online learning, [`crate::online`]) |
//! | GET | `/v1/models` | `auto` plus every configured model |
//! | GET | `/healthz` | liveness |
//! | GET | `/readyz` | readiness: 503 while every model is cooling down or the online state store is unreachable |
//! | GET | `/metrics` | Prometheus text |
//!
//! Anything else is a 404 (405 for a wrong method) in OpenAI's error shape.

use axum::routing::{get, post};
use axum::Router;

use crate::handlers;
use crate::online;
use crate::state::AppState;

/// The gateway's axum application.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route(
            "/v1/chat/completions",
            post(handlers::chat_completions).fallback(handlers::method_not_allowed),
        )
        .route(
            "/v1/route",
            post(handlers::route).fallback(handlers::method_not_allowed),
        )
        .route(
            "/v1/feedback",
            post(online::feedback).fallback(handlers::method_not_allowed),
        )
        .route(
            "/v1/models",
            get(handlers::models).fallback(handlers::method_not_allowed),
        )
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics))
        .fallback(handlers::not_found)
        .with_state(state)
}
