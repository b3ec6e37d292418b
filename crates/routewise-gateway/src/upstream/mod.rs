//! Upstream providers: how one attempt reaches one model. Each provider implements
//! [`Provider`] in its own file and answers in OpenAI's chat-completions format, whatever
//! its wire protocol:
//!
//! * [`openai`]: any OpenAI-compatible HTTP server (OpenAI, vLLM, Ollama, ...);
//! * [`anthropic`]: Anthropic's Messages API, translated both ways (streaming included);
//! * [`replay`]: the built-in demo provider answering from recorded outcomes.
//!
//! A provider either answers ([`Answer`]: a complete body, or a stream whose first chunk
//! has arrived) or fails before anything reached the client ([`Failure`], classified by
//! [`AttemptOutcome`] so the attempt loop can fall back). The status decides
//! ([`post_json`]): 5xx, 429, and 401 / 403 / 404 (a revoked key, a model missing
//! upstream: the model's fault, not the client's) fail the attempt; 2xx is an answer,
//! with the model's key scrubbed from it ([`redact`]); any other 4xx is answered with an
//! error built from its status and the upstream's redacted message
//! ([`client_error_body`]), never with the upstream body itself. Besides its answer an
//! attempt reports [`AttemptInfo`]: the time to the response headers, the upstream's
//! request id and its rate-limit headers. A new provider is one file here plus one
//! [`ProviderKind`] variant.

pub mod anthropic;
pub mod client;
pub mod openai;
pub mod redact;
pub mod replay;

use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, StatusCode};
use bytes::Bytes;
use futures_util::Stream;

use self::client::{Endpoint, HttpClient, Response};
use crate::request::ChatRequest;

/// The wire protocols routewise speaks (`provider:` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// Any OpenAI-compatible chat-completions server.
    OpenAi,
    /// Anthropic's Messages API.
    Anthropic,
    /// The built-in demo provider answering from recorded outcomes.
    Replay,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 3] = [
        ProviderKind::OpenAi,
        ProviderKind::Anthropic,
        ProviderKind::Replay,
    ];

    /// The config name.
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Replay => "replay",
        }
    }

    /// Looks a config name up.
    pub fn from_name(name: &str) -> Option<ProviderKind> {
        ProviderKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Whether the provider calls a `base_url` (every one but the demo's).
    pub fn needs_url(self) -> bool {
        !matches!(self, ProviderKind::Replay)
    }

    /// The chat endpoint under `base_url` (`{base_url}/chat/completions`, ...).
    pub fn endpoint(self, base_url: &str) -> Result<reqwest::Url, String> {
        let path = match self {
            ProviderKind::OpenAi => "chat/completions",
            ProviderKind::Anthropic => "messages",
            ProviderKind::Replay => return Err("the replay provider has no URL".into()),
        };
        let url = reqwest::Url::parse(&format!("{}/{path}", base_url.trim_end_matches('/')))
            .map_err(|e| e.to_string())?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("scheme `{}` is not http or https", url.scheme()));
        }
        Ok(url)
    }

    /// The header that carries an API key (`Authorization: Bearer KEY` or `x-api-key`),
    /// marked sensitive so it is never logged; `Err` when the key cannot be a header.
    pub fn auth_header(self, key: &str) -> Result<(HeaderName, HeaderValue), String> {
        let (name, value) = match self {
            ProviderKind::OpenAi | ProviderKind::Replay => {
                (axum::http::header::AUTHORIZATION, format!("Bearer {key}"))
            }
            ProviderKind::Anthropic => (HeaderName::from_static("x-api-key"), key.to_string()),
        };
        let mut v = HeaderValue::from_str(&value)
            .map_err(|_| "the key holds characters not allowed in an HTTP header".to_string())?;
        v.set_sensitive(true);
        Ok((name, v))
    }
}

