//! The HTTP layer: the route table ([`app`]), thin handlers ([`handlers`], [`feedback`])
//! and the extractors they share ([`extract`]). A handler extracts, calls the pipeline
//! ([`crate::pipeline`]) or a service, and maps the result; nothing else.
//!
//! | method | path | handler |
//! |---|---|---|
//! | POST | `/v1/chat/completions` | route, call the model (fallbacks, streaming) |
//! | POST | `/v1/route` | the decision only, no upstream call |
//! | POST | `/v1/feedback` | feedback on a decision (online learning) |
//! | GET | `/v1/models` | `auto` plus every configured model |
//! | GET | `/v1/stats/shadow` | the shadow routers' agreement, predicted savings and estimate |
//! | GET | `/healthz` | liveness |
//! | GET | `/readyz` | readiness from cached state: 503 while every model is cooling down (or a `state.required` store is unreachable) |
//! | GET | `/metrics` | Prometheus text |
//! | GET | `/v1/stats` | the dashboard's report (JSON; the admin key under `auth: {mode: keys}`) |
//! | GET | `/dashboard` | the live dashboard page (served from the binary) |
//! | GET | `/v1/usage` | the calling key's spend in its period |
//! | GET, POST, PATCH, DELETE | `/admin/keys[/{id}]` | virtual keys (admin key) |
//! | POST | `/admin/reload` | reload the config file (admin key; [`crate::reload`]) |
//!
//! Anything else is a 404 (405 for a wrong method) in OpenAI's error shape. A new endpoint
//! is one line here and one handler.

pub mod auth;
pub mod body;
pub mod dashboard;
pub mod extract;
pub mod feedback;
pub mod handlers;
pub mod limit;

use axum::routing::{get, post};
use axum::Router;

use crate::reload::Live;

/// The gateway's axum application over `state` (an [`crate::AppState`], served without
/// reloads, or a [`Live`] configuration). The `/v1/*` endpoints are behind load shedding
/// ([`limit`]); health and metrics are not, so they answer under any load.
pub fn app(state: impl Into<Live>) -> Router {
    let live: Live = state.into();
    let state = live.current();
    let v1 = Router::new()
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
            post(feedback::feedback).fallback(handlers::method_not_allowed),
        )
        .route(
            "/v1/models",
            get(handlers::models).fallback(handlers::method_not_allowed),
        )
        .route(
            "/v1/usage",
            get(auth::usage).fallback(handlers::method_not_allowed),
        )
        .route(
            "/v1/stats/shadow",
            get(handlers::shadow_stats).fallback(handlers::method_not_allowed),
        );
    // Auth inside load shedding: an overloaded gateway does not look keys up.
    let v1 = if state.config.auth.mode == crate::config::AuthMode::Keys {
        v1.route_layer(axum::middleware::from_fn_with_state(
            live.clone(),
            auth::require_key,
        ))
    } else {
        v1
    };
    let v1 = v1.route_layer(axum::middleware::from_fn_with_state(
        live.clone(),
        limit::shed,
    ));
    let admin = Router::new()
        .route(
            "/admin/keys",
            get(auth::list)
                .post(auth::create)
                .fallback(handlers::method_not_allowed),
        )
        .route(
            "/admin/keys/{id}",
            axum::routing::patch(auth::update)
                .delete(auth::revoke)
                .fallback(handlers::method_not_allowed),
        )
        .route(
            "/admin/reload",
            post(auth::reload).fallback(handlers::method_not_allowed),
        );
    Router::new()
        .merge(v1)
        .merge(admin)
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics))
        .route(
            "/v1/stats",
            get(dashboard::stats).fallback(handlers::method_not_allowed),
        )
        .route(
            "/dashboard",
            get(dashboard::page).fallback(handlers::method_not_allowed),
        )
        .fallback(handlers::not_found)
        .with_state(live)
}
