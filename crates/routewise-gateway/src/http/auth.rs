//! The HTTP side of `auth: {mode: keys}`: a middleware on the `/v1` routes that runs the
//! auth stage ([`crate::pipeline::auth`]) and hands the caller to the handlers, and the
//! admin API over the keys (`/admin/keys`), guarded by the admin key the operator puts
//! in `ROUTEWISE_ADMIN_KEY` (compared in constant time; without it the admin API answers
//! 403). The same admin key guards `POST /admin/reload` ([`crate::reload`]). Handlers
//! stay thin: extract, call [`crate::pipeline::auth::Keys`] or [`Live::reload`], map.

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use routewise_online::keys::{KeyRecord, KeySpec};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::http::extract::Current;
use crate::pipeline::auth;
use crate::reload::{Live, ReloadError};
use crate::state::AppState;
use routewise_online::store::keys::KeyOpError;

/// The environment variable holding the admin key.
pub const ADMIN_KEY_ENV: &str = "ROUTEWISE_ADMIN_KEY";

/// Runs the auth stage on a `/v1` request.
pub async fn require_key(Current(state): Current, mut req: Request, next: Next) -> Response {
    match auth::authenticate(&state, req.headers()).await {
        Ok(Some(caller)) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Ok(None) => next.run(req).await,
        Err(e) => {
            let endpoint = match req.uri().path() {
                "/v1/chat/completions" => "chat",
                "/v1/route" => "route",
                _ => "other",
            };
            state.metrics.request(endpoint, "-", e.status().as_u16());
            if endpoint == "chat" {
                state
                    .stats
                    .rejected(crate::stats::unix_ms(), e.status().as_u16());
            }
            e.into_response()
        }
    }
}

/// SHA-256 of an admin key (what the gateway keeps of it).
pub fn admin_key_hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Why an admin API call is refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("the admin API is off: start the gateway with {ADMIN_KEY_ENV} set")]
    Disabled,
    #[error("the admin key is missing or wrong")]
    BadAdminKey,
    #[error("virtual keys need `auth: {{mode: keys}}` in the config")]
    AuthOff,
    #[error("the body is not a key spec: {0}")]
    BadBody(String),
    #[error(transparent)]
    Op(#[from] KeyOpError),
    #[error(transparent)]
    Reload(#[from] crate::reload::ReloadError),
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let (status, code, param) = match &self {
            AdminError::Disabled => (StatusCode::FORBIDDEN, "admin_disabled", None),
            AdminError::BadAdminKey => (StatusCode::UNAUTHORIZED, "invalid_admin_key", None),
            AdminError::AuthOff => (StatusCode::CONFLICT, "auth_off", None),
            AdminError::BadBody(_) => (StatusCode::BAD_REQUEST, "invalid_request", None),
            AdminError::Op(KeyOpError::NotFound(_)) => {
                (StatusCode::NOT_FOUND, "key_not_found", None)
            }
            AdminError::Op(KeyOpError::Spec(s)) => {
                (StatusCode::BAD_REQUEST, "invalid_key_spec", Some(s.field))
            }
            AdminError::Op(KeyOpError::Store(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", None)
            }
            AdminError::Reload(ReloadError::Invalid(_)) => {
                (StatusCode::BAD_REQUEST, "invalid_config", None)
            }
            AdminError::Reload(ReloadError::NoFile) => {
                (StatusCode::CONFLICT, "no_config_file", None)
            }
            AdminError::Reload(ReloadError::Failed(_)) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "reload_failed", None)
            }
        };
        let message = match &self {
            AdminError::Op(KeyOpError::Spec(s)) => s.message.clone(),
            other => other.to_string(),
        };
        let kind = if status.is_server_error() {
            "server_error"
        } else {
            "invalid_request_error"
        };
        let mut body = crate::error::error_json(&message, kind, param, Some(code));
        // Every problem of a refused config, by field.
        if let AdminError::Reload(ReloadError::Invalid(c)) = &self {
            body["error"]["issues"] = c
                .issues
                .iter()
                .map(|i| json!({"field": i.path, "message": i.message}))
                .collect();
        }
        (status, Json(body)).into_response()
    }
}

