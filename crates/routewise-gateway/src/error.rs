//! The one error type of the HTTP API, rendered in OpenAI's shape:
//! `{"error": {"message", "type", "param", "code"}}` with the matching status.
//!
//! Client mistakes are 4xx (`invalid_request_error`); upstream failures after all attempts
//! are 502 / 504 (`upstream_error`). Messages never carry upstream API keys: they are built
//! from our own text and upstream status codes, never from upstream bodies or headers.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answered to an API client.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// A malformed request (bad JSON, missing or mistyped field, bad header).
    #[error("{message}")]
    BadRequest {
        message: String,
        param: Option<String>,
        code: Option<&'static str>,
    },
    /// The body is over `limits.max_body_bytes`.
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// The requested model is neither `auto`/`routewise` nor a configured model.
    #[error("the model `{0}` does not exist; use `auto` or one of GET /v1/models")]
    ModelNotFound(String),
    /// No configured model has a context window large enough for the request.
    #[error("the request needs about {tokens} tokens; no eligible model has a context window that large")]
    ContextTooLong { tokens: u64 },
    /// No route matches the path.
    #[error("no route for {0}")]
    NotFound(String),
    /// The route exists but not for this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Every attempt failed (connection errors, 5xx, 429).
    #[error("{0}")]
    UpstreamFailed(String),
    /// Every attempt failed and the last one timed out.
    #[error("{0}")]
    UpstreamTimeout(String),
    /// The gateway is at `limits.max_in_flight`: try again shortly.
    #[error("the gateway is at its limit of {limit} requests in flight; retry shortly")]
    Overloaded { limit: usize },
    /// Every deployment of every eligible model stayed at its `max_concurrency` for
    /// `dispatch.queue_ms`: try again shortly.
    #[error("{0}")]
    AtCapacity(String),
    /// One client (IP) is at its share of requests in flight.
    #[error("too many requests in flight from this client (limit {limit}); retry shortly")]
    ClientLimit { limit: usize },
    /// The request body did not arrive within `limits.body_timeout_ms`.
    #[error("the request body did not arrive within {ms} ms")]
    BodyTimeout { ms: u64 },
    /// A route's `block` action, a route's pool without the named model, or the PII
    /// guard (`code`: `blocked_by_route` or `pii_blocked`); 400 or 403. The message never
    /// carries matched text.
    #[error("{message}")]
    Blocked {
        code: &'static str,
        status: u16,
        message: String,
        /// The route that blocked, sent as `x-routewise-route`.
        route: Option<String>,
    },
    /// `auth: {mode: keys}` and no valid key (missing, unknown, revoked, expired).
    #[error("{0}")]
    Unauthorized(String),
    /// The key's budget cannot cover the call (429 `budget_exceeded`).
    #[error("{0}")]
    BudgetExceeded(String),
    /// The key store could not be read to check a key not yet known to this instance.
    #[error("the key store is unreachable; retry shortly")]
    AuthUnavailable,
    /// A model named directly answered 429: passed through with its `Retry-After`.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: Option<HeaderValue>,
    },
}

impl ApiError {
    /// A 400 for a request field.
    pub fn bad_request(message: impl Into<String>, param: Option<&str>) -> ApiError {
        ApiError::BadRequest {
            message: message.into(),
            param: param.map(str::to_string),
            code: None,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } | ApiError::ContextTooLong { .. } => {
                StatusCode::BAD_REQUEST
            }
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::ModelNotFound(_) | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UpstreamFailed(_) => StatusCode::BAD_GATEWAY,
            ApiError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Overloaded { .. } | ApiError::AtCapacity(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::ClientLimit { .. } | ApiError::RateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::BudgetExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::AuthUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Blocked { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::FORBIDDEN)
            }
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            ApiError::UpstreamFailed(_) | ApiError::UpstreamTimeout(_) => "upstream_error",
            ApiError::Overloaded { .. } | ApiError::AtCapacity(_) | ApiError::AuthUnavailable => {
                "server_error"
            }
            ApiError::ClientLimit { .. } | ApiError::RateLimited { .. } => "rate_limit_error",
            ApiError::BudgetExceeded(_) => "insufficient_quota",
            _ => "invalid_request_error",
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            ApiError::BadRequest { param, .. } => param.as_deref(),
            ApiError::ModelNotFound(_) => Some("model"),
            ApiError::ContextTooLong { .. } => Some("messages"),
            _ => None,
        }
    }

    fn code(&self) -> Option<&'static str> {
        match self {
            ApiError::BadRequest { code, .. } => *code,
            ApiError::PayloadTooLarge { .. } => Some("request_too_large"),
            ApiError::ModelNotFound(_) => Some("model_not_found"),
            ApiError::ContextTooLong { .. } => Some("context_length_exceeded"),
            ApiError::NotFound(_) => Some("unknown_url"),
            ApiError::MethodNotAllowed => Some("method_not_allowed"),
            ApiError::UpstreamFailed(_) => Some("upstream_failed"),
            ApiError::UpstreamTimeout(_) => Some("upstream_timeout"),
            ApiError::Overloaded { .. } => Some("overloaded"),
            ApiError::AtCapacity(_) => Some("at_capacity"),
            ApiError::ClientLimit { .. } => Some("client_limit"),
            ApiError::BodyTimeout { .. } => Some("body_timeout"),
            ApiError::RateLimited { .. } => Some("rate_limited"),
            ApiError::Unauthorized(_) => Some("invalid_api_key"),
            ApiError::BudgetExceeded(_) => Some("budget_exceeded"),
            ApiError::AuthUnavailable => Some("auth_unavailable"),
            ApiError::Blocked { code, .. } => Some(*code),
        }
    }

    /// The OpenAI-shaped JSON body.
    pub fn body(&self) -> serde_json::Value {
        error_json(&self.to_string(), self.kind(), self.param(), self.code())
    }
}

/// An OpenAI-shaped error body: `{"error": {"message", "type", "param", "code"}}`.
pub(crate) fn error_json(
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> serde_json::Value {
    json!({"error": {
        "message": message,
        "type": kind,
        "param": param,
        "code": code,
    }})
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status(), self.body().to_string()).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match self {
            ApiError::Overloaded { .. }
            | ApiError::AtCapacity(_)
            | ApiError::ClientLimit { .. }
            | ApiError::AuthUnavailable => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::Unauthorized(_) => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::RateLimited {
                retry_after: Some(v),
                ..
            } => {
                h.insert(header::RETRY_AFTER, v);
            }
            ApiError::BodyTimeout { .. } => {
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            ApiError::Blocked { route: Some(r), .. } => {
                if let Ok(v) = HeaderValue::from_str(&r) {
                    h.insert(crate::pipeline::ROUTE_HEADER, v);
                }
            }
            _ => {}
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_openai_shape_with_status() {
        let e = ApiError::ModelNotFound("gpt-9".into());
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        let b = e.body();
        assert_eq!(b["error"]["code"], "model_not_found");
        assert_eq!(b["error"]["param"], "model");
        assert_eq!(b["error"]["type"], "invalid_request_error");
        assert!(b["error"]["message"].as_str().unwrap().contains("gpt-9"));
        let up = ApiError::UpstreamTimeout("x".into());
        assert_eq!(up.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(up.body()["error"]["type"], "upstream_error");
        assert_eq!(
            ApiError::PayloadTooLarge { limit: 3 }.status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