/// Why one upstream attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// An answer was passed to the client (2xx, or a 4xx other than 401, 403, 404, 429).
    Ok,
    /// HTTP 5xx (Anthropic's 529 `overloaded_error` included).
    Http5xx,
    /// HTTP 429.
    Http429,
    /// No first byte within the timeout.
    Timeout,
    /// Connection refused, reset, or another transport error before the first byte.
    Connect,
    /// The body broke before it was complete (non-streaming) or before its first chunk.
    Body,
    /// HTTP 401, 403 or 404: the key is refused or the model is missing upstream.
    UpstreamAuth,
}

impl AttemptOutcome {
    pub const ALL: [AttemptOutcome; 7] = [
        AttemptOutcome::Ok,
        AttemptOutcome::Http5xx,
        AttemptOutcome::Http429,
        AttemptOutcome::Timeout,
        AttemptOutcome::Connect,
        AttemptOutcome::Body,
        AttemptOutcome::UpstreamAuth,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AttemptOutcome::Ok => "ok",
            AttemptOutcome::Http5xx => "http_5xx",
            AttemptOutcome::Http429 => "http_429",
            AttemptOutcome::Timeout => "timeout",
            AttemptOutcome::Connect => "connect_error",
            AttemptOutcome::Body => "body_error",
            AttemptOutcome::UpstreamAuth => "upstream_auth",
        }
    }

    /// Position in [`AttemptOutcome::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The rest of a streamed answer, chunk by chunk (OpenAI SSE bytes).
pub type UpstreamStream = Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>;

/// A successful (non-retryable) upstream answer, in OpenAI's format.
pub enum Answer {
    Full {
        status: StatusCode,
        content_type: Option<HeaderValue>,
        body: Bytes,
    },
    Stream {
        status: StatusCode,
        content_type: Option<HeaderValue>,
        first: Bytes,
        rest: UpstreamStream,
    },
}

impl fmt::Debug for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Answer::Full { status, body, .. } => f
                .debug_struct("Full")
                .field("status", status)
                .field("bytes", &body.len())
                .finish(),
            Answer::Stream { status, .. } => {
                f.debug_struct("Stream").field("status", status).finish()
            }
        }
    }
}

/// A failed attempt: fall back.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub outcome: AttemptOutcome,
    pub detail: String,
}

impl Failure {
    pub fn new(outcome: AttemptOutcome, detail: impl Into<String>) -> Failure {
        Failure {
            outcome,
            detail: detail.into(),
        }
    }
}

/// One attempt's inputs.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub request: &'a ChatRequest,
    /// The model's routewise name (the replay provider answers as it).
    pub model: &'a str,
    /// The model name sent upstream.
    pub upstream_model: &'a str,
    /// Until the first byte (non-streaming: the whole body).
    pub timeout: Duration,
    /// The decision id (ids of generated completions).
    pub id: &'a str,
    /// Headers forwarded upstream: the request id and trace context ([`crate::trace`]).
    pub forward: &'a [(HeaderName, HeaderValue)],
}

/// What an attempt reports besides its answer.
#[derive(Debug, Clone, Default)]
pub struct AttemptInfo {
    /// Time to the upstream's response headers.
    pub headers_after: Option<Duration>,
    /// The upstream's own request id (`x-request-id`, or Anthropic's `request-id`).
    pub upstream_request_id: Option<String>,
    /// `retry-after` and `x-ratelimit-*`, passed on to clients of direct requests.
    pub rate_limit: Vec<(HeaderName, HeaderValue)>,
}

impl AttemptInfo {
    /// Reads what it keeps from an upstream response's headers.
    fn read(&mut self, headers: &axum::http::HeaderMap) {
        self.upstream_request_id = crate::trace::upstream_request_id(headers);
        self.rate_limit = headers
            .iter()
            .filter(|(name, _)| is_rate_limit_header(name.as_str()))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
    }

