//! The dashboard's endpoints: `GET /dashboard` (the page, [`crate::dashboard::PAGE`]) and
//! `GET /v1/stats` (the report it draws, [`crate::dashboard::report`]). The report needs
//! the admin key whenever one is set (`ROUTEWISE_ADMIN_KEY`), and always with `auth:
//! {mode: keys}`: it lists every key's spend and the recent decision ids (which
//! `/v1/feedback` accepts). Open auth without an admin key (the demo) leaves it open.

use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::config::AuthMode;
use crate::http::auth::check_admin_key;
use crate::http::extract::Current;

/// What the page may load: itself, and its own origin's report.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

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
    if state.config.auth.mode == AuthMode::Keys || state.admin_key.get().is_some() {
        if let Err(e) = check_admin_key(&state, &headers) {
            return e.into_response();
        }
    }
    let report = crate::dashboard::report(&state, crate::stats::unix_ms()).await;
    let mut resp = Json(report).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
