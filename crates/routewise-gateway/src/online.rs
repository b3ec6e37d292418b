//! Online learning in the gateway (issue 5): the bandit router, the decision records kept
//! for feedback, and `POST /v1/feedback`. The learning itself lives in
//! [`routewise_online`]; this module only wires it to HTTP.
//!
//! * Enabled by the config's `bandit:` block; [`attach`] (called by [`crate::serve`])
//!   builds the [`OnlineRouter`] over the engine's catalog (warm-started from the engine's
//!   offline router; configured models the artifact lacks join with an optimistic prior
//!   and forced exploration), opens the `state:` store (local redb file, or Redis) and loads its
//!   statistics. Without `bandit:` nothing here runs and routing is unchanged.
//! * `model: auto` requests are ranked by [`decide`]; once a model has answered, its
//!   [`DecisionRecord`] (decision id = the `x-routewise-decision-id` header, bandit context,
//!   prior reward, realised cost, latency) is stored for `state.decision_ttl_s`. A
//!   non-streaming answer is recorded before it is returned, so feedback may follow
//!   immediately; a stream's record is written when the stream ends.
//! * [`feedback`] answers `POST /v1/feedback`: 200 with the ack once the store committed
//!   (fsynced locally, acknowledged by Redis), else the typed error in OpenAI's shape.
//! * A background task pulls shared statistics every `state.refresh_interval_ms` (Redis:
//!   other instances' feedback) and purges expired decisions hourly (local store).

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use routewise_features::Featurizer;
use routewise_online::service::now_ms;
use routewise_online::{
    DecisionRecord, FeedbackError, FeedbackRequest, FeedbackService, OnlineDecision, OnlineRouter,
};
use routewise_router::Policy;
use tokio::task::JoinHandle;

use crate::config::ConfigError;
use crate::error::error_json;
use crate::handlers::read_body;
use crate::state::{AppState, Gateway};

/// The online router and its state, once attached.
#[derive(Debug)]
pub struct Online {
    pub router: Arc<OnlineRouter>,
    pub feedback: Arc<FeedbackService>,
    task: JoinHandle<()>,
}