/// Checks the admin key; the keys when it passes.
fn guard<'s>(state: &'s AppState, headers: &HeaderMap) -> Result<&'s auth::Keys, AdminError> {
    check_admin_key(state, headers)?;
    state.keys.get().ok_or(AdminError::AuthOff)
}

/// Checks the admin key (constant time).
pub(crate) fn check_admin_key(state: &AppState, headers: &HeaderMap) -> Result<(), AdminError> {
    let want = state.admin_key.get().ok_or(AdminError::Disabled)?;
    let got = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(routewise_online::keys::bearer)
        .unwrap_or("");
    if !bool::from(admin_key_hash(got).ct_eq(want)) {
        return Err(AdminError::BadAdminKey);
    }
    Ok(())
}

/// `POST /admin/reload`: reloads the config file; answers the generation now served. The
/// reload runs on its own task: a client that leaves does not cut it short.
pub async fn reload(
    State(live): State<Live>,
    headers: HeaderMap,
) -> Result<Json<Value>, AdminError> {
    check_admin_key(&live.current(), &headers)?;
    let r = tokio::spawn(async move { live.reload().await })
        .await
        .map_err(|e| ReloadError::Failed(e.to_string()))??;
    Ok(Json(json!({
        "reloaded": r.changed,
        "generation": r.generation,
        "version": r.version,
    })))
}

/// A record as the API shows it: everything but the hash.
pub fn public(r: &KeyRecord) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.remove("hash");
    }
    v
}

fn spec_of(body: &[u8]) -> Result<KeySpec, AdminError> {
    serde_json::from_slice(body).map_err(|e| AdminError::BadBody(e.to_string()))
}

/// `GET /admin/keys`.
pub async fn list(Current(state): Current, headers: HeaderMap) -> Result<Response, AdminError> {
    let all = guard(&state, &headers)?.list().await?;
    let data: Vec<Value> = all.iter().map(public).collect();
    Ok(Json(json!({"object": "list", "data": data})).into_response())
}

/// `POST /admin/keys` with a [`KeySpec`]: 201 with the key (shown this once).
pub async fn create(
    Current(state): Current,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, AdminError> {
    let ks = guard(&state, &headers)?;
    let new = ks.create(&state, &spec_of(&body)?).await?;
    let v = json!({"key": new.key, "record": public(&new.record)});
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

/// `PATCH /admin/keys/{id}` with the [`KeySpec`] fields to change.
pub async fn update(
    Current(state): Current,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, AdminError> {
    let ks = guard(&state, &headers)?;
    Ok(Json(public(
        &ks.update(&state, &id, &spec_of(&body)?).await?,
    )))
}

/// `DELETE /admin/keys/{id}`: revokes the key (its record stays, refused).
pub async fn revoke(
    Current(state): Current,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, AdminError> {
    let ks = guard(&state, &headers)?;
    Ok(Json(public(&ks.revoke(&state, &id).await?)))
}

/// `GET /v1/usage`: the caller key's spend, budget and what is left in this period.
pub async fn usage(
    Current(state): Current,
    caller: Option<axum::Extension<std::sync::Arc<crate::pipeline::auth::Caller>>>,
) -> Response {
    let Some(axum::Extension(c)) = caller else {
        return crate::error::ApiError::BadRequest {
            message: "GET /v1/usage reports a virtual key's spend: it needs `auth: {mode: keys}`"
                .into(),
            param: None,
            code: Some("auth_off"),
        }
        .into_response();
    };
    match crate::pipeline::budget::usage(&state, &c).await {
        Ok(u) => Json(u).into_response(),
        Err(e) => e.into_response(),
    }
}
