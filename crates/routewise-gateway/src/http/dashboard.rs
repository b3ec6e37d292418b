//! The dashboard's endpoints: `GET /dashboard` (the page, [`crate::dashboard::PAGE`]) and
//! `GET /v1/stats` (the report it draws, [`crate::dashboard::report`]). With `auth: {mode:
//! keys}` the report needs the admin key (it lists every key's spend); with open auth it
//! is open, like `/metrics`.

use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::config::AuthMode;
use crate::http::auth::check_admin_key;
use crate::http::extract::Current;

/// What the page may load: itself, and its own origin's report.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'";

pub async fn page() -> Response {
    let mut resp = crate::dashboard::PAGE.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    resp
}

pub async fn stats(Current(state): Current, headers: HeaderMap) -> Response {
    if state.config.auth.mode == AuthMode::Keys {
        if let Err(e) = check_admin_key(&state, &headers) {
            return e.into_response();
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    match crate::dashboard::report(&state, now).await {
        Ok(report) => Json(report).into_response(),
        Err(e) => e.into_response(),
    }
}
