//! A real mock LLM upstream on loopback, for routewise's tests and benchmarks.
//!
//! [`MockUpstream`] serves two protocols on one port: OpenAI's `POST /v1/chat/completions`
//! and Anthropic's `POST /v1/messages` (both JSON and SSE streaming; Anthropic's requires
//! `max_tokens` and answers in its own message, event and error shapes), plus
//! `GET /v1/models` and `GET /healthz`, with axum over hyper, on its own accept loop so
//! that it can misbehave the way real upstreams do, in either protocol:
//!
//! * answer with any HTTP status (500, 429, 529, ...) in the protocol's error shape
//!   (Anthropic: 529 is `overloaded_error`),
//! * delay before the response headers,
//! * reset the connection (TCP RST) instead of answering,
//! * break a stream after `n` chunks (connection aborted mid-body) or stall it forever,
//! * stream slowly (one chunk per interval, for client-disconnect tests),
//! * echo the request it received back in the response (`"mock_echo": true` in the body),
//! * answer a given text per model ([`MockUpstream::set_model_answer`]: cascade tests),
//!   with token logprobs when asked (`"logprobs": true`: one entry per word, each with
//!   the model's set logprob, [`MockUpstream::set_model_logprob`], else -0.05), or a 400
//!   for a model set to refuse the parameter ([`MockUpstream::set_model_refuses_logprobs`]),
//! * leak the caller's API key, as real upstreams do: error messages quote the key they
//!   were sent (`Incorrect API key provided: sk-...` for a 401), and `"mock_leak_key": true`
//!   puts it in the answer's content.
//!
//! Like real upstreams it sends its own request id (`x-request-id`; Anthropic:
//! `request-id`), and a 429 carries `retry-after` and `x-ratelimit-*` headers.
//!
//! A fault is chosen per request, first from the FIFO queue ([`MockUpstream::push_faults`]),
//! then from the per-model setting ([`MockUpstream::set_model_fault`]), then from the
//! requested model's name: `mock-500`, `mock-429`, `mock-reset`, `mock-delay-<ms>`,
//! `mock-break-<n>`, `mock-stall-<n>`, `mock-slow-<ms>`, `mock-flaky-<percent>` (a
//! reproducible mix of 500, reset, stall, 429 and 401 on that share of requests), so a
//! config file alone can make the mock binary misbehave. Anything else answers normally.
//!
//! The mock records what it saw (hits per model, request bodies and `Authorization`
//! headers when recording is on), counts responses that were abandoned before they
//! finished (`cancelled`: the observable effect of a client disconnect), and the requests
//! it is answering at once and their peak (`in_flight`, `peak_in_flight`: what a
//! concurrency cap in front of it is checked against).
//!
//! [`redis::RedisServer`] launches a throwaway `redis-server` for tests of shared state.

pub mod redis;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// One way the mock can answer a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Answer with this status and an OpenAI-shaped error body.
    Status(u16),
    /// Wait this long before the response headers, then answer normally.
    Delay(Duration),
    /// Reset the connection without answering.
    Reset,
    /// Streaming: send this many chunks, then abort the connection.
    BreakStream(usize),
    /// Streaming: send this many chunks, then hang forever.
    StallStream(usize),
    /// Streaming: send many chunks, one per interval.
    SlowStream(Duration),
    /// Fail this percentage of requests, each with one of [`FLAKY_MIX`] (picked by a hash
    /// of the request's sequence number, so a run is reproducible); answer the rest.
    Flaky(u8),
}

/// How long a flaky "stall" holds the response headers: past any sane request timeout.
pub const FLAKY_STALL: Duration = Duration::from_secs(90);

/// The failures of [`Fault::Flaky`], equally likely: HTTP 500, a connection reset, a
/// stall before the headers ([`FLAKY_STALL`]), HTTP 429 and HTTP 401.
pub const FLAKY_MIX: [&str; 5] = ["500", "reset", "stall", "429", "401"];