impl Drop for Online {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The slot in [`Gateway`] holding the online part (empty until [`attach`]).
pub type OnlineSlot = OnceLock<Online>;

/// Builds the online router and opens its state when the config has `bandit:`; a no-op
/// otherwise or when already attached. Errors name the config file and field.
pub async fn attach(state: &AppState) -> Result<(), ConfigError> {
    let gw = &**state;
    let Some(bandit) = gw.config.bandit.clone() else {
        return Ok(());
    };
    if gw.online.get().is_some() {
        return Ok(());
    }
    let file = gw.config.source.clone();
    let router = OnlineRouter::new(
        bandit,
        &gw.engine.catalog,
        gw.new_models.clone(),
        gw.engine.featurizer.dim(),
    )
    .map_err(|e| ConfigError::single(&file, "bandit", e.to_string()))?;
    let router = Arc::new(router);
    let field = if gw.config.state.redis_url.is_some() {
        "state.redis_url"
    } else {
        "state.path"
    };
    let svc = FeedbackService::open(Arc::clone(&router), &gw.config.state)
        .await
        .map_err(|e| ConfigError::single(&file, field, e.to_string()))?;
    let feedback = Arc::new(svc);
    let task = tokio::spawn(maintain(
        Arc::downgrade(&feedback),
        Duration::from_millis(gw.config.state.refresh_interval_ms),
    ));
    let online = Online {
        router,
        feedback,
        task,
    };
    // A concurrent attach may have won: ours is dropped (its task aborted).
    let _ = gw.online.set(online);
    Ok(())
}

/// Periodic refresh of shared statistics and purge of expired decisions; ends when the
/// service is dropped.
async fn maintain(svc: Weak<FeedbackService>, every: Duration) {
    const PURGE_EVERY: Duration = Duration::from_secs(3600);
    let mut since_purge = Duration::ZERO;
    loop {
        tokio::time::sleep(every).await;
        let Some(svc) = svc.upgrade() else { return };
        if let Err(e) = svc.refresh().await {
            tracing::debug!(error = %e, "online state refresh failed");
        }
        since_purge += every;
        if since_purge >= PURGE_EVERY {
            since_purge = Duration::ZERO;
            match svc.purge_expired().await {
                Ok(n) if n > 0 => tracing::info!(purged = n, "expired decisions purged"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot purge expired decisions"),
            }
        }
    }
}

/// Ranks the catalog for `prompt` with the online router (offline prior + bandit).
pub fn decide(
    gw: &Gateway,
    online: &Online,
    prompt: &str,
    input_tokens: u32,
    policy: Policy,
) -> OnlineDecision {
    let features = gw.engine.featurizer.featurize(prompt);
    online
        .router
        .decide(&gw.engine.router, &features, input_tokens, policy)
}

/// The record of a decision answered by upstream `m`: realised cost when the upstream
/// reported usage, else the decision's expected cost for that model.
pub fn record(
    gw: &Gateway,
    online: &Online,
    od: &OnlineDecision,
    id: &str,
    m: usize,
    cost: Option<f64>,
    latency_ms: f64,
) -> DecisionRecord {
    let ci = gw.upstreams[m].catalog_index;
    let cost = cost
        .filter(|c| c.is_finite() && *c >= 0.0)
        .unwrap_or(od.decision.costs[ci]);
    online
        .router
        .record(od, id.to_string(), ci, cost, Some(latency_ms), now_ms())
}

/// Stores a decision record; failures are logged and counted, never fail the request.
pub async fn store(gw: &Gateway, rec: DecisionRecord) {
    let Some(online) = gw.online.get() else {
        return;
    };
    let id = rec.id.clone();
    let result = online.feedback.record_decision(rec).await;
    gw.metrics.decision_recorded(result.is_ok());
    if let Err(e) = result {
        tracing::warn!(decision_id = %id, error = %e, "cannot keep the decision for feedback");
    }
}

/// Stores a record without waiting (streams, and while the store is unreachable).
pub fn store_in_background(state: AppState, rec: DecisionRecord) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move { store(&state, rec).await });
    }
}

/// Whether a record should be written before answering (store reachable).
pub fn store_inline(gw: &Gateway) -> bool {
    gw.online.get().is_some_and(|o| o.feedback.available())
}

fn error_response(status: StatusCode, code: &'static str, message: String) -> Response {
    let kind = if status.is_server_error() {
        "server_error"
    } else {
        "invalid_request_error"
    };
    let body = error_json(&message, kind, None, Some(code));
    (status, Json(body)).into_response()
}

fn feedback_error(e: &FeedbackError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    error_response(status, e.code(), e.to_string())
}

/// `POST /v1/feedback`: `{"decision_id", "score" (0..1, or true/false), "thumbs"
/// ("up"/"down"), "cost_usd"?, "latency_ms"?}`.
pub async fn feedback(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let gw = &*state;
    let Some(online) = gw.online.get() else {
        gw.metrics.feedback("disabled");
        return error_response(
            StatusCode::NOT_FOUND,
            "feedback_disabled",
            "feedback is not enabled on this gateway (add a `bandit:` block to its config)".into(),
        );
    };
    let bytes = match read_body(&headers, body, gw.config.limits.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => {
            gw.metrics.feedback("invalid_request");
            return e.into_response();
        }
    };
    let req: FeedbackRequest = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            gw.metrics.feedback("invalid_request");
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("invalid feedback body: {e}"),
            );
        }
    };
    let result = online.feedback.submit(&req).await;
    match result {
        Ok(ack) => {
            gw.metrics.feedback("ok");
            Json(ack).into_response()
        }
        Err(e) => {
            gw.metrics.feedback(e.code());
            if e.status() >= 500 {
                tracing::warn!(decision_id = %req.decision_id, error = %e, "feedback not recorded");
            }
            feedback_error(&e)
        }
    }
}
