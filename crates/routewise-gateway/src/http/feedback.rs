//! `POST /v1/feedback`: `{"decision_id", "score" (0..1, or true/false), "thumbs"
//! ("up"/"down"), "cost_usd"?, "latency_ms"?}`. Answers 200 with the ack once the store
//! committed (fsynced locally, acknowledged by Redis), else the typed error
//! (`routewise_online::FeedbackError`) in OpenAI's shape. Accepted feedback is logged
//! (target `routewise::feedback`: decision id, model, score) beside the decision lines.
//! Feedback on a cascaded decision also counts towards its verdict's statistics
//! (`routewise_cascade_feedback_total` and `..._score_total` by `accepted` / `escalated`):
//! how the answers the cascade accepted fare, online.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use routewise_online::{FeedbackError, FeedbackRequest};

use crate::error::error_json;
use crate::http::extract::read_request_body;
use crate::http::extract::Current;

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

pub async fn feedback(Current(state): Current, headers: HeaderMap, body: Body) -> Response {
    let gw = &*state;
    let Some(online) = gw.online.get() else {
        gw.metrics.feedback("disabled");
        return error_response(
            StatusCode::NOT_FOUND,
            "feedback_disabled",
            "feedback is not enabled on this gateway (add a `bandit:` block to its config)".into(),
        );
    };
    let bytes = match read_request_body(gw, &headers, body).await {
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
    match online.feedback.submit(&req).await {
        Ok(ack) => {
            gw.metrics.feedback("ok");
            // The outcome beside the decision lines, for `routewise replay --log`.
            if let Ok(fb) = req.validate() {
                if let Some(shadows) = gw.shadows.get() {
                    shadows.feedback(&ack.decision_id, &ack.model, fb.score);
                }
                if let Some(verdict) = &ack.cascade {
                    gw.metrics.cascade_feedback(verdict, fb.score);
                }
                tracing::info!(
                    target: "routewise::feedback",
                    decision_id = %ack.decision_id,
                    model = %ack.model,
                    score = fb.score,
                    cost_usd = req.cost_usd.unwrap_or(f64::NAN),
                    "feedback"
                );
            }
            Json(ack).into_response()
        }
        Err(e) => {
            gw.metrics.feedback(e.code());
            match e {
                // An outage is logged once, by the maintenance task (crate::online).
                FeedbackError::Unavailable(_) => {
                    tracing::debug!(decision_id = %req.decision_id, error = %e, "feedback not recorded")
                }
                FeedbackError::Store(_) => {
                    tracing::warn!(decision_id = %req.decision_id, error = %e, "feedback not recorded")
                }
                _ => {}
            }
            feedback_error(&e)
        }
    }
}