/// SplitMix64: the flaky fault's hash of a sequence number.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Fault {
    /// The concrete fault of a flaky model for request number `seq` (`None`: answer).
    pub fn resolve(self, seq: u64) -> Option<Fault> {
        let Fault::Flaky(pct) = self else {
            return Some(self);
        };
        let h = splitmix(seq);
        if h % 100 >= u64::from(pct) {
            return None;
        }
        Some(
            match FLAKY_MIX[((h >> 32) % FLAKY_MIX.len() as u64) as usize] {
                "500" => Fault::Status(500),
                "reset" => Fault::Reset,
                "stall" => Fault::Delay(FLAKY_STALL),
                "429" => Fault::Status(429),
                _ => Fault::Status(401),
            },
        )
    }
}

impl Fault {
    /// Parses a model-name directive (`mock-500`, `mock-delay-200`, ...).
    pub fn from_model_name(model: &str) -> Option<Fault> {
        let rest = model.strip_prefix("mock-")?;
        let (kind, arg) = match rest.split_once('-') {
            Some((k, a)) => (k, Some(a)),
            None => (rest, None),
        };
        let num = || arg.and_then(|a| a.parse::<u64>().ok());
        match kind {
            "reset" => Some(Fault::Reset),
            "delay" => num().map(|ms| Fault::Delay(Duration::from_millis(ms))),
            "break" => num().map(|n| Fault::BreakStream(n as usize)),
            "stall" => num().map(|n| Fault::StallStream(n as usize)),
            "slow" => num().map(|ms| Fault::SlowStream(Duration::from_millis(ms))),
            "flaky" => num().filter(|p| *p <= 100).map(|p| Fault::Flaky(p as u8)),
            code => code
                .parse::<u16>()
                .ok()
                .filter(|c| (100..600).contains(c))
                .map(Fault::Status),
        }
    }
}

/// Which protocol a request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `POST /v1/chat/completions`.
    OpenAi,
    /// `POST /v1/messages`.
    Anthropic,
}

/// A request as the mock received it (kept only when recording is on).
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub protocol: Protocol,
    pub model: String,
    pub body: Value,
    pub authorization: Option<String>,
    /// `x-api-key` (Anthropic).
    pub api_key: Option<String>,
    /// `anthropic-version` (Anthropic).
    pub anthropic_version: Option<String>,
    /// `x-request-id` as received.
    pub request_id: Option<String>,
    /// `traceparent` as received.
    pub traceparent: Option<String>,
}

/// The `retry-after` the mock sends with a 429.
pub const MOCK_RETRY_AFTER: &str = "7";

/// Options of a mock server.
#[derive(Debug, Clone)]
pub struct MockOptions {
    /// Keep every request body (tests); off for benchmarks.
    pub record: bool,
}

impl Default for MockOptions {
    fn default() -> Self {
        MockOptions { record: true }
    }
}

/// Shared state of a mock server.
#[derive(Debug, Default)]
pub struct MockState {
    record: bool,
    faults: Mutex<VecDeque<Fault>>,
    model_faults: Mutex<HashMap<String, Fault>>,
    /// Content to answer with, per model (else `mock answer from ...`).
    model_answers: Mutex<HashMap<String, String>>,
    /// Each token's logprob, per model, when logprobs are asked for (else
    /// [`DEFAULT_LOGPROB`]).
    model_logprobs: Mutex<HashMap<String, f64>>,
    /// Models that refuse the `logprobs` parameter with a 400.
    refuses_logprobs: Mutex<HashMap<String, ()>>,
    hits: Mutex<HashMap<String, u64>>,
    requests: Mutex<Vec<RecordedRequest>>,
    total: AtomicU64,
    completed: AtomicU64,
    cancelled: AtomicU64,
    seq: AtomicU64,
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sets `model`'s entry of a per-model setting, or removes it with `None`.
fn set_or_clear<T>(map: &Mutex<HashMap<String, T>>, model: &str, value: Option<T>) {
    let mut m = lock(map);
    match value {
        Some(v) => {
            m.insert(model.to_string(), v);
        }
        None => {
            m.remove(model);
        }
    }
}

impl MockState {
    /// A fresh state (for [`serve`]).
    pub fn with_options(options: &MockOptions) -> Self {
        MockState {
            record: options.record,
            ..MockState::default()
        }
    }