    /// The upstream's `Retry-After`, if it sent one.
    pub fn retry_after(&self) -> Option<&HeaderValue> {
        self.rate_limit
            .iter()
            .find(|(n, _)| n == axum::http::header::RETRY_AFTER)
            .map(|(_, v)| v)
    }
}

/// Whether a response header is about rate limits (passed on for direct requests).
fn is_rate_limit_header(name: &str) -> bool {
    name == "retry-after" || name.starts_with("x-ratelimit-")
}

/// One way of reaching a model.
#[async_trait::async_trait]
pub trait Provider: Send + Sync + fmt::Debug {
    fn kind(&self) -> ProviderKind;

    /// Makes one attempt; never retries.
    async fn call(&self, call: Call<'_>, info: &mut AttemptInfo) -> Result<Answer, Failure>;
}

/// Sends a JSON POST with `headers` and the call's forwarded headers, and waits for the
/// response headers within the call's timeout. 5xx, 429, 401, 403 and 404 are a
/// [`Failure`] (fall back); any other status is returned for the provider to read.
pub(crate) async fn post_json(
    client: &HttpClient,
    endpoint: &Endpoint,
    headers: &[(HeaderName, HeaderValue)],
    call: &Call<'_>,
    body: Vec<u8>,
    info: &mut AttemptInfo,
) -> Result<Response, Failure> {
    let timeout = call.timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let sent = std::time::Instant::now();
    let request = client.post_json(endpoint, headers.iter().chain(call.forward), body);
    let resp = match tokio::time::timeout_at(deadline, request).await {
        Err(_) => {
            return Err(Failure::new(
                AttemptOutcome::Timeout,
                format!("no response within {} ms", timeout.as_millis()),
            ))
        }
        Ok(Err(e)) => {
            let what = if e.is_connect() {
                "connect error"
            } else {
                "transport error"
            };
            return Err(Failure::new(
                AttemptOutcome::Connect,
                client::describe(what, &e),
            ));
        }
        Ok(Ok(r)) => r,
    };
    info.headers_after = Some(sent.elapsed());
    info.read(resp.headers());
    let status = resp.status();
    let outcome = match status {
        s if s.is_server_error() => AttemptOutcome::Http5xx,
        StatusCode::TOO_MANY_REQUESTS => AttemptOutcome::Http429,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => {
            AttemptOutcome::UpstreamAuth
        }
        _ => return Ok(resp),
    };
    Err(Failure::new(outcome, format!("HTTP {}", status.as_u16())))
}

/// The longest upstream error message passed on (in characters).
pub(crate) const MAX_ERROR_MESSAGE: usize = 1000;

/// The error body a client gets for an upstream's 4xx answer (one that is not a failure):
/// OpenAI's error shape, built from the status and the upstream's message (OpenAI's and
/// Anthropic's `{"error": {"message", "type"}}`), redacted and truncated. The upstream's
/// `type`, `param` and `code` are kept when they are short identifiers.
pub fn client_error_body(
    status: StatusCode,
    upstream_body: &[u8],
    model: &str,
    redactor: &redact::Redactor,
) -> Bytes {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(upstream_body).ok();
    let err = parsed.as_ref().and_then(|v| v.get("error"));
    let field = |k: &str| {
        err.and_then(|e| e.get(k))
            .and_then(serde_json::Value::as_str)
            .filter(|s| is_identifier(s) && !redactor.echoes(s))
    };
    let detail = err
        .and_then(|e| e.get("message"))
        .and_then(serde_json::Value::as_str)
        .map(|m| {
            let m: String = m.chars().take(MAX_ERROR_MESSAGE).collect();
            format!(": {}", redactor.message(&m))
        })
        .unwrap_or_default();
    let message = format!("model `{model}` answered HTTP {}{detail}", status.as_u16());
    let body = crate::error::error_json(
        &message,
        field("type").unwrap_or("upstream_error"),
        field("param"),
        field("code"),
    );
    Bytes::from(body.to_string())
}

/// A short `[A-Za-z0-9_.-]` word (an error type, code or parameter name).
pub(crate) fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'[' | b']'))
}

