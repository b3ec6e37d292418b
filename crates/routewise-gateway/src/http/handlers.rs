//! Thin HTTP handlers: extract, call the core ([`crate::pipeline`]), map the result.

use std::sync::Arc;

use axum::body::Body;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;
use tracing::Instrument;

use crate::error::ApiError;
use crate::http::extract::read_request_body;
use crate::http::extract::Current;
use crate::pipeline;
use crate::pipeline::auth::Caller;

pub async fn chat_completions(
    Current(state): Current,
    caller: Option<Extension<Arc<Caller>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let span = tracing::debug_span!("chat_completions", body_bytes = tracing::field::Empty);
    async move {
        let bytes = match read_request_body(&state, &headers, body).await {
            Ok(b) => b,
            Err(e) => {
                state.metrics.request("chat", "-", e.status().as_u16());
                return e.into_response();
            }
        };
        tracing::Span::current().record("body_bytes", bytes.len());
        pipeline::chat(state, caller.map(|Extension(c)| c), headers, bytes).await
    }
    .instrument(span)
    .await
}

pub async fn route(
    Current(state): Current,
    caller: Option<Extension<Arc<Caller>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let caller = caller.map(|Extension(c)| c);
    let result = match read_request_body(&state, &headers, body).await {
        Ok(bytes) => pipeline::decide_only(&state, caller.as_deref(), &headers, &bytes),
        Err(e) => Err(e),
    };
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => {
            state.metrics.request("route", "-", e.status().as_u16());
            e.into_response()
        }
    }
}

pub async fn models(Current(state): Current) -> Response {
    let mut data =
        vec![json!({"id": "auto", "object": "model", "created": 0, "owned_by": "routewise"})];
    data.extend(state.upstreams.in_config_order().map(|u| {
        json!({"id": u.name, "object": "model", "created": 0, "owned_by": u.kind.name(),
               "context_window": u.context_window})
    }));
    Json(json!({"object": "list", "data": data})).into_response()
}

/// The shadow routers' statistics (`shadow:` in the config); an empty list without any.
pub async fn shadow_stats(Current(state): Current) -> Response {
    let shadows = state.shadows.get().map(|s| s.stats()).unwrap_or_default();
    Json(json!({"object": "list", "data": shadows})).into_response()
}

pub async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// Readiness from cached state only (never waits on a store): 503 while every model is
/// cooling down, or while the online state store is unreachable and `state.required`.
/// An unreachable optional store is reported as `degraded` and stays ready.
pub async fn readyz(Current(state): Current) -> Response {
    let now = state.now_ms();
    let available = state
        .upstreams
        .iter()
        .filter(|u| !u.breaker.is_open(now))
        .count();
    let mut ready = available > 0;
    let mut body = json!({"status": "ready",
                      "models": state.upstreams.len(), "models_available": available,
                      "config": {"version": state.version, "generation": state.generation}});
    if !ready {
        body["reason"] = json!("every model is cooling down after repeated failures");
    }
    if let Some(online) = state.online.get() {
        let up = online.feedback.available();
        let kind = online.feedback.store().kind();
        let required = state.config.state.required;
        state.metrics.state_available(kind, up);
        body["state"] = json!({"store": kind, "available": up, "required": required});
        if !up {
            ready &= !required;
            if ready {
                body["status"] = json!("degraded");
            }
            body["reason"] = json!(format!(
                "the {kind} state store is unreachable: routing goes on with the last known bandit statistics, feedback is refused"
            ));
        }
    }
    if !ready {
        body["status"] = json!("unavailable");
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

pub async fn metrics(Current(state): Current) -> Response {
    if let Some(online) = state.online.get() {
        state
            .metrics
            .state_available(online.feedback.store().kind(), online.feedback.available());
    }
    let now = state.now_ms();
    for u in state.upstreams.iter() {
        for d in &u.deployments {
            state.metrics.deployment(&u.name, &d.name, &d.load, now);
        }
    }
    let mut resp = state.metrics.render().into_response();
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

pub async fn not_found(uri: Uri) -> Response {
    ApiError::NotFound(uri.path().to_string()).into_response()
}

pub async fn method_not_allowed() -> Response {
    ApiError::MethodNotAllowed.into_response()
}