    fn fault_for(&self, model: &str) -> Option<Fault> {
        if let Some(f) = lock(&self.faults).pop_front() {
            return Some(f);
        }
        if let Some(f) = lock(&self.model_faults).get(model) {
            return Some(f.clone());
        }
        Fault::from_model_name(model)
    }
}

/// A running mock upstream; stops accepting when dropped.
pub struct MockUpstream {
    addr: SocketAddr,
    state: Arc<MockState>,
    task: JoinHandle<()>,
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockUpstream {
    /// Starts a recording mock on an ephemeral loopback port.
    pub async fn start() -> std::io::Result<MockUpstream> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        Self::start_on(listener, MockOptions::default())
    }

    /// Starts a mock on `listener`.
    pub fn start_on(listener: TcpListener, options: MockOptions) -> std::io::Result<MockUpstream> {
        let addr = listener.local_addr()?;
        let state = Arc::new(MockState::with_options(&options));
        let task = tokio::spawn(serve(listener, state.clone()));
        Ok(MockUpstream { addr, state, task })
    }

    /// `http://127.0.0.1:PORT/v1`, the value for a model's `base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Queues faults for the next requests (any model), in order.
    pub fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        lock(&self.state.faults).extend(faults);
    }

    /// Makes every request for `model` fail with `fault` (or answer normally with `None`).
    pub fn set_model_fault(&self, model: &str, fault: Option<Fault>) {
        set_or_clear(&self.state.model_faults, model, fault);
    }

    /// Makes every answer for `model` carry `content` (or the default text with `None`):
    /// what a cascade's answer extractors read.
    pub fn set_model_answer(&self, model: &str, content: Option<&str>) {
        set_or_clear(
            &self.state.model_answers,
            model,
            content.map(str::to_string),
        );
    }

    /// Makes every token of `model`'s answers carry `logprob` when a request asks for
    /// logprobs (or [`DEFAULT_LOGPROB`] with `None`).
    pub fn set_model_logprob(&self, model: &str, logprob: Option<f64>) {
        set_or_clear(&self.state.model_logprobs, model, logprob);
    }

    /// Makes `model` refuse requests that ask for logprobs with a 400, as some upstreams
    /// do (`false`: accept them again).
    pub fn set_model_refuses_logprobs(&self, model: &str, refuses: bool) {
        set_or_clear(&self.state.refuses_logprobs, model, refuses.then_some(()));
    }

    /// Requests received for `model` (the name sent upstream).
    pub fn hits(&self, model: &str) -> u64 {
        lock(&self.state.hits).get(model).copied().unwrap_or(0)
    }

    /// Requests received in total.
    pub fn total_hits(&self) -> u64 {
        self.state.total.load(Ordering::SeqCst)
    }

    /// Every request received so far (recording mocks only).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state.requests).clone()
    }

    /// Responses fully produced.
    pub fn completed(&self) -> u64 {
        self.state.completed.load(Ordering::SeqCst)
    }

    /// Responses abandoned before they finished (the client went away).
    pub fn cancelled(&self) -> u64 {
        self.state.cancelled.load(Ordering::SeqCst)
    }

    /// Requests being answered now (a stream counts until its last byte or its cut).
    pub fn in_flight(&self) -> u64 {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests answered at once since the start (or the last reset).
    pub fn peak_in_flight(&self) -> u64 {
        self.state.peak_in_flight.load(Ordering::SeqCst)
    }

    /// Sets the peak back to the requests in flight now.
    pub fn reset_peak(&self) {
        self.state
            .peak_in_flight
            .store(self.in_flight(), Ordering::SeqCst);
    }

    /// Waits up to `timeout` until at least `n` responses were cancelled.
    pub async fn wait_cancelled(&self, n: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if self.cancelled() >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.cancelled() >= n
    }
}

/// Kills the connection a request arrived on.
#[derive(Clone)]
struct Killer(Arc<Notify>);

