//! Extractors shared by the handlers, and what the server puts in each request.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::http::HeaderMap;
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::error::ApiError;
use crate::reload::Live;
use crate::state::{AppState, Gateway};

/// The configuration a request runs on: loaded once, by the first layer that asks (load
/// shedding on `/v1`), and kept in the request's extensions, so that the auth middleware
/// and the handler see the same generation even when a reload lands in between.
#[derive(Debug, Clone)]
pub struct Current(pub AppState);

impl Current {
    /// The request's generation, loading (and keeping) the current one on first use.
    pub fn of(live: &Live, extensions: &mut axum::http::Extensions) -> AppState {
        if let Some(c) = extensions.get::<Current>() {
            return c.0.clone();
        }
        let state = live.current();
        extensions.insert(Current(state.clone()));
        state
    }
}

impl axum::extract::FromRequestParts<Live> for Current {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        live: &Live,
    ) -> Result<Current, Self::Rejection> {
        Ok(Current(Current::of(live, &mut parts.extensions)))
    }
}

/// The TCP peer of the connection a request arrived on (a request extension set by
/// [`crate::server`]; absent when the app is called without a socket, as in tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// Reads the body within the gateway's `limits.max_body_bytes` and `limits.body_timeout_ms`.
pub async fn read_request_body(
    gw: &Gateway,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, ApiError> {
    let limits = &gw.config.limits;
    let ms = limits.body_timeout_ms;
    match tokio::time::timeout(
        Duration::from_millis(ms),
        read_body(headers, body, limits.max_body_bytes),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(ApiError::BodyTimeout { ms }),
    }
}

/// Reads a body of at most `limit` bytes (a larger declared `content-length` is refused
/// before reading).
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::PayloadTooLarge { limit })
        }
        Err(e) => Err(ApiError::bad_request(
            format!("cannot read the request body: {e}"),
            None,
        )),
    }
}