/// Reads a whole body within `timeout` of the call's start (`deadline`).
pub(crate) async fn read_body(
    resp: Response,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<Bytes, Failure> {
    use http_body_util::BodyExt;
    match tokio::time::timeout_at(deadline, resp.into_body().collect()).await {
        Err(_) => Err(Failure::new(
            AttemptOutcome::Timeout,
            format!("body not complete within {} ms", timeout.as_millis()),
        )),
        Ok(Err(e)) => Err(Failure::new(
            AttemptOutcome::Body,
            client::describe("body error", &e),
        )),
        Ok(Ok(b)) => Ok(b.to_bytes()),
    }
}

/// The body of `resp` as a stream of chunks (errors described).
pub(crate) fn body_stream(resp: Response) -> impl Stream<Item = Result<Bytes, String>> + Send {
    use futures_util::StreamExt;
    http_body_util::BodyDataStream::new(resp.into_body())
        .map(|r| r.map_err(|e| client::describe("body error", &e)))
}

/// Waits for the first non-empty chunk of `stream` until `deadline`.
pub(crate) async fn first_chunk<S>(
    stream: &mut S,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<Bytes, Failure>
where
    S: Stream<Item = Result<Bytes, String>> + Unpin,
{
    use futures_util::StreamExt;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => {
                return Err(Failure::new(
                    AttemptOutcome::Timeout,
                    format!("no stream data within {} ms", timeout.as_millis()),
                ))
            }
            Ok(None) => {
                return Err(Failure::new(
                    AttemptOutcome::Body,
                    "the stream ended before any data",
                ))
            }
            Ok(Some(Err(e))) => return Err(Failure::new(AttemptOutcome::Body, e)),
            Ok(Some(Ok(b))) if b.is_empty() => continue,
            Ok(Some(Ok(b))) => return Ok(b),
        }
    }
}

/// Seconds since the Unix epoch (`created` of generated completions).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upstream_error_body_is_rebuilt_never_passed_on() {
        let r = redact::Redactor::new(Some("sk-secret-0123456789"));
        let upstream = br#"{"error": {"message": "Invalid key sk-secret-0123456789 for <b>org</b>", "type": "invalid_request_error", "param": "messages", "code": "bad key with spaces", "extra": "kept out"}}"#;
        // Review finding: the key in `param` or `code` (identifier-shaped) must not pass.
        let sneaky = br#"{"error": {"message": "x", "type": "sk-secret-0123456789", "param": "sk-secret-0123456789", "code": "sk-secret-0123456789"}}"#;
        let out = client_error_body(StatusCode::BAD_REQUEST, sneaky, "m1", &r);
        assert!(!out.windows(10).any(|w| w == b"0123456789"), "{out:?}");
        let body = client_error_body(StatusCode::BAD_REQUEST, upstream, "m1", &r);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.starts_with("model `m1` answered HTTP 400: Invalid key [REDACTED]"));
        assert!(!msg.contains("0123456789"));
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "messages");
        assert!(v["error"]["code"].is_null());
        assert!(!body.windows(8).any(|w| w == b"kept out"));
        let html = client_error_body(
            StatusCode::CONFLICT,
            b"<html>sk-secret-0123456789</html>",
            "m1",
            &r,
        );
        let v: serde_json::Value = serde_json::from_slice(&html).unwrap();
        assert_eq!(v["error"]["message"], "model `m1` answered HTTP 409");
        assert_eq!(v["error"]["type"], "upstream_error");
    }

    #[test]
    fn rate_limit_headers_are_the_ones_kept() {
        assert!(is_rate_limit_header("retry-after"));
        assert!(is_rate_limit_header("x-ratelimit-remaining-requests"));
        assert!(!is_rate_limit_header("set-cookie"));
        assert!(!is_rate_limit_header("x-request-id"));
    }
}