/// Serves the mock on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, state: Arc<MockState>) {
    let app = router(state);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Keep a duplicate of the socket so that a kill can set SO_LINGER 0 (RST on close).
        let Ok(std_stream) = stream.into_std() else {
            continue;
        };
        let Ok(dup) = std_stream.try_clone() else {
            continue;
        };
        let Ok(stream) = tokio::net::TcpStream::from_std(std_stream) else {
            continue;
        };
        let kill = Arc::new(Notify::new());
        let killer = Killer(kill.clone());
        let svc = tower::ServiceExt::map_request(app.clone(), move |mut req: Request<_>| {
            req.extensions_mut().insert(killer.clone());
            req
        });
        let svc = hyper_util::service::TowerToHyperService::new(svc);
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = kill.notified() => {
                    let _ = socket2::SockRef::from(&dup).set_linger(Some(Duration::ZERO));
                }
            }
            drop(dup);
        });
    }
}

fn router(state: Arc<MockState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/messages", post(messages))
        .route("/v1/models", get(models))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state)
}

async fn models() -> Response {
    json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": [{"id": "mock", "object": "model", "created": 0, "owned_by": "routewise-testkit"}]}),
    )
}

/// Counts a response in flight while it lives, as completed when `done`, as cancelled
/// when dropped before.
struct Guard {
    state: Arc<MockState>,
    done: bool,
}

impl Guard {
    fn new(state: Arc<MockState>) -> Guard {
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        Guard { state, done: false }
    }

