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
//! [`AttemptOutcome`] so the attempt loop can fall back). What an upstream answered with a
//! status that is not a failure (2xx, a 4xx other than 429) is an answer. A new provider is
//! one file here plus one [`ProviderKind`] variant.

pub mod anthropic;
pub mod openai;
pub mod replay;

use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, StatusCode};
use bytes::Bytes;
use futures_util::Stream;

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
    /// An answer was passed to the client (2xx, or a 4xx other than 429).
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
}

impl AttemptOutcome {
    pub const ALL: [AttemptOutcome; 6] = [
        AttemptOutcome::Ok,
        AttemptOutcome::Http5xx,
        AttemptOutcome::Http429,
        AttemptOutcome::Timeout,
        AttemptOutcome::Connect,
        AttemptOutcome::Body,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AttemptOutcome::Ok => "ok",
            AttemptOutcome::Http5xx => "http_5xx",
            AttemptOutcome::Http429 => "http_429",
            AttemptOutcome::Timeout => "timeout",
            AttemptOutcome::Connect => "connect_error",
            AttemptOutcome::Body => "body_error",
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
}

/// What an attempt reports besides its answer: time to the upstream's response headers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    pub headers_after: Option<Duration>,
}

/// One way of reaching a model.
#[async_trait::async_trait]
pub trait Provider: Send + Sync + fmt::Debug {
    fn kind(&self) -> ProviderKind;

    /// Makes one attempt; never retries.
    async fn call(&self, call: Call<'_>, timing: &mut Timing) -> Result<Answer, Failure>;
}

/// Sends a JSON POST and waits for the response headers until `deadline`; a 5xx or a 429
/// is a [`Failure`] (fall back), any other status is returned for the provider to read.
pub(crate) async fn post_json(
    client: &reqwest::Client,
    url: &reqwest::Url,
    headers: &[(HeaderName, HeaderValue)],
    body: Vec<u8>,
    timeout: Duration,
    timing: &mut Timing,
) -> Result<reqwest::Response, Failure> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut rb = client
        .post(url.clone())
        .header(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )
        .body(body);
    for (name, value) in headers {
        rb = rb.header(name, value.clone());
    }
    let sent = std::time::Instant::now();
    let resp = match tokio::time::timeout_at(deadline, rb.send()).await {
        Err(_) => {
            return Err(Failure::new(
                AttemptOutcome::Timeout,
                format!("no response within {} ms", timeout.as_millis()),
            ))
        }
        Ok(Err(e)) => return Err(Failure::new(transport_outcome(&e), describe(&e))),
        Ok(Ok(r)) => r,
    };
    timing.headers_after = Some(sent.elapsed());
    let status = resp.status();
    if status.is_server_error() {
        return Err(Failure::new(
            AttemptOutcome::Http5xx,
            format!("HTTP {}", status.as_u16()),
        ));
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        return Err(Failure::new(AttemptOutcome::Http429, "HTTP 429"));
    }
    Ok(resp)
}

/// Reads a whole body within `timeout` of the call's start (`deadline`).
pub(crate) async fn read_body(
    resp: reqwest::Response,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<Bytes, Failure> {
    match tokio::time::timeout_at(deadline, resp.bytes()).await {
        Err(_) => Err(Failure::new(
            AttemptOutcome::Timeout,
            format!("body not complete within {} ms", timeout.as_millis()),
        )),
        Ok(Err(e)) => Err(Failure::new(AttemptOutcome::Body, describe(&e))),
        Ok(Ok(b)) => Ok(b),
    }
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

/// Describes a transport error with its causes, without the URL.
pub(crate) fn describe(e: &reqwest::Error) -> String {
    let mut msg = if e.is_connect() {
        "connect error".to_string()
    } else if e.is_timeout() {
        "timeout".to_string()
    } else if e.is_body() || e.is_decode() {
        "body error".to_string()
    } else {
        "transport error".to_string()
    };
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// The attempt outcome of a transport error.
pub(crate) fn transport_outcome(e: &reqwest::Error) -> AttemptOutcome {
    if e.is_timeout() {
        AttemptOutcome::Timeout
    } else if e.is_body() || e.is_decode() {
        AttemptOutcome::Body
    } else {
        AttemptOutcome::Connect
    }
}

/// Seconds since the Unix epoch (`created` of generated completions).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