    fn done(mut self) {
        self.done = true;
        self.state.completed.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::SeqCst);
        if !self.done {
            self.state.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn chat(
    State(state): State<Arc<MockState>>,
    Extension(killer): Extension<Killer>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(state, killer, headers, body, Protocol::OpenAi).await
}

async fn messages(
    State(state): State<Arc<MockState>>,
    Extension(killer): Extension<Killer>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(state, killer, headers, body, Protocol::Anthropic).await
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn handle(
    state: Arc<MockState>,
    killer: Killer,
    headers: HeaderMap,
    body: Bytes,
    protocol: Protocol,
) -> Response {
    let guard = Guard::new(state.clone());
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            guard.done();
            return error(
                protocol,
                StatusCode::BAD_REQUEST,
                &format!("mock: bad JSON: {e}"),
            );
        }
    };
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    state.total.fetch_add(1, Ordering::SeqCst);
    *lock(&state.hits).entry(model.clone()).or_insert(0) += 1;
    if state.record {
        lock(&state.requests).push(RecordedRequest {
            protocol,
            model: model.clone(),
            body: req.clone(),
            authorization: header_str(&headers, header::AUTHORIZATION.as_str()),
            api_key: header_str(&headers, "x-api-key"),
            anthropic_version: header_str(&headers, "anthropic-version"),
            request_id: header_str(&headers, "x-request-id"),
            traceparent: header_str(&headers, "traceparent"),
        });
    }
    let key = header_str(&headers, header::AUTHORIZATION.as_str())
        .map(|a| a.trim_start_matches("Bearer ").to_string())
        .or_else(|| header_str(&headers, "x-api-key"))
        .unwrap_or_default();
    let upstream_id = format!("req_mock_{}", state.total.load(Ordering::Relaxed));
    let mut resp = answer(&state, &killer, guard, req, &model, &key, protocol).await;
    let id_header = match protocol {
        Protocol::OpenAi => "x-request-id",
        Protocol::Anthropic => "request-id",
    };
    if let Ok(v) = header::HeaderValue::from_str(&upstream_id) {
        resp.headers_mut().insert(id_header, v);
    }
    resp
}

/// The answer to a recorded, valid-JSON request.
async fn answer(
    state: &Arc<MockState>,
    killer: &Killer,
    guard: Guard,
    req: Value,
    model: &str,
    key: &str,
    protocol: Protocol,
) -> Response {
    let model = model.to_string();
    if protocol == Protocol::Anthropic {
        // The Messages API requires max_tokens and at least one message.
        let has_messages = req
            .get("messages")
            .and_then(Value::as_array)
            .is_some_and(|m| !m.is_empty());
        if req.get("max_tokens").and_then(Value::as_u64).is_none() || !has_messages {
            guard.done();
            return error(
                protocol,
                StatusCode::BAD_REQUEST,
                "mock: max_tokens and a non-empty messages array are required",
            );
        }
    }
    let asks_logprobs = req.get("logprobs").and_then(Value::as_bool) == Some(true);
    if asks_logprobs && lock(&state.refuses_logprobs).contains_key(&model) {
        guard.done();
        return error(
            protocol,
            StatusCode::BAD_REQUEST,
            "mock: this model does not support the `logprobs` parameter",
        );
    }
    let fault = state
        .fault_for(&model)
        .and_then(|f| f.resolve(state.total.load(Ordering::Relaxed)));
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    match fault {
        Some(Fault::Status(code)) => {
            guard.done();
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let message = match code {
                401 => format!("Incorrect API key provided: {key}. You can find your API key at https://example.invalid/keys."),
                _ => format!("mock: injected HTTP {code} (request sent with key {key})"),
            };
            let mut resp = error(protocol, status, &message);
            if code == 429 {
                let h = resp.headers_mut();
                h.insert(
                    header::RETRY_AFTER,
                    header::HeaderValue::from_static(MOCK_RETRY_AFTER),
                );
                h.insert(
                    "x-ratelimit-remaining-requests",
                    header::HeaderValue::from_static("0"),
                );
                h.insert(
                    "x-ratelimit-reset-requests",
                    header::HeaderValue::from_static("7s"),
                );
            }
            return resp;
        }
        Some(Fault::Reset) => {
            killer.0.notify_one();
            std::future::pending::<()>().await;
        }
        Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
        _ => {}
    }
    let seq = state.seq.fetch_add(1, Ordering::Relaxed);
    let mut answer = Answer::new(&req, &model, seq);
    if let Some(c) = lock(&state.model_answers).get(&model) {
        answer.content = c.clone();
    }
    if let Some(&l) = lock(&state.model_logprobs).get(&model) {
        answer.logprob = l;
    }
    if req.get("mock_leak_key").and_then(Value::as_bool) == Some(true) {
        answer.content = format!("the key I was called with is {key}");
    }
    if !stream {
        let body = match protocol {
            Protocol::OpenAi => answer.completion(&req),
            Protocol::Anthropic => answer.message(),
        };
        guard.done();
        return json_response(StatusCode::OK, &body);
    }
    let (chunks, after) = match fault {
        Some(Fault::BreakStream(n)) => (n, After::Break),
        Some(Fault::StallStream(n)) => (n, After::Stall),
        Some(Fault::SlowStream(d)) => (usize::MAX, After::Slow(d)),
        _ => (usize::MAX, After::Finish),
    };
    let repeat = if matches!(after, After::Slow(_)) {
        1000
    } else {
        1
    };
    let events = match protocol {
        Protocol::OpenAi => {
            let include_usage = req
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            answer.events(include_usage, repeat)
        }
        Protocol::Anthropic => answer.anthropic_events(repeat),
    };
    sse_response(events, chunks, after, guard)
}

#[derive(Clone, Copy)]
enum After {
    Finish,
    Break,
    Stall,
    Slow(Duration),
}

/// What the mock answers to one request.
struct Answer {
    id: String,
    model: String,
    content: String,
    tool_call: Option<Value>,
    prompt_tokens: u64,
    /// Each token's logprob, when logprobs are asked for.
    logprob: f64,
}

/// The logprob of every token of an answer whose model has none set.
pub const DEFAULT_LOGPROB: f64 = -0.05;

impl Answer {
    fn new(req: &Value, model: &str, seq: u64) -> Answer {
        let mut prompt_chars = 0usize;
        let mut last = String::new();
        if let Some(msgs) = req.get("messages").and_then(Value::as_array) {
            for m in msgs {
                // A string content, or (Anthropic) the text of its blocks.
                let text = match m.get("content") {
                    Some(Value::String(c)) => Some(c.clone()),
                    Some(Value::Array(blocks)) => Some(
                        blocks
                            .iter()
                            .filter_map(|b| b.get("text").and_then(Value::as_str))
                            .collect::<Vec<_>>()
                            .join(" "),
                    )
                    .filter(|t| !t.is_empty()),
                    _ => None,
                };
                if let Some(c) = text {
                    prompt_chars += c.chars().count();
                    last = c.chars().take(200).collect();
                }
            }
        }
        let tool_call = req
            .get("tools")
            .and_then(Value::as_array)
            .and_then(|t| t.first())
            .map(|t| {
                let name = t
                    .pointer("/function/name")
                    .or_else(|| t.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or("tool");
                json!({"id": format!("call_mock_{seq}"), "type": "function",
                       "function": {"name": name, "arguments": "{\"x\":1}"}})
            });
        Answer {
            id: format!("chatcmpl-mock-{seq}"),
            model: model.to_string(),
            content: format!("mock answer from {model} to: {last}"),
            tool_call,
            prompt_tokens: (prompt_chars as u64).div_ceil(4).max(1),
            logprob: DEFAULT_LOGPROB,
        }
    }

    fn completion_tokens(&self) -> u64 {
        (self.content.chars().count() as u64).div_ceil(4).max(1)
    }

    fn usage(&self) -> Value {
        let c = self.completion_tokens();
        json!({"prompt_tokens": self.prompt_tokens, "completion_tokens": c,
               "total_tokens": self.prompt_tokens + c})
    }

    fn completion(&self, req: &Value) -> Value {
        let (message, finish) = match &self.tool_call {
            Some(tc) => (
                json!({"role": "assistant", "content": null, "tool_calls": [tc]}),
                "tool_calls",
            ),
            None => (
                json!({"role": "assistant", "content": self.content}),
                "stop",
            ),
        };
        // Asked for: one entry per word of the content, in OpenAI's shape.
        let logprobs = match req.get("logprobs").and_then(Value::as_bool) {
            Some(true) if self.tool_call.is_none() => json!({"content": self
                .content
                .split_whitespace()
                .map(|w| json!({"token": w, "logprob": self.logprob,
                                "bytes": w.as_bytes(), "top_logprobs": []}))
                .collect::<Vec<_>>()}),
            _ => Value::Null,
        };
        let mut v = json!({
            "id": self.id, "object": "chat.completion", "created": 1_700_000_000u64,
            "model": self.model,
            "choices": [{"index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish}],
            "usage": self.usage(),
            "system_fingerprint": "fp_mock",
            "mock_extra": {"nested": [1, 2, 3], "flag": true},
        });
        if req.get("mock_echo").and_then(Value::as_bool) == Some(true) {
            v["echo_request"] = req.clone();
        }
        v
    }

    /// An Anthropic Messages API response.
    fn message(&self) -> Value {
        let (content, stop) = match &self.tool_call {
            Some(tc) => (
                json!([{"type": "tool_use", "id": tc["id"], "name": tc["function"]["name"],
                        "input": {"x": 1}}]),
                "tool_use",
            ),
            None => (json!([{"type": "text", "text": self.content}]), "end_turn"),
        };
        json!({
            "id": format!("msg_{}", self.id), "type": "message", "role": "assistant",
            "model": self.model, "content": content, "stop_reason": stop,
            "stop_sequence": null,
            "usage": {"input_tokens": self.prompt_tokens, "output_tokens": self.completion_tokens()},
        })
    }

    /// The SSE events of an Anthropic stream.
    fn anthropic_events(&self, repeat: usize) -> Vec<Bytes> {
        let ev = |v: Value| {
            Bytes::from(format!(
                "event: {}\ndata: {v}\n\n",
                v["type"].as_str().unwrap_or("")
            ))
        };
        let mut out = vec![ev(json!({"type": "message_start", "message": {
            "id": format!("msg_{}", self.id), "type": "message", "role": "assistant",
            "model": self.model, "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": self.prompt_tokens, "output_tokens": 1}}}))];
        let stop = match &self.tool_call {
            Some(tc) => {
                out.push(ev(json!({"type": "content_block_start", "index": 0, "content_block": {
                    "type": "tool_use", "id": tc["id"], "name": tc["function"]["name"], "input": {}}})));
                for part in ["{\"x\":", "1}"] {
                    out.push(ev(json!({"type": "content_block_delta", "index": 0,
                        "delta": {"type": "input_json_delta", "partial_json": part}})));
                }
                "tool_use"
            }
            None => {
                out.push(ev(json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}})));
                out.push(ev(json!({"type": "ping"})));
                for _ in 0..repeat {
                    for word in self.content.split_inclusive(' ') {
                        out.push(ev(json!({"type": "content_block_delta", "index": 0,
                            "delta": {"type": "text_delta", "text": word}})));
                    }
                }
                "end_turn"
            }
        };
        out.push(ev(json!({"type": "content_block_stop", "index": 0})));
        out.push(ev(json!({"type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": null},
            "usage": {"output_tokens": self.completion_tokens()}})));
        out.push(ev(json!({"type": "message_stop"})));
        out
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Bytes {
        let v = json!({"id": self.id, "object": "chat.completion.chunk", "created": 1_700_000_000u64,
                       "model": self.model, "system_fingerprint": "fp_mock",
                       "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        Bytes::from(format!("data: {v}\n\n"))
    }

    /// The full list of SSE events of a normal stream.
    fn events(&self, include_usage: bool, repeat: usize) -> Vec<Bytes> {
        let mut out = vec![self.chunk(json!({"role": "assistant", "content": ""}), None)];
        for _ in 0..repeat {
            for word in self.content.split_inclusive(' ') {
                out.push(self.chunk(json!({"content": word}), None));
            }
        }
        out.push(self.chunk(json!({}), Some("stop")));
        if include_usage {
            let v = json!({"id": self.id, "object": "chat.completion.chunk", "created": 1_700_000_000u64,
                           "model": self.model, "choices": [], "usage": self.usage()});
            out.push(Bytes::from(format!("data: {v}\n\n")));
        }
        out.push(Bytes::from_static(b"data: [DONE]\n\n"));
        out
    }
}

fn sse_response(events: Vec<Bytes>, chunks: usize, after: After, guard: Guard) -> Response {
    let stream = futures_util::stream::unfold(
        (events.into_iter(), 0usize, Some(guard)),
        move |(mut it, sent, mut guard)| {
            async move {
                if sent >= chunks {
                    match after {
                        After::Break => {
                            // Let the chunks already sent reach the client, then abort
                            // the body: hyper closes the connection mid-message.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            return Some((
                                Err(std::io::Error::other("mock: stream broken")),
                                (it, sent, guard),
                            ));
                        }
                        After::Stall => {
                            std::future::pending::<()>().await;
                        }
                        _ => {}
                    }
                }
                if let After::Slow(d) = after {
                    if sent > 0 {
                        tokio::time::sleep(d).await;
                    }
                }
                match it.next() {
                    Some(b) => Some((Ok::<_, std::io::Error>(b), (it, sent + 1, guard))),
                    None => {
                        if let Some(g) = guard.take() {
                            g.done();
                        }
                        None
                    }
                }
            }
        },
    );
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn error(protocol: Protocol, status: StatusCode, message: &str) -> Response {
    match protocol {
        Protocol::OpenAi => {
            let kind = if status == StatusCode::TOO_MANY_REQUESTS {
                "rate_limit_error"
            } else {
                "server_error"
            };
            json_response(
                status,
                &json!({"error": {"message": message, "type": kind, "param": null, "code": null}}),
            )
        }
        Protocol::Anthropic => {
            let kind = match status.as_u16() {
                400 => "invalid_request_error",
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                529 => "overloaded_error",
                _ => "api_error",
            };
            json_response(
                status,
                &json!({"type": "error", "error": {"type": kind, "message": message}}),
            )
        }
    }
}

/// A loopback port that accepts connections and never answers (a peer that hangs): the
/// accepted sockets are held open until the runtime ends.
pub async fn silent_listener() -> std::io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    Ok(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flaky_model_fails_its_share_with_every_kind_of_fault() {
        let faults: Vec<Option<Fault>> = (0..10_000).map(|s| Fault::Flaky(30).resolve(s)).collect();
        let failed = faults.iter().filter(|f| f.is_some()).count();
        assert!((2_800..3_200).contains(&failed), "{failed}");
        for want in [
            Fault::Status(500),
            Fault::Reset,
            Fault::Delay(FLAKY_STALL),
            Fault::Status(429),
            Fault::Status(401),
        ] {
            assert!(faults.contains(&Some(want.clone())), "{want:?}");
        }
        assert_eq!(
            Fault::from_model_name("mock-flaky-30"),
            Some(Fault::Flaky(30))
        );
        assert_eq!(Fault::Flaky(0).resolve(7), None);
        assert_eq!(Fault::Reset.resolve(7), Some(Fault::Reset));
    }
}
